"""Training a backbone's video VAE from scratch on a folder of videos (the toy backbone's: synthetic people).

The VAE is convolutional, so random crops of short clips train it for any size and length. Loss: L1 + MSE of the
reconstruction of a sample of the posterior, plus `kl_weight` x KL to N(0, I). The run folder holds `state.pt`
(weights, optimizer, step and RNG: a rerun resumes from it, checkpointed every `checkpoint_every` steps and at the
end), `metrics.jsonl` (one line per logged step) and, when the run ends, `vae/` in diffusers format. No Ray: one
process, for CPU-sized toys; a real backbone's VAE is used as released.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.io.manifest import list_videos
from pipelines.io.video import read_video

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"
VAE_DIR = "vae"


class VaeTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    videos: Path = Field(description="a folder of training videos")
    init: Path = Field(description="the VAE to start from: a diffusers `vae/` folder (e.g. of a freshly built toy)")
    output_dir: Path = Field(description="the run folder (resumed when it holds a state)")
    frames: int = Field(9, ge=1, description="frames per training clip, 8k+1: an odd number of latent frames")
    crop: tuple[int, int] = Field((64, 96), description="(height, width) of the random crops, multiples of 8")
    batch_size: int = Field(2, ge=1)
    steps: int = Field(2000, ge=1)
    lr: float = Field(5e-4, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0

    @field_validator("frames")
    @classmethod
    def _odd_latent_frames(cls, value: int) -> int:
        # The CogVideoX VAE's causal decoder gives 1 + 4 (n - 1) frames only for an odd count n of latent frames.
        if value % 8 != 1:
            raise ValueError(f"must be 8k+1 (9, 17, 25, ...) for an odd number of latent frames, got {value}")
        return value


def load_clips(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    """Every video of a folder, decoded: uint8 `[T, H, W, 3]` each."""
    items = list_videos(folder)[:limit]
    if not items:
        raise FileNotFoundError(f"videos: no videos in {folder}")
    return [read_video(item.video, "videos")[0] for item in items]


def random_crops(
    clips: list[np.ndarray], frames: int, crop: tuple[int, int], batch_size: int, generator: np.random.Generator
) -> Iterator[torch.Tensor]:
    """Endless batches `[B, 3, frames, H, W]` in [-1, 1]: a random clip, start frame and window each."""
    height, width = crop
    while True:
        batch = []
        for _ in range(batch_size):
            clip = clips[generator.integers(len(clips))]
            if clip.shape[0] < frames or clip.shape[1] < height or clip.shape[2] < width:
                raise ValueError(f"crop: a {list(clip.shape[:3])} clip is smaller than {frames} x {height} x {width}")
            t = generator.integers(clip.shape[0] - frames + 1)
            y, x = generator.integers(clip.shape[1] - height + 1), generator.integers(clip.shape[2] - width + 1)
            batch.append(clip[t : t + frames, y : y + height, x : x + width])
        pixels = torch.from_numpy(np.stack(batch)).float() / 127.5 - 1
        yield pixels.permute(0, 4, 1, 2, 3).contiguous()


def vae_loss(vae: AutoencoderKLCogVideoX, pixels: torch.Tensor, kl_weight: float,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    l1 = (reconstruction - pixels).abs().mean()
    mse = (reconstruction - pixels).square().mean()
    kl = posterior.kl().mean() / pixels[0].numel()  # per pixel value, like the reconstruction terms
    loss = l1 + mse + kl_weight * kl
    return loss, {name: value.item() for name, value in (("loss", loss), ("l1", l1), ("mse", mse), ("kl", kl))}


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLCogVideoX, clips: list[np.ndarray], frames: int) -> float:
    """Mean PSNR (dB, on 8-bit frames) of the posterior mode's reconstruction of each clip's first `frames`."""
    values = []
    for clip in clips:
        pixels = torch.from_numpy(clip[:frames]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        error = ((decoded.clamp(-1, 1) - pixels) * 127.5).square().mean()
        values.append(10 * math.log10(255**2 / max(float(error), 1e-12)))
    return float(np.mean(values))


def _save_state(path: Path, vae: AutoencoderKLCogVideoX, optimizer: torch.optim.Optimizer, step: int,
                generator: np.random.Generator, torch_generator: torch.Generator) -> None:
    temporary = path.with_name(f".{path.name}")
    torch.save({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "numpy_rng": generator.bit_generator.state, "torch_rng": torch_generator.get_state()}, temporary)
    os.replace(temporary, path)  # a crash mid-write keeps the previous state


def train_vae(config: VaeTrainConfig) -> dict[str, float]:
    """Train (or resume) and export `vae/`; returns the last logged losses and the step count."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKLCogVideoX.from_pretrained(config.init, local_files_only=True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)
    generator, torch_generator = np.random.default_rng(config.seed), torch.Generator().manual_seed(config.seed)
    step = 0
    if (output / STATE_NAME).is_file():
        state = torch.load(output / STATE_NAME, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        generator.bit_generator.state = state["numpy_rng"]
        torch_generator.set_state(state["torch_rng"])
    batches = random_crops(load_clips(config.videos), config.frames, config.crop, config.batch_size, generator)
    logged: dict[str, float] = {}
    with open(output / METRICS_NAME, "a") as metrics:
        while step < config.steps:
            started = time.perf_counter()
            loss, logged = vae_loss(vae, next(batches), config.kl_weight, torch_generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                metrics.write(json.dumps({"step": step, **logged, "seconds": time.perf_counter() - started}) + "\n")
                metrics.flush()
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_state(output / STATE_NAME, vae, optimizer, step, generator, torch_generator)
    vae.eval().save_pretrained(output / VAE_DIR)
    return {**logged, "steps": step}
