"""Held-out synthetic people as generation tests (no Ray): the reference image, motion, caption, ground truth and
background of a clip at a model's resolution, a generation scored against them, and the static baseline.

A clip comes from a folder written by `humanim synth` (its video and sidecars) or is drawn and rendered in memory
from `(seed, split, index)`, the same way `humanim synth` does. Either way its frames are brought to the model's
size exactly as the toy preprocessing config does (`crop: centre`, then resized), so the model sees held-out clips
as it saw its training clips. The toy's ablation, gamma sweep and long-video figure score through here, and the
demo draws its inputs with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image

from models.backbones import load_backbone_config
from models.body_model import BodyModel
from models.motion import Motion
from pipelines.demo.synth import ClipSpec, render_clip, synth_motion
from pipelines.evaluation.metrics import l1_distance, psnr, silhouette_iou_per_frame, ssim
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.motion import load_motion
from pipelines.io.video import read_video
from pipelines.preprocess.clips import centre_box, crop_frames
from pipelines.training.ship import TRANSFORMER_DIR, VariantInfo, shipped_variants

SCORES = ("silhouette_iou", "psnr", "ssim", "l1")


@dataclass
class HeldOutClip:
    """One held-out clip at the model's size."""

    stem: str
    image: np.ndarray  # uint8 [H, W, 3]: the reference image, the ground truth's first frame
    motion: Motion  # intrinsics for the source frames; generation rescales them to its resolution
    caption: str
    truth: np.ndarray  # uint8 [T, H, W, 3]
    background: np.ndarray  # uint8 [H, W, 3]: the static background (what is not person)


def to_model_size(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames `[T, H, W, 3]` cropped to the middle box of `size`'s aspect ratio and resized to `size`."""
    return crop_frames(frames, centre_box(frames.shape[1:3], size), size)


def _clip(stem: str, frames: np.ndarray, background: np.ndarray, motion: Motion, caption: str,
          size: tuple[int, int]) -> HeldOutClip:
    truth = to_model_size(frames, size)
    return HeldOutClip(stem, truth[0], motion, caption, truth, to_model_size(background[None], size)[0])


def load_heldout_clip(video: str | Path, size: tuple[int, int], num_frames: int) -> HeldOutClip:
    """The first `num_frames` frames of a `humanim synth` clip (its `.npz`, `.txt` and `.background.png` beside
    the video)."""
    video = Path(video)
    frames = read_video(video, "videos")[0]
    if len(frames) < num_frames:
        raise ValueError(f"num_frames: {video} has {len(frames)} frames, fewer than the {num_frames} asked for")
    with PIL.Image.open(video.with_suffix(".background.png")) as image:
        background = np.array(image.convert("RGB"))  # writable: torch reads it without a warning
    motion = load_motion(video.with_suffix(".npz")).slice(0, num_frames)
    return _clip(video.stem, frames[:num_frames], background, motion, video.with_suffix(".txt").read_text().strip(),
                 size)


def load_heldout_clips(folder: str | Path, size: tuple[int, int], num_frames: int,
                       limit: int | None = None) -> list[HeldOutClip]:
    """The clips of a `humanim synth` folder, in stem order (the first `limit`)."""
    videos = sorted(Path(folder).glob("*.mp4"))[:limit]
    if not videos:
        raise FileNotFoundError(f"clips: no .mp4 in {folder}; write them with `humanim synth --split test`")
    return [load_heldout_clip(video, size, num_frames) for video in videos]


def render_heldout_clip(spec: ClipSpec, body: BodyModel, size: tuple[int, int],
                        motion: Motion | None = None) -> HeldOutClip:
    """A clip drawn with `pipelines.demo.synth.draw_clip`, rendered in memory at its own size, then at `size`: the
    spec's person performing its own motion, or `motion` (all its frames), which must be seen in the spec's frame
    size (e.g. another motion retargeted onto the spec's person: a retargeting cross pair's truth)."""
    motion = synth_motion(spec) if motion is None else motion
    if tuple(motion.image_size) != tuple(spec.size):
        raise ValueError(f"motion: seen in {list(motion.image_size)} but {spec.stem} renders at {list(spec.size)}")
    frames, _, background = render_clip(replace(spec, num_frames=motion.num_frames), body, motion)
    return _clip(spec.stem, frames, background, motion, spec.caption(), size)


def score_video(frames: np.ndarray, clip: HeldOutClip) -> dict[str, float | list[float]]:
    """Silhouette IoU (with its per-frame values), PSNR, SSIM and L1 of generated frames against the clip's
    ground truth (its first `len(frames)` frames)."""
    truth = clip.truth[: len(frames)]
    if len(truth) < len(frames):
        raise ValueError(f"frames: {len(frames)} generated but {clip.stem} has {len(clip.truth)} true frames")
    per_frame = silhouette_iou_per_frame(frames, truth, clip.background)
    return {"silhouette_iou": float(per_frame.mean()), "silhouette_iou_frames": per_frame.tolist(),
            "psnr": psnr(frames, truth), "ssim": ssim(frames, truth), "l1": l1_distance(frames, truth)}


def static_video(clip: HeldOutClip, num_frames: int) -> np.ndarray:
    """The baseline that does not move: the reference image repeated."""
    return np.repeat(clip.image[None], num_frames, axis=0)


def mean_scores(rows: list[dict[str, float | list[float]]]) -> dict[str, float]:
    """The mean of each of `SCORES` over per-video rows."""
    return {key: float(np.mean([row[key] for row in rows])) for key in SCORES}


def variant_pipeline(backbone: str | Path, name: str, body: BodyModel | None = None
                     ) -> tuple[AnimationPipeline, VariantInfo]:
    """The animation pipeline of one variant shipped in the backbone folder that the YAML `backbone` loads (its
    transformer, and its PadaLN when it has one), with the variant's info."""
    config = load_backbone_config(backbone)
    if config.path is None:
        raise ValueError(f"backbone: {backbone} builds a random model (`tiny:`); variants live in a `path:` folder")
    variants = shipped_variants(config.path)
    if name not in variants:
        raise ValueError(f"variant: {name!r} is not in {config.path}/variants (it has {sorted(variants)})")
    folder, info = variants[name]
    config = config.model_copy(update={"transformer": folder / TRANSFORMER_DIR})
    pipeline = AnimationPipeline.from_config(config, padaln=folder if info.padaln else None, body=body)
    return pipeline, info
