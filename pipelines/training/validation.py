"""Validation during fine-tuning: held-out rows generated from their own conditioning, scored against their clips.

Each held-out row is generated like a request would be: its warp operator's degraded articulated noise (fixed
seed and gamma, so runs compare step to step), its image latents and caption embedding, its pose latents when
PadaLN is trained. The MP4 goes to `<run>/validation/step_<n>/<clip_id>.mp4`; the ground truth is the row's
clean latents decoded by the same VAE, so the metrics (pipelines/evaluation/metrics.py) measure the denoiser alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from models.backbones import Conditioning
from models.losses import LossConfig
from pipelines.evaluation.metrics import l1_distance, psnr, ssim
from pipelines.generation.animation import AnimationPipeline, guidance_batch, to_uint8
from pipelines.generation.long_video import plan_windows
from pipelines.io.training_rows import TrainingBatch, training_batch
from pipelines.io.video import write_video
from pipelines.training.config import ValidationSettings
from pipelines.training.step import draw_noise

VALIDATION_DIR = "validation"
METRICS = {"l1": l1_distance, "psnr": psnr, "ssim": ssim}


def _row_conditioning(batch: TrainingBatch, index: int) -> Conditioning:
    rows = slice(index, index + 1)
    conditioning = batch.conditioning
    image_embeds = conditioning.image_embeds
    return Conditioning(
        image_latents=conditioning.image_latents[rows],
        prompt_embeds=conditioning.prompt_embeds[rows],
        image_embeds=None if image_embeds is None else image_embeds[rows],
    )


def generate_row(
    pipeline: AnimationPipeline, batch: TrainingBatch, index: int, settings: ValidationSettings, loss: LossConfig
) -> np.ndarray:
    """uint8 frames `[F, H, W, 3]` generated for row `index` of `batch`."""
    adapter = pipeline.adapter
    latents = batch.latents[index : index + 1]
    noise_config = loss.model_copy(update={"gamma_range": (settings.gamma, settings.gamma)})
    generator = torch.Generator().manual_seed(settings.seed)
    noise = draw_noise(latents.float(), batch.operators[index : index + 1], noise_config, generator)
    conditioning = _row_conditioning(batch, index)
    guided = settings.guidance_scale > 1
    if guided:
        negative = adapter.encode_prompt([""])[0]
        conditioning = guidance_batch(replace(conditioning, negative_prompt_embeds=negative))
    use_pose = pipeline.padaln is not None and batch.pose_latents is not None
    pose = [batch.pose_latents[index : index + 1]] if use_pose else [None]
    windows = plan_windows(latents.shape[1], latents.shape[1])
    return pipeline.denoise(noise, windows, conditioning, pose, settings.num_inference_steps, settings.guidance_scale)


def validate(
    pipeline: AnimationPipeline, rows: pa.Table, settings: ValidationSettings, loss: LossConfig, folder: Path | None
) -> dict[str, float]:
    """Generate every row of `rows` (as MP4s into `folder`, unless None) and return the mean L1, PSNR and SSIM as
    `val_<metric>`."""
    adapter = pipeline.adapter
    batch = training_batch(rows, adapter, adapter.device, operator_device="cpu")
    scores: dict[str, list[float]] = {name: [] for name in METRICS}
    for index, clip_id in enumerate(rows.column("clip_id").to_pylist()):
        frames = generate_row(pipeline, batch, index, settings, loss)
        truth = to_uint8(adapter.decode_latents(batch.latents[index : index + 1]))
        if folder is not None:
            write_video(folder / f"{clip_id}.mp4", frames, settings.fps)
        for name, metric in METRICS.items():
            scores[name].append(metric(frames, truth))
    return {f"val_{name}": float(np.mean(values)) for name, values in scores.items()}
