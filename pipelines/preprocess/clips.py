"""Video clips for training: decode (decord), sample to the backbone's frame count and fps, crop around the person.

Pixel convention (as in `models.rasterizer`): integer image coordinates are pixel centres, so pixel j spans
[j - 0.5, j + 0.5]. A crop keeps whole pixels; the crop and the resize that follows are applied to the frames,
the motion's intrinsics and its 2D keypoints alike, so the body still projects onto the person.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from models.motion import Motion, MotionError
from pipelines.io.video import SNIFF_BYTES, check_container

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ASPECT_TOLERANCE = 0.01


class VideoError(ValueError):
    """A video (or its mask) that cannot be used; the message names the file and the problem."""


class ClipConfig(BaseModel):
    """How clips are cut from a video; frame count and resolution come from the backbone."""

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(None, gt=0, le=240, description="target frame rate; None keeps each video's own")
    stride: int | None = Field(None, ge=1, description="target frames between clip starts; None means num_frames")
    max_clips_per_video: int | None = Field(None, ge=1)
    crop: Literal["person", "centre"] = Field("person", description="crop around the person, or the centre")
    margin: float = Field(0.2, ge=0, le=2, description="added on each side of the person box, times its longer side")
    keypoint_threshold: float = Field(0.3, ge=0, le=1, description="keypoints below this confidence are ignored")


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a video needs to know: its length, frame rate and frame size."""

    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class CropBox:
    """Whole pixels [x0, x0 + width) x [y0, y0 + height) of the source frames."""

    x0: int
    y0: int
    width: int
    height: int

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.width, self.height]


def _reader(path: str | Path):
    """A decord reader at native size (decord's resize-on-decode is wrong for some widths)."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"video file is empty (0 bytes): {path}")
    with path.open("rb") as file:  # decord lets FFmpeg probe: never hand it a playlist or concat list
        head = file.read(SNIFF_BYTES)
    try:
        check_container(head, "video", str(path))
    except ValueError as err:
        raise VideoError(str(err)) from None
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VideoError(f"video cannot be decoded: {path} ({reason})") from None


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video; VideoError when it cannot be decoded or holds no frames."""
    reader = _reader(path)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    if num_frames == 0:
        raise VideoError(f"video holds no frames: {path}")
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"video has no valid frame rate ({fps}): {path}")
    height, width = reader[0].shape[:2]
    return VideoInfo(num_frames, fps, int(height), int(width))


def decode_frames(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """uint8 RGB frames `[T, H, W, 3]` at native size for the given frame indices."""
    reader = _reader(path)
    try:
        return reader.get_batch([int(i) for i in indices]).asnumpy()
    except (RuntimeError, IndexError) as err:
        raise VideoError(f"video frames {list(indices)} cannot be decoded from {path}: {err}") from None


def sample_clips(info: VideoInfo, num_frames: int, config: ClipConfig) -> list[np.ndarray]:
    """Source frame indices of each clip: the video resampled to `config.fps` by frame index, cut into clips
    of `num_frames` target frames every `config.stride` target frames (at most `config.max_clips_per_video`)."""
    fps = config.fps or info.fps
    step = info.fps / fps  # source frames per target frame
    available = math.floor((info.num_frames - 1) / step + 1e-9) + 1
    stride = config.stride or num_frames
    starts = range(0, available - num_frames + 1, stride)
    if not starts:
        raise VideoError(
            f"video is too short: {info.num_frames} frames at {info.fps:g} fps give {available} frames at "
            f"{fps:g} fps, fewer than one clip of {num_frames}"
        )
    starts = starts[: config.max_clips_per_video]
    return [np.floor((start + np.arange(num_frames)) * step + 0.5).astype(np.int64) for start in starts]


def clip_id(video_id: str, start_frame: int) -> str:
    """A clip's key: its video and its first source frame."""
    return f"{video_id}_{start_frame:06d}"


# Crop boxes


def _box_around(
    centre: tuple[float, float], extent: tuple[float, float], image_size: tuple[int, int]
) -> CropBox:
    """Whole-pixel box of about `extent` (w, h) centred at `centre` (x, y), moved inside the image."""
    height, width = image_size
    box_w = int(min(width, max(1, round(extent[0]))))
    box_h = int(min(height, max(1, round(extent[1]))))
    x0 = int(np.clip(round(centre[0] - (box_w - 1) / 2), 0, width - box_w))
    y0 = int(np.clip(round(centre[1] - (box_h - 1) / 2), 0, height - box_h))
    return CropBox(x0, y0, box_w, box_h)


def largest_box(centre: tuple[float, float], image_size: tuple[int, int], size: tuple[int, int]) -> CropBox:
    """The largest box with the aspect ratio of `size` (H, W) inside the image, centred at `centre` (x, y) as far
    as the image allows."""
    height, width = image_size
    aspect = size[1] / size[0]
    box_w = min(width, height * aspect)
    return _box_around(centre, (box_w, box_w / aspect), image_size)


def centre_box(image_size: tuple[int, int], size: tuple[int, int]) -> CropBox:
    """The largest box with the aspect ratio of `size` (H, W) in the middle of the image."""
    height, width = image_size
    return largest_box(((width - 1) / 2, (height - 1) / 2), image_size, size)


def person_box(
    bounds: tuple[float, float, float, float], image_size: tuple[int, int], size: tuple[int, int], margin: float
) -> CropBox:
    """A box with the aspect ratio of `size` around the person's `bounds` (x0, y0, x1, y1), grown by `margin`
    times the bounds' longer side on each side; shrunk about the person's centre when it would not fit."""
    x0, y0, x1, y1 = bounds
    pad = margin * max(x1 - x0, y1 - y0)
    box_w, box_h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    aspect = size[1] / size[0]
    box_w, box_h = max(box_w, box_h * aspect), max(box_h, box_w / aspect)
    shrink = min(1.0, image_size[1] / box_w, image_size[0] / box_h)
    return _box_around(((x0 + x1) / 2, (y0 + y1) / 2), (box_w * shrink, box_h * shrink), image_size)


def mask_bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Extent (x0, y0, x1, y1) of the person pixels of masks `[T, H, W]` (bool), pixel edges included."""
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        raise VideoError("mask: the person mask is empty in every frame of the clip")
    return cols[0] - 0.5, rows[0] - 0.5, cols[-1] + 0.5, rows[-1] + 0.5


def keypoint_bounds(
    keypoints: np.ndarray, image_size: tuple[int, int], threshold: float
) -> tuple[float, float, float, float]:
    """Extent (x0, y0, x1, y1) of the confident keypoints `[T, J, 3]` that fall inside the image."""
    height, width = image_size
    x, y, confidence = np.moveaxis(np.asarray(keypoints, dtype=np.float64), -1, 0)
    keep = (confidence >= threshold) & (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    if not keep.any():
        raise VideoError(f"person: no keypoint with confidence >= {threshold} lies inside the frames of the clip")
    return float(x[keep].min()), float(y[keep].min()), float(x[keep].max()), float(y[keep].max())


def load_mask(path: str | Path, indices: np.ndarray, image_size: tuple[int, int], video_frames: int) -> np.ndarray:
    """Person masks `[T, H, W]` (bool) of the clip's frames from a mask sidecar: an image (one mask for every
    frame), a `.npy` array `[H, W]` or `[T_video, H, W]`, or a video with one mask frame per video frame."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"mask file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        with PIL.Image.open(path) as image:
            masks = np.asarray(image.convert("L"))[None] > 127
    elif suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim == 3 and array.shape[0] != video_frames:
            raise VideoError(f"mask: {path} has {array.shape[0]} frames but the video has {video_frames}")
        masks = (array[None] if array.ndim == 2 else array[indices]) > (127 if array.dtype == np.uint8 else 0.5)
    else:
        masks = decode_frames(path, indices).mean(axis=-1) > 127
    if masks.ndim != 3 or masks.shape[1:] != tuple(image_size):
        raise VideoError(f"mask: {path} has shape {list(masks.shape[1:])}, expected the video's {list(image_size)}")
    return np.broadcast_to(masks, (len(indices), *image_size))


# Applying a crop


def crop_frames(frames: np.ndarray, box: CropBox, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames `[T, H, W, 3]` cut to `box` and resized to `size` with torch (antialiased bilinear)."""
    cut = frames[:, box.y0 : box.y0 + box.height, box.x0 : box.x0 + box.width]
    pixels = torch.from_numpy(np.ascontiguousarray(cut)).permute(0, 3, 1, 2).float()
    resized = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _scale(sx: float, sy: float) -> np.ndarray:
    """Image-point map of a resize by (sx, sy) with pixel centres at integers: u -> (u + 0.5) * sx - 0.5."""
    return np.array([[sx, 0.0, 0.5 * (sx - 1)], [0.0, sy, 0.5 * (sy - 1)], [0.0, 0.0, 1.0]])


def crop_transform(
    box: CropBox, size: tuple[int, int], source_size: tuple[int, int], video_size: tuple[int, int]
) -> np.ndarray:
    """The 3x3 image-point map from pixels of `source_size` (a motion's image_size, rescaled to the video's
    `video_size` when they differ) through the crop `box` to pixels of `size`."""
    (source_h, source_w), (video_h, video_w) = source_size, video_size
    if abs(source_w * video_h - source_h * video_w) > ASPECT_TOLERANCE * source_h * video_w:
        raise MotionError(
            f"motion key 'image_size' {[source_h, source_w]} does not have the aspect ratio of the video "
            f"({video_h}x{video_w})"
        )
    shift = np.array([[1.0, 0.0, -box.x0], [0.0, 1.0, -box.y0], [0.0, 0.0, 1.0]])
    resize = _scale(size[1] / box.width, size[0] / box.height)
    return resize @ shift @ _scale(video_w / source_w, video_h / source_h)


def crop_motion(motion: Motion, box: CropBox, size: tuple[int, int], video_size: tuple[int, int]) -> Motion:
    """The motion as seen in the cropped, resized frames: intrinsics, keypoints and image_size follow the crop."""
    transform = crop_transform(box, size, motion.image_size, video_size)
    keypoints = motion.keypoints2d
    if keypoints is not None:
        points = np.concatenate([keypoints[..., :2], np.ones_like(keypoints[..., :1])], axis=-1) @ transform.T
        keypoints = np.concatenate([points[..., :2], keypoints[..., 2:]], axis=-1).astype(np.float32)
    return dataclasses.replace(
        motion,
        K=(transform @ motion.K.astype(np.float64)).astype(np.float32),
        image_size=tuple(size),
        keypoints2d=keypoints,
    )
