"""Shared test helpers: the tiny random-weight backbones."""

from __future__ import annotations

from pathlib import Path

from models.backbones import BackboneAdapter, build_adapter, load_backbone_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbones"
TINY = ["tiny-cogvideox", "tiny-cogvideox1.5", "tiny-wan"]


def tiny(name: str) -> BackboneAdapter:
    """A fresh tiny adapter built from `configs/backbones/<name>.yaml`."""
    return build_adapter(load_backbone_config(CONFIGS / f"{name}.yaml"))
