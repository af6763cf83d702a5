"""Retargeting: a motion moved onto the person in a reference photo (no estimator here; see photo_retarget.py).

`fit_photo` fits SMPL to one photo's 2D keypoints (`pipelines.preprocess.smpl_fit.fit_smpl` on a single frame):
the person's shape, pose and placement in front of the photo's camera (intrinsics guessed from its size unless
given). `retarget` then builds a new motion in which

- the body has the photo person's shape (their betas on every frame);
- the source motion is moved rigidly so that its first frame's root (pelvis position and orientation) is the photo
  person's: with M = R_photo R_source(0)^T, frame t's root orientation is M R_source(t) and its pelvis
  p_photo + s M (p_source(t) - p_source(0)), s being the ratio of the two bodies' leg lengths (a taller person takes
  longer steps). So it starts where the photo person stands (position, scale, facing) and follows the source's root
  trajectory relative to its start; the joint rotations (body_pose) are the source's;
- it is seen by the photo's camera (its intrinsics and image size), at the source's frame rate;
- with `lead_in` N, N frames come first that blend (per joint, slerp with a smoothstep weight) from the photo's
  fitted pose into the motion's first pose, the root held at the photo person's: frame 0 is the photo's pose, so
  it agrees with the reference image. Joints the photo does not show (no keypoint on any body point they move: the
  legs of a waist-up photo) start in the motion's first pose instead of the fit's guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from models.body_model import NUM_JOINTS, NUM_POSE_PARAMS, BodyModel
from models.keypoints import FACE_POINT_NAMES, get_layout, keypoint_body
from models.motion import Motion, motion_from_arrays
from models.smpl_template import SMPL_PARENTS
from pipelines.generation.photo import RETARGET_OFF
from pipelines.preprocess.pose_files import guess_intrinsics
from pipelines.preprocess.smpl_fit import FitConfig, fit_smpl

HEAD = 15
L_ANKLE, R_ANKLE = 7, 8
# Parent of every body point (24 SMPL joints, then the face points, which move with the head).
_BODY_POINT_PARENTS = SMPL_PARENTS + (HEAD,) * len(FACE_POINT_NAMES)
MIN_KEYPOINTS = 3  # fewer confident keypoints cannot place a body


class RetargetError(ValueError):
    """A photo or motion that cannot be retargeted; the message starts with `retarget:` and says what to do."""


@dataclass(frozen=True)
class PhotoFit:
    """SMPL fitted to one photo: a one-frame motion (pose, shape, placement, the photo's camera and image size, the
    keypoints it was fitted to), which SMPL joints' rotations the photo shows, and the fit's mean pixel error."""

    motion: Motion
    observed: np.ndarray  # [23] bool per body_pose joint (SMPL joints 1..23)
    reprojection_error_px: float


def observed_joints(seen_points: np.ndarray) -> np.ndarray:
    """Per body_pose joint (SMPL joints 1..23), whether a seen body point (`seen_points` [29] bool: 24 joints, then the
    face points) lies below it in the kinematic tree, i.e. whether the photo shows what its rotation does."""
    observed = np.zeros(NUM_JOINTS - 1, dtype=bool)
    for point in np.flatnonzero(seen_points):
        parent = _BODY_POINT_PARENTS[point]
        while parent > 0:  # the pelvis (0) is the root, placed by global_orient
            observed[parent - 1] = True
            parent = SMPL_PARENTS[parent]
    return observed


def fit_photo(
    keypoints: np.ndarray,
    image_size: tuple[int, int],
    body: BodyModel,
    layout: str = "coco17",
    K: np.ndarray | None = None,
    config: FitConfig | None = None,
) -> PhotoFit:
    """Fit SMPL to one photo's keypoints `[J, 3]` (x, y in pixels of `image_size` (H, W), confidence; partial photos
    simply lack keypoints). `K` defaults to `guess_intrinsics(image_size)`."""
    config = config or FitConfig()
    points = np.asarray(keypoints, dtype=np.float64)
    keypoint_layout = get_layout(layout)
    if points.shape != (keypoint_layout.num_joints, 3):
        raise RetargetError(f"retarget: photo keypoints must have shape [{keypoint_layout.num_joints}, 3] "
                            f"({layout}), got {list(points.shape)}")
    seen = np.isfinite(points).all(axis=1) & (np.nan_to_num(points[:, 2]) > config.min_confidence)
    if seen.sum() < MIN_KEYPOINTS:
        raise RetargetError(
            f"retarget: the photo shows {int(seen.sum())} body keypoints with confidence above "
            f"{config.min_confidence}; at least {MIN_KEYPOINTS} (e.g. the shoulders and the nose) are needed to place "
            f"the body; use a photo that shows the person, or {RETARGET_OFF} to drive the motion as it is"
        )
    K = guess_intrinsics(image_size) if K is None else np.asarray(K, dtype=np.float64)
    try:
        result = fit_smpl(points[None], K, image_size, body, layout, config, body.faces.device, fps=1.0)
    except ValueError as err:
        raise RetargetError(f"retarget: cannot fit a body to the photo's keypoints: {err}") from None
    seen_points = np.zeros(len(_BODY_POINT_PARENTS), dtype=bool)
    seen_points[np.asarray(keypoint_layout.sources)[seen]] = True
    return PhotoFit(result.motion, observed_joints(seen_points), float(result.reprojection_error_px[0]))


def _rest_joints(body: BodyModel, betas: np.ndarray) -> np.ndarray:
    """SMPL joints `[N, 24, 3]` of bodies of shape `betas` [N, 10] in the rest pose, no translation."""
    points = keypoint_body(body)
    device = points.faces.device
    count = len(betas)
    with torch.no_grad():
        output = points(torch.zeros(count, 3, device=device), torch.zeros(count, NUM_POSE_PARAMS, device=device),
                        torch.as_tensor(betas, dtype=torch.float32, device=device),
                        torch.zeros(count, 3, device=device))
    return output.joints.double().cpu().numpy()


def _leg_length(joints: np.ndarray) -> np.ndarray:
    """Pelvis to the middle of the ankles, [N], of rest joints [N, 24, 3]."""
    return np.linalg.norm(joints[:, 0] - (joints[:, L_ANKLE] + joints[:, R_ANKLE]) / 2, axis=-1)


def _leg_ratio(rest: np.ndarray) -> float:
    """The leg length of rest joints `rest[0]` over that of `rest[1]` (rest joints [N >= 2, J, 3])."""
    legs = _leg_length(rest[:2])
    return float(legs[0] / legs[1])


def trajectory_scale(body: BodyModel, betas: np.ndarray, source_betas: np.ndarray) -> float:
    """How much a motion of a body of shape `source_betas` [10] has its root trajectory scaled on a body of `betas`
    [10]: the ratio of their leg lengths (a taller person takes longer steps)."""
    return _leg_ratio(_rest_joints(body, np.stack([betas, source_betas]).astype(np.float64)))


def _lead_in_poses(start: np.ndarray, end: np.ndarray, frames: int) -> np.ndarray:
    """body_pose [frames, 69] going from `start` [69] (frame 0) towards `end` [69] (reached on the frame after),
    each joint along its shortest rotation with a smoothstep weight."""
    first = Rotation.from_rotvec(start.reshape(-1, 3))
    step = (first.inv() * Rotation.from_rotvec(end.reshape(-1, 3))).as_rotvec()
    progress = np.arange(frames) / frames
    weights = progress**2 * (3 - 2 * progress)
    poses = [(first * Rotation.from_rotvec(weight * step)).as_rotvec().reshape(-1) for weight in weights]
    return np.asarray(poses).reshape(frames, NUM_POSE_PARAMS)


def retarget(motion: Motion, fit: PhotoFit, body: BodyModel, lead_in: int = 0) -> Motion:
    """`motion` moved onto the photo person of `fit`, with `lead_in` blend frames first (module docstring)."""
    if lead_in < 0:
        raise RetargetError(f"retarget: lead_in must be >= 0 frames, got {lead_in}")
    photo = fit.motion
    betas = photo.betas[0].astype(np.float64)
    rest = _rest_joints(body, np.concatenate([betas[None], motion.betas.astype(np.float64)]))
    pelvis_rest, source_pelvis_rest = rest[0, 0], rest[1:, 0]
    scale = _leg_ratio(rest)  # trajectory_scale, from the rest joints already posed
    photo_orient = Rotation.from_rotvec(photo.global_orient[0].astype(np.float64))
    photo_pelvis = pelvis_rest + photo.transl[0].astype(np.float64)
    source_orient = Rotation.from_rotvec(motion.global_orient.astype(np.float64))
    source_pelvis = source_pelvis_rest + motion.transl.astype(np.float64)
    align = photo_orient * source_orient[0].inv()  # M: the source's first root orientation onto the photo's
    orient = (align * source_orient).as_rotvec()
    pelvis = photo_pelvis + scale * align.apply(source_pelvis - source_pelvis[0])
    body_pose = motion.body_pose.astype(np.float64)
    if lead_in:
        start = np.where(np.repeat(fit.observed, 3), photo.body_pose[0], motion.body_pose[0]).astype(np.float64)
        orient = np.concatenate([np.repeat(orient[:1], lead_in, axis=0), orient])
        pelvis = np.concatenate([np.repeat(pelvis[:1], lead_in, axis=0), pelvis])
        body_pose = np.concatenate([_lead_in_poses(start, body_pose[0], lead_in), body_pose])
    return motion_from_arrays({
        "global_orient": orient,
        "body_pose": body_pose,
        "betas": betas,
        "transl": pelvis - pelvis_rest,
        "K": photo.K[0],
        "image_size": np.asarray(photo.image_size),
        "fps": motion.fps,
    })
