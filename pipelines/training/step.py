"""One step of the training objective on a batch of preprocessed rows: noise, timesteps, forward, losses.

This is what the Ray Train job calls; it holds no Ray and no optimizer code.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from models.backbones.base import BackboneAdapter
from models.losses import LossConfig, LossOutput, consistency_loss, diffusion_loss, total_loss
from models.motion_decoder import UPSCALE, MotionDecoder, motion_loss, motion_targets
from models.noise_warp import WarpOperator, degrade
from models.padaln import PadaLN
from pipelines.articulated_noise import NoiseRender
from pipelines.io.training_rows import TrainingBatch


def draw_noise(
    latents: torch.Tensor,
    operators: Sequence[WarpOperator],
    config: LossConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training noise like `latents`, on their device and dtype.

    With articulated noise, each row is a fresh sample of its operator degraded with fresh i.i.d. noise
    at gamma ~ U(config.gamma_range), one gamma per row (drawn in that order: samples, fresh, gamma);
    otherwise plain i.i.d. noise and the operators are not used. The draws happen where the operators
    (or, for i.i.d. noise, the generator) live, so CPU operators and a CPU generator serve GPU latents.
    """
    if not config.articulated_noise:
        device = generator.device if generator is not None else latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device)
        return noise.to(latents.device, latents.dtype)
    warped = torch.stack([operator.sample(generator, latents.shape[2]) for operator in operators])
    fresh = torch.randn(warped.shape, generator=generator, device=warped.device)
    low, high = config.gamma_range
    gamma = low + (high - low) * torch.rand(len(operators), generator=generator, device=warped.device)
    return degrade(warped, fresh, gamma).to(latents.device, latents.dtype)


def training_step(
    adapter: BackboneAdapter,
    decoder: MotionDecoder,
    batch: TrainingBatch,
    loss_config: LossConfig,
    generator: torch.Generator | None = None,
    padaln: PadaLN | None = None,
) -> LossOutput:
    """Draw noise, timesteps and gamma, predict (pose-conditioned when `padaln` is given) and weigh the losses.

    The motion decoder reads the predicted clean latents and GMCL the predicted noise, both from the adapter's
    `split_prediction`. `generator` must be a CPU generator (the adapters draw timesteps on the CPU).
    """
    if padaln is not None and batch.pose_latents is None:
        raise ValueError("pose_latents: PadaLN is given but the batch has no pose latents")
    latents = batch.latents
    noise = draw_noise(latents, batch.operators, loss_config, generator)
    timesteps = adapter.sample_timesteps(latents.shape[0], generator)
    noisy = adapter.add_noise(latents, noise, timesteps)
    with nullcontext() if padaln is None else padaln.pose(batch.pose_latents):
        prediction = adapter.predict(noisy, timesteps, batch.conditioning)
    clean, predicted_noise = adapter.split_prediction(noisy, prediction, timesteps)
    consistency = (
        consistency_loss(predicted_noise, noise, batch.operators)
        if loss_config.articulated_noise
        else prediction.new_zeros((), dtype=torch.float32)
    )
    return total_loss(
        loss_config,
        diffusion_loss(prediction, adapter.target(latents, noise, timesteps)),
        motion_loss(decoder(clean), batch.motion_targets),
        consistency,
    )


def make_training_batch(
    adapter: BackboneAdapter,
    frames: torch.Tensor,
    prompts: list[str],
    motions: Sequence[tuple[WarpOperator, NoiseRender]],
    pose_frames: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TrainingBatch:
    """A batch from in-memory pieces (tests, demos): video frames `[B, F, 3, H, W]` in [-1, 1] whose first
    frame is the reference image, one prompt and one `build_motion_operator` result per row, and optionally
    a driving pose video `[B, F, 3, H, W]` for PadaLN. Everything is encoded with the adapter's own encoders."""
    latents = adapter.encode_video(frames, generator)
    num_latent, _, height, width = latents.shape[1:]
    targets = [
        motion_targets(render.uv, render.mask, render.latent_frames, num_latent, (UPSCALE * height, UPSCALE * width))
        for _, render in motions
    ]
    return TrainingBatch(
        latents=latents,
        conditioning=adapter.encode_conditioning(frames[:, 0], prompts, frames.shape[1], generator=generator),
        operators=[operator for operator, _ in motions],
        motion_targets=torch.stack(targets).to(latents.device),
        pose_latents=None if pose_frames is None else adapter.encode_video(pose_frames, generator),
    )
