"""Which adapter class builds which backbone family: the adapter modules register themselves on package import."""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import torch

from .base import BackboneAdapter
from .config import BackboneConfig

_ADAPTERS: dict[str, type[BackboneAdapter]] = {}


def register_adapter(family: str):
    """Class decorator that makes `build_adapter` build `family` configs with the decorated class."""

    def register(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
        _ADAPTERS[family] = cls
        return cls

    return register


def adapter_class(family: str) -> type[BackboneAdapter]:
    """The adapter class of a backbone family (the adapter modules register themselves on package import)."""
    return _ADAPTERS[family]


def build_adapter(
    config: BackboneConfig, device: str | torch.device = "cpu", components: Collection[str] | None = None
) -> BackboneAdapter:
    """Build the adapter for `config.family` with the model `components` a stage uses (None: all of them)."""
    return adapter_class(config.family).from_config(config, device=device, components=components)


class SamplingDefaults(NamedTuple):
    """What a request that leaves them out samples with."""

    steps: int
    guidance: float
    gamma: float


def sampling_defaults(config: BackboneConfig) -> SamplingDefaults:
    """Steps, guidance scale and gamma when a request leaves them out: the backbone config's, else (steps and
    guidance) its family's."""
    family = adapter_class(config.family)
    return SamplingDefaults(config.num_inference_steps or family.default_num_inference_steps,
                            config.guidance_scale or family.default_guidance_scale, config.gamma)
