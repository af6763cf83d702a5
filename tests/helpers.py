"""Shared test helpers: the tiny random-weight backbones, synthetic videos of the template body, tiny training rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from models.backbones import BackboneAdapter, build_adapter, load_backbone_config
from models.body_model import BodyModel
from models.motion import Motion
from models.rasterizer import scale_intrinsics
from pipelines.demo.motions import make_demo_motion
from pipelines.demo.reference import BACKGROUND, render_reference_image
from pipelines.io.config import load_config
from pipelines.io.manifest import list_videos
from pipelines.io.motion import save_motion
from pipelines.io.training_rows import RowStore
from pipelines.io.video import write_video
from pipelines.preprocess.config import VideoJobConfig
from pipelines.preprocess.stages import DecodeStage, EncodeStage, PoseStage, ProbeStage, RenderStage, WriteStage

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "backbones"
TINY = ["tiny-cogvideox", "tiny-cogvideox1.5", "tiny-wan"]
VIDEO_SIZE = (120, 180)  # the demo camera at a quarter of its size
VIDEOS_TINY = ROOT / "configs" / "preprocess" / "videos-tiny.yaml"


def tiny(name: str) -> BackboneAdapter:
    """A fresh tiny adapter built from `configs/backbones/<name>.yaml`."""
    return build_adapter(load_backbone_config(CONFIGS / f"{name}.yaml"))


def scaled_motion(name: str, frames: int, fps: float = 24.0) -> Motion:
    """A demo motion whose intrinsics and image_size are those of the synthetic videos."""
    motion = make_demo_motion(name, frames, fps=fps)
    K = scale_intrinsics(torch.from_numpy(motion.K), 0.25, 0.25).numpy()
    return dataclasses.replace(motion, K=K, image_size=VIDEO_SIZE)


def render_body(motion: Motion, body: BodyModel, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames `[T, H, W, 3]` of the shaded template body on grey, and its masks `[T, H, W]`."""
    frames = np.stack([render_reference_image(motion, body, size, frame) for frame in range(motion.num_frames)])
    background = np.round(np.array(BACKGROUND) * 255).astype(np.uint8)
    return frames, np.any(frames != background, axis=-1)


def write_tiny_rows(folder: Path, body: BodyModel, clips: dict[str, int]) -> Path:
    """Training rows of the tiny CogVideoX (9-frame clips at 12 fps, 32x32) under `folder/rows`, made by the
    preprocessing stages in this process from synthetic videos of the demo motions (`clips`: motion -> clips)."""
    videos = folder / "videos"
    config = load_config(VideoJobConfig, VIDEOS_TINY, {"videos": videos, "output_dir": str(folder / "rows")})
    for name, count in clips.items():
        motion = scaled_motion(name, config.num_frames * count, fps=12.0)
        frames, _ = render_body(motion, body, VIDEO_SIZE)
        write_video(videos / f"{name}.mp4", frames, motion.fps)
        save_motion(videos / f"{name}.npz", motion)
        (videos / f"{name}.txt").write_text(f"a person, {name.replace('_', ' ')}")
    RowStore(config.output_dir).start_run(config)
    batch = ProbeStage(config)(pa.Table.from_pylist([item.as_dict() for item in list_videos(videos)]))
    for stage in (PoseStage, DecodeStage, RenderStage, EncodeStage, WriteStage):
        batch = stage(config)(batch)
    if set(batch.column("status").to_pylist()) != {"ok"}:
        raise RuntimeError(f"preprocessing failed: {batch.to_pylist()}")
    return Path(config.output_dir)


HOSTILE_FRAMES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def hostile_files(folder) -> dict[str, bytes]:
    """Files that make FFmpeg open `secret.mp4` (a real video next to them) when it probes them."""
    write_video(folder / "secret.mp4", HOSTILE_FRAMES, 8)
    return {
        "ffconcat": b"ffconcat version 1.0\nfile secret.mp4\n",
        "hls": b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsecret.mp4\n#EXT-X-ENDLIST\n",
        "file_url": b"\0\0\0\x18ftypisom\0\0\0\0isomfile://" + str(folder / "secret.mp4").encode() + b"\n",
    }


def generate_walk(pipeline) -> np.ndarray:
    """A 9-frame 32x32 walk from a random image, 3 steps with guidance: a quick run of a tiny pipeline."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return pipeline(image, "a person walking", make_demo_motion("walk", 9), num_frames=9, num_inference_steps=3,
                    guidance_scale=3.0, seed=0).frames
