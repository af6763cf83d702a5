"""Procedural demo motions in the motion-file format: a body in front of a static camera."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from models.motion import NUM_BODY_JOINTS, Motion, motion_from_arrays

DEMO_IMAGE_SIZE = (480, 720)  # H, W
DEMO_FPS = 24.0
FOCAL = 700.0
SUBJECT_DEPTH = 3.3  # metres: a ~1.7 m body fills ~75% of the frame height
PELVIS_HEIGHT = -0.1  # camera y of the pelvis that centres the body vertically (y points down)

# SMPL joint ids (body_pose holds joints 1..23).
L_HIP, R_HIP, L_KNEE, R_KNEE = 1, 2, 4, 5
SPINE1 = 3
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 16, 17, 18, 19


def camera_orient(yaw: np.ndarray) -> np.ndarray:
    """Axis-angle that turns SMPL's y-up body (facing +z) upright in an OpenCV camera, then yaws it.

    Yaw 0 faces the camera; yaw pi/2 faces image-right (+x).
    """
    upright = Rotation.from_rotvec([np.pi, 0.0, 0.0])
    return (upright * Rotation.from_rotvec(np.outer(yaw, [0.0, 1.0, 0.0]))).as_rotvec()


class Pose:
    """Per-frame local joint rotations, composed in the parent's frame and exported as axis-angle."""

    def __init__(self, num_frames: int) -> None:
        self.rotations = [Rotation.identity(num_frames) for _ in range(NUM_BODY_JOINTS)]

    def rotate(self, joint: int, axis: tuple[float, float, float], angle: np.ndarray) -> None:
        """Apply a rotation about `axis` (in the joint's rest frame) after what the joint already has."""
        step = Rotation.from_rotvec(np.outer(angle, axis))
        self.rotations[joint - 1] = step * self.rotations[joint - 1]

    def body_pose(self) -> np.ndarray:
        return np.concatenate([rotation.as_rotvec() for rotation in self.rotations], axis=1)


def lower_arms(pose: Pose, angle: np.ndarray | float, num_frames: int) -> None:
    """Bring the T-pose arms down by `angle` radians (left arm lies along +x, right along -x)."""
    angle = np.broadcast_to(angle, (num_frames,))
    pose.rotate(L_SHOULDER, (0.0, 0.0, 1.0), -angle)
    pose.rotate(R_SHOULDER, (0.0, 0.0, 1.0), angle)


def _walk(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profile walk from image-left to image-right at 0.45 m/s with a 1.1 s gait cycle."""
    phase = 2 * np.pi * t / 1.1
    pose = Pose(len(t))
    swing = 0.45 * np.sin(phase)
    pose.rotate(L_HIP, (1.0, 0.0, 0.0), -swing)  # negative about x swings the leg forward
    pose.rotate(R_HIP, (1.0, 0.0, 0.0), swing)
    pose.rotate(L_KNEE, (1.0, 0.0, 0.0), 0.55 * np.clip(np.sin(phase - 1.2), 0, None) + 0.05)
    pose.rotate(R_KNEE, (1.0, 0.0, 0.0), 0.55 * np.clip(np.sin(phase + np.pi - 1.2), 0, None) + 0.05)
    lower_arms(pose, 1.3, len(t))
    pose.rotate(L_SHOULDER, (1.0, 0.0, 0.0), 0.4 * np.sin(phase))  # arms swing against the legs
    pose.rotate(R_SHOULDER, (1.0, 0.0, 0.0), -0.4 * np.sin(phase))
    pose.rotate(L_ELBOW, (0.0, 1.0, 0.0), np.full(len(t), -0.3))
    pose.rotate(R_ELBOW, (0.0, 1.0, 0.0), np.full(len(t), 0.3))
    x = -1.2 + 0.45 * t
    transl = np.stack([x, np.full_like(t, PELVIS_HEIGHT), np.full_like(t, SUBJECT_DEPTH)], axis=1)
    return camera_orient(np.full(len(t), np.pi / 2)), pose.body_pose(), transl


def _arm_swings(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Facing the camera, both arms sweep from the hips to above the head and back, with a sway."""
    phase = 2 * np.pi * t / 2.0
    pose = Pose(len(t))
    lower_arms(pose, 0.15 - 1.15 * np.sin(phase), len(t))
    pose.rotate(SPINE1, (0.0, 0.0, 1.0), 0.08 * np.sin(phase / 2))
    transl = np.stack([np.zeros_like(t), np.full_like(t, PELVIS_HEIGHT), np.full_like(t, SUBJECT_DEPTH)], axis=1)
    return camera_orient(np.zeros(len(t))), pose.body_pose(), transl


def _turn(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standing with arms half down, turning on the spot once every 5 seconds."""
    pose = Pose(len(t))
    lower_arms(pose, 0.7, len(t))
    transl = np.stack([np.zeros_like(t), np.full_like(t, PELVIS_HEIGHT), np.full_like(t, SUBJECT_DEPTH)], axis=1)
    return camera_orient(2 * np.pi * t / 5.0), pose.body_pose(), transl


DEMO_MOTIONS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
    "walk": _walk,
    "arm_swings": _arm_swings,
    "turn": _turn,
}


def demo_intrinsics(image_size: tuple[int, int] = DEMO_IMAGE_SIZE) -> np.ndarray:
    height, width = image_size
    scale = height / DEMO_IMAGE_SIZE[0]
    return np.array([[FOCAL * scale, 0, (width - 1) / 2], [0, FOCAL * scale, (height - 1) / 2], [0, 0, 1]])


def make_demo_motion(name: str, num_frames: int = 161, fps: float = DEMO_FPS) -> Motion:
    """One of `DEMO_MOTIONS` as a validated motion of `num_frames` frames."""
    if name not in DEMO_MOTIONS:
        raise ValueError(f"unknown demo motion '{name}'; choose from {sorted(DEMO_MOTIONS)}")
    t = np.arange(num_frames) / fps
    global_orient, body_pose, transl = DEMO_MOTIONS[name](t)
    return motion_from_arrays(
        {
            "global_orient": global_orient,
            "body_pose": body_pose,
            "betas": np.zeros(10),
            "transl": transl,
            "K": demo_intrinsics(),
            "image_size": np.array(DEMO_IMAGE_SIZE),
            "fps": fps,
        }
    )
