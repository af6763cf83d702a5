"""JAML's motion decoder: predicted clean latents -> the body's UV/motion maps, its targets and its loss.

Each latent frame is decoded as a 2D map by a small Pix2PixHD-style upsampler (4x per side) into three
channels: u, v (the body's UV coordinates) and the logit of the body mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_module, save_module

MOTION_DECODER_WEIGHTS_NAME = "motion_decoder.safetensors"
UPSCALE = 4  # output pixels per latent cell side (two stride-2 blocks)
UV_CHANNELS = slice(0, 2)
MASK_CHANNEL = 2


class MotionDecoder(nn.Module):
    """Two blocks of (ReLU, ConvTranspose2d stride 2, BatchNorm2d), then a 3x3 conv to (u, v, mask logit)."""

    def __init__(self, latent_channels: int, hidden_channels: int = 64):
        super().__init__()
        self.settings = {"latent_channels": latent_channels, "hidden_channels": hidden_channels}
        layers: list[nn.Module] = []
        channels = latent_channels
        for width in (hidden_channels, hidden_channels // 2):
            layers += [
                nn.ReLU(),
                nn.ConvTranspose2d(channels, width, kernel_size=3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(width),
            ]
            channels = width
        layers.append(nn.Conv2d(channels, 3, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, F_lat, C, h, w]` -> maps `[B, F_lat, 3, 4h, 4w]` (u, v, mask logit)."""
        batch, frames = latents.shape[:2]
        maps = self.layers(latents.flatten(0, 1).to(next(self.parameters()).dtype))
        return maps.unflatten(0, (batch, frames))

    def save(self, directory: str | Path) -> Path:
        """Write `motion_decoder.safetensors` (weights, BatchNorm statistics and sizes) into `directory`."""
        return save_module(self, Path(directory) / MOTION_DECODER_WEIGHTS_NAME, "motion_decoder", self.settings)

    @classmethod
    def load(cls, directory: str | Path) -> MotionDecoder:
        """Rebuild a decoder saved by `save` (on CPU, in the saved dtype)."""
        return load_module(
            cls, Path(directory) / MOTION_DECODER_WEIGHTS_NAME, "motion_decoder", "motion decoder",
            "MotionDecoder.save(directory)",
        )


def motion_targets(
    uv: torch.Tensor,
    mask: torch.Tensor,
    latent_frames: torch.Tensor,
    num_latent: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """Decoder targets `[F_lat, 3, H_m, W_m]` from rendered UV maps (a `NoiseRender`'s uv, mask, latent_frames).

    The rendered frames of each latent frame are area-averaged down to `size`: the mask channel is the
    fraction of body pixels, u and v the mean UV over those body pixels (0 where there are none).
    `uv` is `[B_r, Hr, Wr, 2]`, `mask` `[B_r, Hr, Wr]`; Hr and Wr must be multiples of `size`.
    """
    render_h, render_w = uv.shape[1:3]
    if render_h % size[0] or render_w % size[1]:
        raise ValueError(f"size: render size {(render_h, render_w)} is not a multiple of {tuple(size)}")
    if latent_frames.numel() and (int(latent_frames.min()) < 0 or int(latent_frames.max()) >= num_latent):
        raise ValueError(f"latent_frames: values must lie in [0, {num_latent}), got {latent_frames.tolist()}")
    weight = mask.to(uv.dtype)[:, None]
    per_frame = torch.cat([uv.permute(0, 3, 1, 2) * weight, weight], dim=1)  # [B_r, 3, Hr, Wr]
    kernel = (render_h // size[0], render_w // size[1])
    pooled = F.avg_pool2d(per_frame, kernel)
    index = latent_frames.to(pooled.device)
    sums = pooled.new_zeros(num_latent, *pooled.shape[1:]).index_add_(0, index, pooled)
    counts = torch.bincount(index, minlength=num_latent).clamp(min=1).to(pooled.dtype)
    area = sums / counts[:, None, None, None]
    body = area[:, MASK_CHANNEL : MASK_CHANNEL + 1]
    mean_uv = torch.where(body > 0, area[:, UV_CHANNELS] / body.clamp(min=torch.finfo(body.dtype).tiny), 0.0)
    return torch.cat([mean_uv.clamp(0.0, 1.0), body], dim=1)


def motion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """JAML loss: L1 on (u, v) weighted by the target's body fraction plus BCE-with-logits on the mask.

    `prediction` and `target` are `[B, F_lat, 3, H, W]`; each row's terms are means over its pixels (the
    L1 over its body pixels, 0 for a row without any), then averaged over the batch.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {list(prediction.shape)} and target {list(target.shape)} differ in shape")
    prediction = prediction.float()
    target = target.detach().float()
    body = target[:, :, MASK_CHANNEL : MASK_CHANNEL + 1]
    uv_error = (prediction[:, :, UV_CHANNELS] - target[:, :, UV_CHANNELS]).abs() * body
    body_area = body.flatten(1).sum(1) * 2  # two channels
    uv_loss = uv_error.flatten(1).sum(1) / body_area.clamp(min=1e-6)
    mask_loss = F.binary_cross_entropy_with_logits(
        prediction[:, :, MASK_CHANNEL], target[:, :, MASK_CHANNEL], reduction="none"
    ).flatten(1).mean(1)
    return (uv_loss + mask_loss).mean()
