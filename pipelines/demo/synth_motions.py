"""Procedural motions with varied parameters, for the synthetic people of `pipelines.demo.synth`.

Each motion kind maps time `t` [T] (seconds) and its parameters (drawn by `draw_motion_params` from a seeded
generator) to `(global_orient [T,3], body_pose [T,69], transl [T,3])` in the camera frame, built with the demo's
joint conventions (`pipelines.demo.motions`). The pelvis starts `depth` metres in front of the camera.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.demo.motions import (
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    PELVIS_HEIGHT,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    SPINE1,
    Pose,
    camera_orient,
    lower_arms,
)

NECK, SPINE2, L_ANKLE, R_ANKLE = 12, 6, 7, 8
Trajectory = tuple[np.ndarray, np.ndarray, np.ndarray]
# Local joint rotations the random motion may use, with their limits (radians) about (x, y, z) of the rest frame.
RANDOM_JOINT_LIMITS: dict[int, tuple[float, float, float]] = {
    L_SHOULDER: (1.0, 0.6, 1.2), R_SHOULDER: (1.0, 0.6, 1.2), L_ELBOW: (0.0, 1.6, 0.0), R_ELBOW: (0.0, 1.6, 0.0),
    L_HIP: (0.9, 0.2, 0.3), R_HIP: (0.9, 0.2, 0.3), L_KNEE: (1.3, 0.0, 0.0), R_KNEE: (1.3, 0.0, 0.0),
    SPINE1: (0.3, 0.4, 0.2), NECK: (0.3, 0.5, 0.2),
}


def _standing(t: np.ndarray, depth: float, x: float = 0.0, drop: np.ndarray | float = 0.0) -> np.ndarray:
    """Pelvis translation of a body standing (or dropping by `drop` metres) at image-x offset `x`."""
    height = np.broadcast_to(PELVIS_HEIGHT + np.asarray(drop, dtype=np.float64), t.shape)
    return np.stack([np.full_like(t, x), height, np.full_like(t, depth)], axis=1)


def _gait(t: np.ndarray, p: dict[str, Any], stride: float, knee: float, arm: float, elbow: float) -> Pose:
    """Legs and arms of a walk or run cycle of period `p["period"]`, starting at phase `p["phase"]`."""
    phase = 2 * np.pi * t / p["period"] + p["phase"]
    pose = Pose(len(t))
    swing = stride * np.sin(phase)
    pose.rotate(L_HIP, (1.0, 0.0, 0.0), -swing)
    pose.rotate(R_HIP, (1.0, 0.0, 0.0), swing)
    pose.rotate(L_KNEE, (1.0, 0.0, 0.0), knee * np.clip(np.sin(phase - 1.2), 0, None) + 0.05)
    pose.rotate(R_KNEE, (1.0, 0.0, 0.0), knee * np.clip(np.sin(phase + np.pi - 1.2), 0, None) + 0.05)
    lower_arms(pose, 1.3, len(t))
    pose.rotate(L_SHOULDER, (1.0, 0.0, 0.0), arm * np.sin(phase))
    pose.rotate(R_SHOULDER, (1.0, 0.0, 0.0), -arm * np.sin(phase))
    pose.rotate(L_ELBOW, (0.0, 1.0, 0.0), np.full(len(t), -elbow))
    pose.rotate(R_ELBOW, (0.0, 1.0, 0.0), np.full(len(t), elbow))
    return pose


def _travel(t: np.ndarray, p: dict[str, Any], bounce: np.ndarray | float = 0.0) -> Trajectory:
    """Profile travel across the image (`direction` +1: to image-right) at `speed` m/s from `start_x`."""
    x = p["start_x"] + p["direction"] * p["speed"] * t
    transl = _standing(t, p["depth"], drop=bounce)
    transl[:, 0] = x
    yaw = np.full(len(t), p["direction"] * np.pi / 2 + p["yaw"])
    return camera_orient(yaw), np.zeros((len(t), 69)), transl


def walk(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    orient, _, transl = _travel(t, p)
    return orient, _gait(t, p, 0.45, 0.55, 0.4, 0.3).body_pose(), transl


def run(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    phase = 2 * np.pi * t / p["period"] + p["phase"]
    orient, _, transl = _travel(t, p, bounce=-0.04 * np.abs(np.sin(phase)))
    pose = _gait(t, p, 0.7, 1.2, 0.8, 1.3)
    pose.rotate(SPINE1, (1.0, 0.0, 0.0), np.full(len(t), 0.15))  # lean forward
    return orient, pose.body_pose(), transl


def turn(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    pose = Pose(len(t))
    lower_arms(pose, p["arms"], len(t))
    yaw = p["yaw"] + p["direction"] * 2 * np.pi * t / p["period"]
    return camera_orient(yaw), pose.body_pose(), _standing(t, p["depth"], p["start_x"])


def arm_swings(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    phase = 2 * np.pi * t / p["period"] + p["phase"]
    pose = Pose(len(t))
    lower_arms(pose, 0.15 - 1.15 * np.sin(phase), len(t))
    pose.rotate(SPINE1, (0.0, 0.0, 1.0), 0.08 * np.sin(phase / 2))
    return camera_orient(np.full(len(t), p["yaw"])), pose.body_pose(), _standing(t, p["depth"], p["start_x"])


def jumping_jacks(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    open_ = 0.5 - 0.5 * np.cos(2 * np.pi * t / p["period"] + p["phase"])  # 0 closed .. 1 open
    pose = Pose(len(t))
    lower_arms(pose, 1.35 - 2.6 * open_, len(t))
    pose.rotate(L_HIP, (0.0, 0.0, 1.0), 0.35 * open_)
    pose.rotate(R_HIP, (0.0, 0.0, 1.0), -0.35 * open_)
    hop = -0.08 * np.sin(np.pi * open_)  # up while the limbs move
    return camera_orient(np.full(len(t), p["yaw"])), pose.body_pose(), _standing(t, p["depth"], p["start_x"], hop)


def squat(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    depth_ = 0.5 - 0.5 * np.cos(2 * np.pi * t / p["period"] + p["phase"])  # 0 standing .. 1 down
    pose = Pose(len(t))
    pose.rotate(L_HIP, (1.0, 0.0, 0.0), -1.2 * depth_)
    pose.rotate(R_HIP, (1.0, 0.0, 0.0), -1.2 * depth_)
    pose.rotate(L_KNEE, (1.0, 0.0, 0.0), 2.0 * depth_)
    pose.rotate(R_KNEE, (1.0, 0.0, 0.0), 2.0 * depth_)
    pose.rotate(L_ANKLE, (1.0, 0.0, 0.0), -0.8 * depth_)
    pose.rotate(R_ANKLE, (1.0, 0.0, 0.0), -0.8 * depth_)
    lower_arms(pose, 1.3, len(t))
    pose.rotate(L_SHOULDER, (1.0, 0.0, 0.0), -1.3 * depth_)  # arms forward for balance
    pose.rotate(R_SHOULDER, (1.0, 0.0, 0.0), -1.3 * depth_)
    drop = 0.45 * depth_  # y points down: the pelvis sinks
    return camera_orient(np.full(len(t), p["yaw"])), pose.body_pose(), _standing(t, p["depth"], p["start_x"], drop)


def wave(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    wag = np.sin(2 * np.pi * t / p["period"] + p["phase"])
    pose = Pose(len(t))
    lower_arms(pose, 1.3, len(t))
    arm, elbow, side = (R_SHOULDER, R_ELBOW, 1.0) if p["hand"] == "right" else (L_SHOULDER, L_ELBOW, -1.0)
    pose.rotate(arm, (0.0, 0.0, 1.0), np.full(len(t), -side * 1.9))  # raise that arm back up past horizontal
    pose.rotate(elbow, (0.0, 1.0, 0.0), side * (0.9 + 0.5 * wag))
    return camera_orient(np.full(len(t), p["yaw"])), pose.body_pose(), _standing(t, p["depth"], p["start_x"])


def random_motion(t: np.ndarray, p: dict[str, Any]) -> Trajectory:
    """Smooth random joint trajectories inside `RANDOM_JOINT_LIMITS`: per joint and axis, a sum of two sinusoids
    of random frequency and phase, scaled to a random fraction of the limit."""
    pose = Pose(len(t))
    lower_arms(pose, 1.0, len(t))
    for joint, axes in p["joints"]:
        for axis, (amplitude, frequency, phase) in enumerate(axes):
            angle = amplitude * np.sin(2 * np.pi * frequency * t + phase)
            limit = RANDOM_JOINT_LIMITS[joint][axis]
            pose.rotate(joint, tuple(float(i == axis) for i in range(3)), np.clip(angle, -limit, limit))
    return camera_orient(np.full(len(t), p["yaw"])), pose.body_pose(), _standing(t, p["depth"], p["start_x"])


SYNTH_MOTIONS: dict[str, Callable[[np.ndarray, dict[str, Any]], Trajectory]] = {
    "walk": walk, "run": run, "turn": turn, "arm_swings": arm_swings, "jumping_jacks": jumping_jacks,
    "squat": squat, "wave": wave, "random": random_motion,
}
# How a caption says what the person does.
ACTIONS = {
    "walk": "walking", "run": "running", "turn": "turning around", "arm_swings": "swinging both arms up and down",
    "jumping_jacks": "doing jumping jacks", "squat": "doing squats", "wave": "waving", "random": "moving freely",
}


def draw_motion_params(kind: str, rng: np.random.Generator, duration: float, depth: float) -> dict[str, Any]:
    """Parameters of one motion of `kind` lasting `duration` seconds, `depth` metres from the camera, that keep the
    body inside a 3:2 frame (travelling motions start on the side they walk away from)."""
    p: dict[str, Any] = {"depth": depth, "phase": rng.uniform(0, 2 * np.pi), "yaw": rng.uniform(-0.5, 0.5),
                         "start_x": rng.uniform(-0.25, 0.25) * depth / 3.3}
    if kind in ("walk", "run"):
        p["direction"] = float(rng.choice([-1.0, 1.0]))
        p["speed"] = rng.uniform(0.35, 0.6) if kind == "walk" else rng.uniform(0.9, 1.4)
        p["period"] = rng.uniform(1.0, 1.25) if kind == "walk" else rng.uniform(0.6, 0.8)
        p["yaw"] = rng.uniform(-0.3, 0.3)
        half_width = 0.75 * depth / 3.3  # the half-width the camera sees at that depth, less a margin
        travel = min(p["speed"] * duration, 1.8 * half_width)
        p["speed"] = travel / duration
        p["start_x"] = -p["direction"] * travel / 2
    elif kind == "turn":
        p.update(direction=float(rng.choice([-1.0, 1.0])), period=rng.uniform(3.0, 6.0), arms=rng.uniform(0.3, 1.3))
    elif kind == "arm_swings":
        p["period"] = rng.uniform(1.5, 2.5)
    elif kind == "jumping_jacks":
        p["period"] = rng.uniform(0.8, 1.2)
    elif kind == "squat":
        p["period"] = rng.uniform(1.6, 2.6)
    elif kind == "wave":
        p.update(period=rng.uniform(0.4, 0.8), hand=str(rng.choice(["left", "right"])))
    elif kind == "random":
        joints = rng.choice(sorted(RANDOM_JOINT_LIMITS), size=5, replace=False)
        p["joints"] = [
            (int(joint), [(rng.uniform(0.3, 1.0) * limit, rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi))
                          for limit in RANDOM_JOINT_LIMITS[int(joint)]])
            for joint in joints
        ]
    else:
        raise ValueError(f"unknown motion kind {kind!r}; choose from {sorted(SYNTH_MOTIONS)}")
    return p
