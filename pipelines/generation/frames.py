"""Frame arrays at the model boundary: pose videos checked and sized for the output resolution, and uint8 frames
to and from the [-1, 1] pixels the backbones take (reference photos: `pipelines.generation.photo`)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

ASPECT_TOLERANCE = 0.01


def _resized(frames: np.ndarray, size: tuple[int, int], field: str) -> np.ndarray:
    """uint8 `[..., h, w, 3]` at `size` (H, W): unchanged, resized (same aspect within 1%), or refused."""
    height, width = frames.shape[-3:-1]
    if (height, width) == size:
        return frames
    if abs(width * size[0] - height * size[1]) > ASPECT_TOLERANCE * height * size[1]:
        raise ValueError(
            f"{field}: size {height}x{width} (HxW) does not have the aspect ratio of the output resolution "
            f"{size[0]}x{size[1]}; crop it to that aspect ratio first"
        )
    flat = frames.reshape(-1, height, width, 3)
    resized = [np.asarray(PIL.Image.fromarray(f).resize(size[::-1], PIL.Image.Resampling.BICUBIC)) for f in flat]
    return np.stack(resized).reshape(*frames.shape[:-3], *size, 3)


def pose_video_pixels(pose_video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A pose video as uint8 `[T, H, W, 3]` at `size`."""
    if not isinstance(pose_video, np.ndarray) or pose_video.dtype != np.uint8:
        raise ValueError(f"pose_video: expected a uint8 array or a video file, got {type(pose_video).__name__}")
    if pose_video.ndim != 4 or pose_video.shape[-1] != 3 or min(pose_video.shape[:3]) < 1:
        raise ValueError(f"pose_video: expected shape [T, H, W, 3], got {list(pose_video.shape)}")
    return _resized(pose_video, size, "pose_video")


def held_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """The first `num_frames` frames `[T, ...]`, the last one repeated past the end (a held pose)."""
    return frames[np.minimum(np.arange(num_frames), len(frames) - 1)]


def to_model_pixels(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 `[..., H, W, 3]` -> float `[..., 3, H, W]` in [-1, 1], mapped as diffusers maps a PIL image."""
    pixels = torch.from_numpy(np.array(frames)).to(device).movedim(-1, -3)  # a copy: PIL arrays are read-only
    return 2.0 * (pixels.float() / 255.0) - 1.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Decoded `[B, F, 3, H, W]` in about [-1, 1] -> uint8 `[F, H, W, 3]` of the first sample."""
    return ((frames[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
