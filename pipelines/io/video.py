"""Video files: MP4 writing with PyAV (H.264)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames `[T, H, W, 3]` as an H.264 MP4 (H and W must be even for yuv420p)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for H.264, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_video(path: str | Path, field: str = "video") -> tuple[np.ndarray, float]:
    """Every frame of a video file, uint8 RGB `[T, H, W, 3]`, and its frame rate; errors name `field`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: video not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"{field}: {path} could not be decoded as a video: {err}") from None
    if not frames:
        raise ValueError(f"{field}: {path} holds no frames")
    return np.stack(frames), fps
