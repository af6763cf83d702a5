"""The HumANDiff training objective: diffusion MSE + JAML motion loss + GMCL, with configurable weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .noise_warp import WarpOperator


class LossConfig(BaseModel):
    """Weights of the loss terms and how the training noise is drawn."""

    model_config = ConfigDict(extra="forbid")

    diffusion_weight: float = Field(1.0, ge=0, description="weight of the diffusion MSE (the family's target)")
    motion_weight: float = Field(0.1, ge=0, description="weight of the JAML motion-decoder loss")
    consistency_weight: float = Field(
        0.1, ge=0, description="weight of GMCL; it needs articulated noise and is 0 without it"
    )
    articulated_noise: bool = Field(True, description="train on articulated noise; False is the i.i.d. ablation")
    gamma_range: tuple[float, float] = Field((0.0, 1.0), description="noise degradation gamma ~ U(low, high)")

    @field_validator("gamma_range")
    @classmethod
    def _ordered_in_unit_interval(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"gamma_range must satisfy 0 <= low <= high <= 1, got {value}")
        return value


@dataclass
class LossOutput:
    """The total for backward and each unweighted term as a float for logging."""

    total: torch.Tensor
    diffusion: float
    motion: float
    consistency: float

    def metrics(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "diffusion": self.diffusion,
            "motion": self.motion,
            "consistency": self.consistency,
        }


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the transformer output and the family's target (v for CogVideoX, noise - x0 for Wan)."""
    return F.mse_loss(prediction.float(), target.detach().float())


def consistency_loss(
    predicted_noise: torch.Tensor, noise: torch.Tensor, operators: Sequence[WarpOperator]
) -> torch.Tensor:
    """GMCL: predicted vs true noise in UV space, pooled over the frames each texel is visible in.

    What it is exactly, per warp rule of the row's operator:
    - `rule: nearest` (each latent cell is one texel): the paper's Eq. 4-5. Undegrade the predicted noise, take it
      to UV space with the transpose of the warp, average each texel over the latent frames it is visible in and
      compare with the noise texture there (mean squared difference over visible texels and channels) -- times
      (1-gamma)^2 / (gamma^2 + (1-gamma)^2), the weight that keeps it finite as gamma -> 1 (see below). The
      unwarped true noise then is the texture itself, so this equals the comparison with the texture
      (tests/models/test_losses.py checks it against the formula written out).
    - `rule: aggregate` (the default; each cell a normalised mix of the texels its pixels see): it compares the
      pooled projections of the predicted and the true noise, `to_uv(predicted)` vs `to_uv(noise)`, NOT the
      texture itself: the transpose of an averaging warp is not its inverse, so the unwarped true noise is a
      blurred, rescaled texture. The loss is still 0 exactly at the true noise and pulls the prediction towards
      noise that is consistent across frames at each surface point.

    `predicted_noise` and `noise` (the degraded articulated noise that was added) are `[B, F_lat, C, h, w]`;
    each row is taken to UV space with its own operator (`to_uv`) and compared by the mean squared difference
    over its visible texels and channels (0 for a row without any), then averaged over the batch. The operators
    may live on another device than the noise (e.g. the CPU); the UV-space work happens on theirs.
    """
    if len(operators) != predicted_noise.shape[0]:
        raise ValueError(f"operators: need one per row ({predicted_noise.shape[0]}), got {len(operators)}")
    # The method undegrades both noises with the row's fresh noise and gamma before comparing them. Undegrading
    # is affine in the noise with slope s/(1-gamma), s = sqrt(gamma^2 + (1-gamma)^2), so the undegraded
    # difference is s/(1-gamma) * (predicted - noise) and blows up as gamma -> 1. Weighting the squared
    # difference by (1-gamma)^2/s^2 cancels that slope exactly: the weighted loss is the squared difference
    # of the degraded noises themselves, finite for every gamma in [0, 1] and exactly 0 at the true noise.
    rows = []
    for residual, operator in zip((predicted_noise.float() - noise.detach().float()), operators):
        texture, visible = operator.to_uv(residual.to(operator.device))
        squared = texture.square()[:, visible]
        rows.append(squared.sum() / max(squared.numel(), 1))
    return torch.stack(rows).mean().to(predicted_noise.device)


def total_loss(
    config: LossConfig, diffusion: torch.Tensor, motion: torch.Tensor, consistency: torch.Tensor
) -> LossOutput:
    """Weight the terms into the total for backward; the terms themselves are kept as floats for logging."""
    total = (
        config.diffusion_weight * diffusion
        + config.motion_weight * motion
        + config.consistency_weight * consistency
    )
    return LossOutput(total, float(diffusion.detach()), float(motion.detach()), float(consistency.detach()))
