"""Backbone adapters: one class per video diffusion family, loaded from a local diffusers-format folder."""

from .base import BackboneAdapter, Conditioning
from .cogvideox import CogVideoXAdapter
from .config import BackboneConfig, LoraSettings, TinySettings, VariantSpec, generated_num_frames, load_backbone_config
from .registry import adapter_class, build_adapter, sampling_defaults
from .wan import WanAdapter

__all__ = [
    "BackboneAdapter",
    "BackboneConfig",
    "CogVideoXAdapter",
    "Conditioning",
    "LoraSettings",
    "TinySettings",
    "VariantSpec",
    "WanAdapter",
    "adapter_class",
    "build_adapter",
    "generated_num_frames",
    "load_backbone_config",
    "sampling_defaults",
]
