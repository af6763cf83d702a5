"""Backbone adapters: one class per video diffusion family, loaded from a local diffusers-format folder."""

from .base import ENCODING_COMPONENTS, MODEL_COMPONENTS, BackboneAdapter, ComponentNotLoadedError, Conditioning
from .cogvideox import CogVideoXAdapter
from .config import BackboneConfig, LoraSettings, TinySettings, VariantSpec, generated_num_frames, load_backbone_config
from .registry import adapter_class, build_adapter, sampling_defaults
from .wan import WanAdapter

__all__ = [
    "ENCODING_COMPONENTS",
    "MODEL_COMPONENTS",
    "BackboneAdapter",
    "BackboneConfig",
    "CogVideoXAdapter",
    "ComponentNotLoadedError",
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
