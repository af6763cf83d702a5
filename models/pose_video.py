"""2D skeleton videos: colored limbs and joints on black, drawn with numpy alone.

Keypoints are `[T, J, 3]` (x, y, confidence) in pixels of the output frames, with integer coordinates at
pixel centres (the rasterizer's convention). They come from a motion's `keypoints2d` (a layout of
models/keypoints.py: COCO-17 or SMPL-24) or from the posed body's 24 SMPL joints projected with the
motion's intrinsics. These frames are DynamiCtrl's driving pose video (the animation pipeline VAE-encodes
them) and the skeleton video that preprocessing stores.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch

from models.body_model import BodyModel, load_body_model
from models.keypoints import LAYOUTS, KeypointLayout, project_points, rescale_keypoints
from models.motion import Motion, MotionError
from models.rasterizer import scale_intrinsics

DEFAULT_THRESHOLD = 0.3
GOLDEN_RATIO = (5**0.5 - 1) / 2
_BY_JOINT_COUNT = {layout.num_joints: layout for layout in LAYOUTS.values()}


def layout_for(num_joints: int) -> KeypointLayout:
    """The layout of a keypoint set with `num_joints` joints."""
    if num_joints not in _BY_JOINT_COUNT:
        names = ", ".join(f"{layout.name} ({n} joints)" for n, layout in _BY_JOINT_COUNT.items())
        raise ValueError(f"keypoints2d: {num_joints} joints match no known layout; expected {names}")
    return _BY_JOINT_COUNT[num_joints]


def palette(count: int, value: float = 1.0) -> np.ndarray:
    """`count` saturated colors, uint8 `[count, 3]`; hues step by the golden ratio, so neighbours in a layout
    (a left limb and its right twin) get clearly different colors."""
    colors = [colorsys.hsv_to_rgb((index * GOLDEN_RATIO) % 1.0, 1.0, value) for index in range(count)]
    return (np.asarray(colors) * 255).round().astype(np.uint8)


def default_radii(size: tuple[int, int]) -> tuple[float, float]:
    """(limb, joint) radii in pixels for frames of `size`: 3 and 4.5 px at 480 px, at least half a pixel."""
    limb = max(0.5, min(size) / 160)
    return limb, 1.5 * limb


def _paint_near_segment(
    canvas: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float, color: np.ndarray
) -> None:
    """Paint every pixel whose centre lies within `radius` of the segment start-end (a disk when they meet)."""
    height, width = canvas.shape[:2]
    x0 = max(int(np.floor(min(start[0], end[0]) - radius)), 0)
    x1 = min(int(np.ceil(max(start[0], end[0]) + radius)), width - 1)
    y0 = max(int(np.floor(min(start[1], end[1]) - radius)), 0)
    y1 = min(int(np.ceil(max(start[1], end[1]) + radius)), height - 1)
    if x0 > x1 or y0 > y1:
        return
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    points = np.stack([xs, ys], axis=-1).astype(np.float64)
    direction = end - start
    length_sq = float(direction @ direction)
    along = np.zeros(points.shape[:2]) if length_sq == 0 else ((points - start) @ direction) / length_sq
    nearest = start + np.clip(along, 0.0, 1.0)[..., None] * direction
    inside = np.square(points - nearest).sum(-1) <= radius * radius
    canvas[y0 : y1 + 1, x0 : x1 + 1][inside] = color


def draw_skeleton(
    keypoints: np.ndarray,
    size: tuple[int, int],
    threshold: float = DEFAULT_THRESHOLD,
    limb_radius: float | None = None,
    joint_radius: float | None = None,
) -> np.ndarray:
    """One skeleton frame, uint8 `[H, W, 3]`, from keypoints `[J, 3]`.

    Limbs are drawn first, each in its own color, then joints on top; a joint whose confidence is below
    `threshold` is not drawn, nor is any limb that touches it.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    layout = layout_for(keypoints.shape[0])
    default_limb, default_joint = default_radii(size)
    limb_radius = default_limb if limb_radius is None else limb_radius
    joint_radius = default_joint if joint_radius is None else joint_radius
    canvas = np.zeros((*size, 3), dtype=np.uint8)
    visible = keypoints[:, 2] >= threshold
    for (a, b), color in zip(layout.limbs, palette(len(layout.limbs), value=0.8)):
        if visible[a] and visible[b]:
            _paint_near_segment(canvas, keypoints[a, :2], keypoints[b, :2], limb_radius, color)
    for joint, color in zip(np.flatnonzero(visible), palette(layout.num_joints)[visible]):
        _paint_near_segment(canvas, keypoints[joint, :2], keypoints[joint, :2], joint_radius, color)
    return canvas


def render_skeletons(
    keypoints: np.ndarray,
    size: tuple[int, int],
    threshold: float = DEFAULT_THRESHOLD,
    limb_radius: float | None = None,
    joint_radius: float | None = None,
) -> np.ndarray:
    """A skeleton video, uint8 `[T, H, W, 3]`, from keypoints `[T, J, 3]` in pixels of `size` (H, W)."""
    keypoints = np.asarray(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints2d: expected shape [T, J, 3], got {list(keypoints.shape)}")
    if not np.isfinite(keypoints).all():
        raise ValueError("keypoints2d: contains NaN or inf")
    return np.stack([draw_skeleton(frame, size, threshold, limb_radius, joint_radius) for frame in keypoints])


def project_joints(motion: Motion, body: BodyModel, size: tuple[int, int], num_frames: int) -> np.ndarray:
    """The posed body's 24 SMPL joints in pixels of `size` (H, W), `[T, 24, 3]`; confidence 0 behind the camera."""
    cut = slice(0, num_frames)
    with torch.no_grad():
        joints = body(motion.global_orient[cut], motion.body_pose[cut], motion.betas[cut], motion.transl[cut]).joints
    source_h, source_w = motion.image_size
    K = scale_intrinsics(torch.from_numpy(motion.K[cut]).to(joints), size[1] / source_w, size[0] / source_h)
    in_front = joints[..., 2:] > 0
    pixels = torch.where(in_front, project_points(joints, K), torch.zeros_like(joints[..., :2]))
    return torch.cat([pixels, in_front.to(pixels.dtype)], dim=-1).cpu().numpy()


def motion_keypoints(
    motion: Motion, size: tuple[int, int], body: BodyModel | None = None, num_frames: int | None = None
) -> np.ndarray:
    """Keypoints `[T, J, 3]` of a motion's first `num_frames` frames in pixels of `size` (H, W).

    The motion's own `keypoints2d` (rescaled from its `image_size`) when it has them, else the body's
    projected joints (`body` defaults to the generated SMPL template).
    """
    num_frames = motion.num_frames if num_frames is None else num_frames
    if not 1 <= num_frames <= motion.num_frames:
        raise MotionError(f"motion has {motion.num_frames} frames but {num_frames} were requested")
    if motion.keypoints2d is None:
        return project_joints(motion, body or load_body_model(), size, num_frames)
    layout_for(motion.keypoints2d.shape[1])
    return rescale_keypoints(motion.keypoints2d[:num_frames], motion.image_size, size)


def render_pose_video(
    motion: Motion,
    size: tuple[int, int],
    body: BodyModel | None = None,
    num_frames: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """The skeleton video of a motion, uint8 `[T, H, W, 3]` (see `motion_keypoints`)."""
    return render_skeletons(motion_keypoints(motion, size, body, num_frames), size, threshold)
