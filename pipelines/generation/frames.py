"""Frame arrays at the model boundary: reference images and pose videos checked and sized for the output
resolution, and uint8 frames to and from the [-1, 1] pixels the backbones take."""

from __future__ import annotations

from pathlib import Path

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


def read_image(path: str | Path, field: str = "image") -> PIL.Image.Image:
    """An image file (the reference image, or the `field` it is for), opened and loaded; its mode is checked by
    `image_pixels` / `mask_pixels`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{field}: file not found: {path}")
    try:
        with PIL.Image.open(path) as opened:
            return opened.copy()
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{field}: {path} is not an image file PIL can read") from None


def image_pixels(image: PIL.Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference image as uint8 `[H, W, 3]` at `size`, by the rules in the module docstring."""
    if isinstance(image, PIL.Image.Image):
        if image.mode not in ("RGB", "L"):
            raise ValueError(
                f"image: mode {image.mode} is not accepted; pass RGB (L is converted), e.g. flatten RGBA onto a "
                "background with Image.alpha_composite and .convert('RGB')"
            )
        image = np.asarray(image.convert("RGB"))
    elif not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a PIL image or a uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image: expected shape [H, W, 3] (RGB) or [H, W] (gray), got {list(image.shape)}")
    return _resized(image, size, "image")


def mask_pixels(mask: PIL.Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A region mask for the reference image as uint8 `[H, W]` at `size` (255 keeps a pixel, 0 blanks it): a PIL
    image of mode L or 1, or a uint8/bool array `[H, W]`; resized like the image."""
    if isinstance(mask, PIL.Image.Image):
        if mask.mode not in ("L", "1"):
            raise ValueError(f"mask: mode {mask.mode} is not accepted; pass a grayscale (L) or 1-bit image, "
                             "e.g. .convert('L')")
        mask = np.asarray(mask.convert("L"))
    elif not isinstance(mask, np.ndarray):
        raise ValueError(f"mask: expected a PIL image or a uint8/bool array, got {type(mask).__name__}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8 or mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"mask: expected a uint8 or bool array [H, W], got {mask.dtype} {list(mask.shape)}")
    return _resized(np.repeat(mask[..., None], 3, axis=-1), size, "mask")[..., 0]


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
