"""Validation during fine-tuning: held-out rows generated from their own conditioning, scored against their clips.

Each held-out row is generated like a request would be: its warp operator's degraded articulated noise (fixed
seed and gamma, so runs compare step to step), its image latents and caption embedding, its pose latents when
PadaLN is trained. The MP4 goes to `<run>/validation/step_<n>/<clip_id>.mp4`; the ground truth is the row's
clean latents decoded by the same VAE, so the metrics (pipelines/evaluation/metrics.py) measure the denoiser alone.

Every worker validates its share, in rounds: in round r, worker k generates row r * world_size + k, so no worker
idles in a collective while another generates (the longest wait is one row's spread between workers). After
each round the workers gather their results (one small all_gather), and from the gathered clocks all of them
take the same decision: past `max_seconds` the remaining rows are skipped and recorded as skipped. Under ZeRO-3
every forward is collective (parameters are sharded), so a worker without a row in the last round generates a
padding row (its output discarded) to run as many forwards as the others.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

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


SUMMARY_NAME = "summary.json"

# A worker's floats in, every worker's floats out (by rank): an all_gather, or `[values]` in one process.
Gather = Callable[[list[float]], list[list[float]]]


def alone(values: list[float]) -> list[list[float]]:
    """The gather of a single process."""
    return [values]


@dataclass(frozen=True)
class RowResult:
    """One held-out row of a validation: who generated it, in how many seconds, its scores; or skipped."""

    clip_id: str
    rank: int
    status: Literal["done", "skipped"]
    seconds: float | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationReport:
    """Every held-out row's result (in row order) and the validation's seconds (the slowest worker's)."""

    rows: list[RowResult]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Mean scores over the generated rows as `val_<metric>`, rows done and skipped, seconds."""
        done = [row for row in self.rows if row.status == "done"]
        means = {f"val_{name}": float(np.mean([row.scores[name] for row in done])) for name in METRICS} if done else {}
        return {**means, "val_rows": len(done), "val_rows_skipped": len(self.rows) - len(done),
                "val_seconds": self.seconds}

    def write(self, folder: Path, max_seconds: float) -> None:
        """`summary.json` in `folder`: every row with its status, rank, seconds and scores."""
        folder.mkdir(parents=True, exist_ok=True)
        summary = {"seconds": self.seconds, "max_seconds": max_seconds, "rows": [asdict(row) for row in self.rows]}
        (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))


def row_of(round_index: int, rank: int, world_size: int, count: int) -> int | None:
    """The held-out row worker `rank` generates in round `round_index` (None: it has none left)."""
    index = round_index * world_size + rank
    return index if index < count else None


def _score(pipeline: AnimationPipeline, batch: TrainingBatch, frames: np.ndarray) -> dict[str, float]:
    truth = to_uint8(pipeline.adapter.decode_latents(batch.latents))
    return {name: float(metric(frames, truth)) for name, metric in METRICS.items()}


def validate(
    pipeline: AnimationPipeline,
    rows: pa.Table,
    settings: ValidationSettings,
    loss: LossConfig,
    folder: Path | None,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather = alone,
    pad: bool = False,
) -> ValidationReport:
    """Generate this worker's share of `rows` (every worker calls this with the same rows; MP4s into `folder`,
    unless None) until `settings.max_seconds` have passed on the slowest worker; `pad`: run a discarded row when
    out of rows while others generate (ZeRO-3). Returns every row's result, the same on every worker."""
    adapter = pipeline.adapter
    clip_ids = rows.column("clip_id").to_pylist()
    count = len(clip_ids)
    started = time.monotonic()
    results: dict[int, RowResult] = {}
    elapsed = 0.0
    for round_index in range(math.ceil(count / world_size)):
        # `elapsed` comes from the gathered clocks, so every worker stops after the same round.
        if elapsed >= settings.max_seconds:
            break
        index = row_of(round_index, rank, world_size, count)
        record = [0.0, 0.0] + [0.0] * len(METRICS)
        if index is not None or pad:
            row_started = time.monotonic()
            batch = training_batch(rows.slice(0 if index is None else index, 1), adapter, adapter.device,
                                   operator_device="cpu")
            frames = generate_row(pipeline, batch, 0, settings, loss)
            if index is not None:
                scores = _score(pipeline, batch, frames)
                if folder is not None:
                    write_video(folder / f"{clip_ids[index]}.mp4", frames, settings.fps)
                record = [1.0, time.monotonic() - row_started, *scores.values()]
        gathered = gather([*record, time.monotonic() - started])
        for worker, values in enumerate(gathered):
            done = row_of(round_index, worker, world_size, count)
            if values[0] and done is not None:
                scores = dict(zip(METRICS, values[2 : 2 + len(METRICS)]))
                results[done] = RowResult(clip_ids[done], worker, "done", values[1], scores)
        elapsed = max(values[-1] for values in gathered)
    rows_out = [results.get(index, RowResult(clip_id, index % world_size, "skipped"))
                for index, clip_id in enumerate(clip_ids)]
    return ValidationReport(rows_out, elapsed)
