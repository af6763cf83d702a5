"""How a model's articulated noise is built: the settings training rows and generation must share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.noise_warp import BackgroundMode, WarpRule


class NoiseSettings(BaseModel):
    """The texture, render and pooling that shape a warp operator's noise (its statistics: how many texels a latent
    cell pools, how strongly neighbouring frames correlate). A transformer trained on one setting and sampled with
    another sees noise it never learned to read, so a backbone config holds them once for its preprocessing and
    its generation (`BackboneConfig.noise`)."""

    model_config = ConfigDict(extra="forbid")

    texture_size: int = Field(256, ge=8, le=4096, description="side of the square UV noise texture")
    supersample: int = Field(8, ge=1, le=16, description="render pixels per latent cell side")
    rule: WarpRule = "aggregate"
    background: BackgroundMode = "static"
    group_frames: Literal["centre", "all"] = Field(
        "centre", description="render one frame per latent frame (the centre of its VAE group) or all of them"
    )
