"""Videos longer than the backbone's window: overlapping latent windows denoised together.

Windows are planned in latent frames, so they are aligned to the VAE's 4-frame groups: a window of `n`
latent frames starting at latent `s` is the clip of video frames `4s .. 4(s+n-1)` (4(n-1)+1 frames, its
first latent being the last frame of group `s`). Every window has the backbone's own window length (a
valid latent count by construction), or the whole video when that is shorter. At every denoising step the
windows' predictions are averaged with weights that ramp linearly across each overlap and sum to 1 per
latent frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Window:
    """Latent frames `[start, stop)` and each one's blending weight `[stop - start]` (float32)."""

    start: int
    stop: int
    weights: torch.Tensor

    @property
    def num_latent_frames(self) -> int:
        return self.stop - self.start

    def frames(self, temporal_factor: int) -> slice:
        """The video frames this window's latents encode."""
        return slice(self.start * temporal_factor, (self.stop - 1) * temporal_factor + 1)


def default_overlap(window: int) -> int:
    """A quarter of the window (at least 1 latent frame when the window allows any overlap)."""
    return max(1, window // 4) if window > 1 else 0


def plan_windows(num_latent_frames: int, window: int, overlap: int | None = None) -> list[Window]:
    """Windows of `window` latent frames covering `num_latent_frames`, overlapping by at least `overlap`.

    A video no longer than one window is a single window of weight 1. Otherwise the fewest windows that
    overlap by `overlap` or more are spread evenly from the first latent frame to the last.
    """
    if num_latent_frames < 1 or window < 1:
        raise ValueError(f"num_latent_frames and window must be >= 1, got {num_latent_frames} and {window}")
    overlap = default_overlap(window) if overlap is None else overlap
    if not 0 <= overlap < window:
        raise ValueError(f"window_overlap: must be in [0, {window - 1}] latent frames, got {overlap}")
    if num_latent_frames <= window:
        return [Window(0, num_latent_frames, torch.ones(num_latent_frames))]
    count = math.ceil((num_latent_frames - overlap) / (window - overlap))
    last = num_latent_frames - window
    starts = [round(index * last / (count - 1)) for index in range(count)]
    return _with_weights(starts, window, num_latent_frames)


def _with_weights(starts: list[int], window: int, num_latent_frames: int) -> list[Window]:
    """Linear ramps over each window's overlaps with its neighbours, normalized to sum to 1 per frame."""
    raw = []
    for index, start in enumerate(starts):
        left = starts[index - 1] + window - start if index > 0 else 0
        right = start + window - starts[index + 1] if index + 1 < len(starts) else 0
        position = torch.arange(window, dtype=torch.float64)
        rise = ((position + 1) / (left + 1)).clamp(max=1)
        fall = ((window - position) / (right + 1)).clamp(max=1)
        raw.append(rise * fall)
    total = torch.zeros(num_latent_frames, dtype=torch.float64)
    for start, weights in zip(starts, raw):
        total[start : start + window] += weights
    return [
        Window(start, start + window, (weights / total[start : start + window]).float())
        for start, weights in zip(starts, raw)
    ]


Predict = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def denoise_windows(
    latents: torch.Tensor,
    windows: list[Window],
    scheduler: Any,
    num_inference_steps: int,
    predict: Predict,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Denoise latents `[B, F_lat, C, h, w]` from pure noise with a diffusers scheduler.

    `predict(window_index, window_latents, t)` returns the (guided) model output for one window. Each step
    runs the windows one after another, accumulates their weighted outputs into one full-length model
    output, and then calls `scheduler.step` ONCE on the full latent tensor. That keeps a stateful scheduler
    correct: multistep solvers (UniPC, DPM++) store past model outputs and use them in the next step, so
    they must see one consistent full tensor per step, never interleaved windows. Every scheduler used here
    acts on each latent element independently, so stepping the blended output equals blending the windows'
    stepped latents, and one window of weight 1 is exactly plain (non-windowed) sampling. Memory is the
    full latents, the accumulator and one window's activations.
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for t in scheduler.timesteps:
        blended = torch.zeros_like(latents)
        for index, window in enumerate(windows):
            output = predict(index, latents[:, window.start : window.stop], t)
            weights = window.weights.to(blended).view(1, -1, *([1] * (latents.ndim - 2)))
            blended[:, window.start : window.stop] += weights * output
        latents = scheduler.step(blended, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step()
    return latents
