"""What each stage loads of the released backbones, before and after issue 13; prints one JSON line.

Every component of CogVideoX-5B-I2V, CogVideoX1.5-5B-I2V and Wan2.1-I2V-14B is built on the meta device from its
published config (benchmarks/full_size_configs.py): parameter counts and bytes in the dtype the adapter loads it in
(the backbone config's bfloat16; Wan's VAE and CLIP image encoder in float32, as its pipeline runs them), without
weights or memory. Stages: the preprocessing job's encode stage, a training worker on rows with text embeddings
(the default `text: embed`), generation. Before: every stage built the whole adapter. After: the components the
stages' own code asks for (ENCODING_COMPONENTS, `training_components`).

    python benchmarks/stage_memory.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan, CogVideoXTransformer3DModel, WanTransformer3DModel
from full_size_configs import (  # next to this script
    COGVIDEOX1_5_5B_I2V,
    COGVIDEOX1_5_VAE,
    COGVIDEOX_5B_I2V,
    COGVIDEOX_VAE,
    T5_XXL,
    UMT5_XXL,
    WAN2_1_I2V_14B,
    WAN_CLIP_VISION,
    WAN_VAE,
)
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from models.backbones import ENCODING_COMPONENTS, adapter_class, load_backbone_config
from models.backbones.base import meta_model
from pipelines.io.training_rows import TENSOR_COLUMNS
from pipelines.training.engine import training_components
from pipelines.training.schedule import RowPlan

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbones"


def meta_transformers_model(model_class: type, config_class: type, config: dict) -> nn.Module:
    with torch.device("meta"):
        return model_class(config_class(**config))


# Backbone config file -> each model component of the released model, built on the meta device.
BUILDERS = {
    "cogvideox-5b-i2v": {
        "transformer": lambda: meta_model(CogVideoXTransformer3DModel, COGVIDEOX_5B_I2V),
        "vae": lambda: meta_model(AutoencoderKLCogVideoX, COGVIDEOX_VAE),
        "text_encoder": lambda: meta_transformers_model(T5EncoderModel, T5Config, T5_XXL),
    },
    "cogvideox1.5-5b-i2v": {
        "transformer": lambda: meta_model(CogVideoXTransformer3DModel, COGVIDEOX1_5_5B_I2V),
        "vae": lambda: meta_model(AutoencoderKLCogVideoX, COGVIDEOX1_5_VAE),
        "text_encoder": lambda: meta_transformers_model(T5EncoderModel, T5Config, T5_XXL),
    },
    "wan2.1-i2v-14b": {
        "transformer": lambda: meta_model(WanTransformer3DModel, WAN2_1_I2V_14B),
        "vae": lambda: meta_model(AutoencoderKLWan, WAN_VAE),
        "text_encoder": lambda: meta_transformers_model(UMT5EncoderModel, UMT5Config, UMT5_XXL),
        "image_encoder": lambda: meta_transformers_model(CLIPVisionModel, CLIPVisionConfig, WAN_CLIP_VISION),
    },
}

# The training worker's rows: what the preprocessing job writes by default (`text: embed`).
DEFAULT_ROWS = RowPlan("rows", (), (), frozenset(TENSOR_COLUMNS))


def stage_components(family_components: tuple[str, ...]) -> dict[str, tuple[list[str], list[str]]]:
    """Stage -> (components before, after), in the family's order."""
    after = {
        "preprocess_encode": ENCODING_COMPONENTS,
        "training_worker": training_components(DEFAULT_ROWS),
        "generation": set(family_components),
    }
    everything = list(family_components)
    return {stage: (everything, [name for name in everything if name in names]) for stage, names in after.items()}


def measure(name: str) -> dict[str, object]:
    config = load_backbone_config(CONFIGS / f"{name}.yaml")
    family = adapter_class(config.family)
    sizes = {}
    for component, build in BUILDERS[name].items():
        model = build()
        dtype = torch.float32 if component in family.float32_components else config.torch_dtype
        params = sum(p.numel() for p in model.parameters())
        sizes[component] = {"params": params, "bytes": params * dtype.itemsize, "dtype": str(dtype).removeprefix("torch.")}
        del model

    def total(components: list[str]) -> dict[str, object]:
        params = sum(sizes[c]["params"] for c in components)
        size = sum(sizes[c]["bytes"] for c in components)
        return {"components": components, "params": params, "gib": round(size / 2**30, 2)}

    stages = {}
    for stage, (before, after) in stage_components(family.model_components).items():
        stages[stage] = {"before": total(before), "after": total(after)}
    return {"components": sizes, "stages": stages}


def main() -> None:
    results = {name: measure(name) for name in BUILDERS}
    for name, result in results.items():
        for stage, figures in result["stages"].items():
            before, after = figures["before"], figures["after"]
            print(f"{name:20s} {stage:18s} {before['params'] / 1e9:6.2f}B {before['gib']:6.2f} GiB -> "
                  f"{after['params'] / 1e9:6.2f}B {after['gib']:6.2f} GiB  {'+'.join(after['components'])}",
                  file=sys.stderr)
    print(json.dumps({"benchmark": "stage_memory", "device": "meta", "backbones": results}))


if __name__ == "__main__":
    main()
