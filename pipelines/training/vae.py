"""Training a backbone's video VAE from scratch on a folder of videos (the toy backbone's: synthetic people).

The VAE is convolutional, so random crops of short clips train it for any size and length; `resize` first brings
each video to the model's size the way the preprocessing's `crop: centre` does, so the VAE learns people at the
scale it will encode them. Loss: L1 + MSE of the reconstruction of a sample of the posterior, plus `kl_weight` x KL
to N(0, I); with `foreground_weight`, person pixels (the videos' `.mask.npy` sidecars) weigh 1 + that much more, so
a small person is not given up for the background that fills most of the frame. The run folder holds `state.pt`
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

from models.paths import ProjectPath
from pipelines.io.manifest import list_videos
from pipelines.io.video import read_video
from pipelines.preprocess.clips import centre_box, crop_frames

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"
VAE_DIR = "vae"


class VaeTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    videos: ProjectPath = Field(description="a folder of training videos")
    init: ProjectPath = Field(description="the VAE to start from: a diffusers `vae/` folder (e.g. of a freshly built toy)")
    output_dir: ProjectPath = Field(description="the run folder (resumed when it holds a state)")
    frames: int = Field(9, ge=1, description="frames per training clip, 8k+1: an odd number of latent frames")
    crop: tuple[int, int] = Field((64, 96), description="(height, width) of the random crops, multiples of 8")
    resize: tuple[int, int] | None = Field(
        None, description="(height, width) each video is brought to first (its middle box of that aspect ratio, "
        "resized), e.g. the model's resolution; null keeps the videos' own size"
    )
    foreground_weight: float = Field(
        0.0, ge=0, description="extra loss weight of person pixels, read from each video's `.mask.npy` sidecar "
        "(uint8 [T, H, W], 255 = person, as `humanim synth` writes); 0 reads no masks"
    )
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


def load_clips(
    folder: Path, resize: tuple[int, int] | None = None, masks: bool = False, limit: int | None = None
) -> list[np.ndarray]:
    """Every video of a folder, decoded: uint8 `[T, H, W, 3]` each, brought to `resize` when given; with `masks`,
    its `.mask.npy` person mask is a fourth channel (255 = person; resized with the frames, so edges are soft)."""
    items = list_videos(folder)[:limit]
    if not items:
        raise FileNotFoundError(f"videos: no videos in {folder}")
    clips = []
    for item in items:
        frames = read_video(item.video, "videos")[0]
        if masks:
            frames = np.concatenate([frames, _person_mask(Path(item.video), frames.shape[:3])[..., None]], axis=-1)
        if resize is not None:
            frames = crop_frames(frames, centre_box(frames.shape[1:3], resize), resize)
        clips.append(frames)
    return clips


def _person_mask(video: Path, shape: tuple[int, int, int]) -> np.ndarray:
    path = video.with_suffix(".mask.npy")
    if not path.is_file():
        raise FileNotFoundError(f"foreground_weight: {path} is missing; it holds the video's person masks, "
                                f"uint8 [T, H, W] with 255 = person (or set foreground_weight: 0)")
    mask = np.load(path)
    if mask.shape != shape:
        raise ValueError(f"foreground_weight: {path} has shape {list(mask.shape)}, the video {list(shape)}")
    return mask.astype(np.uint8)


def random_crops(
    clips: list[np.ndarray], frames: int, crop: tuple[int, int], batch_size: int, generator: np.random.Generator
) -> Iterator[torch.Tensor]:
    """Endless batches `[B, C, frames, H, W]` in [-1, 1]: a random clip, start frame and window each (C is the
    clips' channels: 3, or 4 with the mask)."""
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


def vae_loss(vae: AutoencoderKLCogVideoX, batch: torch.Tensor, kl_weight: float, generator: torch.Generator,
             foreground_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a `random_crops` batch; its fourth channel, when present, is the person mask that
    `foreground_weight` weighs the reconstruction terms by (normalised by the mean weight)."""
    pixels = batch[:, :3]
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    error = reconstruction - pixels
    weight = torch.ones_like(error[:, :1])
    if foreground_weight and batch.shape[1] == 4:
        weight = weight + foreground_weight * (batch[:, 3:] + 1) / 2
    weight = weight / weight.mean()
    l1 = (weight * error.abs()).mean()
    mse = (weight * error.square()).mean()
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
    clips = load_clips(config.videos, config.resize, masks=config.foreground_weight > 0)
    batches = random_crops(clips, config.frames, config.crop, config.batch_size, generator)
    logged: dict[str, float] = {}
    with open(output / METRICS_NAME, "a") as metrics:
        while step < config.steps:
            started = time.perf_counter()
            loss, logged = vae_loss(vae, next(batches), config.kl_weight, torch_generator,
                                    config.foreground_weight)
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
