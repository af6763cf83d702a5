"""Where a clip's motion comes from: its video's sidecars, or a 2D keypoint estimator and an SMPL fit.

`clip_motion` tries, in order:
1. a motion sidecar: a motion file (`.npz` or `.json` in the motion-file format, DESIGN.md), or EasyMocap's
   SMPL output (`*.easymocap.json` or a `*.easymocap/` folder, see `load_easymocap`);
2. a keypoints sidecar (`.npy`, `.npz` or `.json`, see `load_keypoints_sidecar`), fitted with
   `pipelines.preprocess.smpl_fit.fit_smpl`;
3. a keypoint estimator (`estimator=`, or the `keypoint_backend` option: DWPose with `dwpose_model`, or MediaPipe; see
   pipelines/preprocess/keypoint_estimators.py) on the clip's decoded frames, then the fit.
The sidecar readers are in `pipelines.preprocess.pose_files`. Sidecars describe the whole video (one entry per video frame); the clip picks its frames by index. The motion
comes back in the video's pixels (`image_size`) at the clip's `fps`. Every failure is a `PoseSourceError`
(a ValueError) naming the file and what is missing or mismatched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.body_model import BodyModel, load_body_model
from models.motion import Motion
from models.paths import ProjectPath
from pipelines.io.config import validate_config
from pipelines.preprocess.clips import decode_frames
from pipelines.preprocess.keypoint_estimators import (
    COCO17_JOINTS,
    DWPOSE_MODEL_NAME,
    MEDIAPIPE_LANDMARK_MODELS,
    dwpose_estimator,
    mediapipe_estimator,
)
from pipelines.preprocess.pose_files import (
    PoseSourceError,
    check_frames,
    easymocap_to_motion,
    guess_intrinsics,
    is_easymocap,
    keypoints_at_image_size,
    load_easymocap,
    load_keypoints_sidecar,
    motion_file_motion,
)
from pipelines.preprocess.smpl_fit import FitConfig, fit_smpl


class PoseOptions(BaseModel):
    """Options of `clip_motion` (the preprocessing config's `pose:` mapping)."""

    model_config = ConfigDict(extra="forbid")

    fit: FitConfig = Field(default_factory=FitConfig)
    device: str = Field("cpu", description="torch device of the SMPL fit")
    keypoint_backend: Literal["dwpose", "mediapipe"] = Field(
        "dwpose", description="keypoint estimator for clips without sidecars (pipelines/preprocess/keypoint_estimators.py)"
    )
    dwpose_model: ProjectPath | None = Field(None, description=f"DWPose ONNX file ({DWPOSE_MODEL_NAME}) for the dwpose estimator")
    model_complexity: Literal[0, 1, 2] = Field(
        1,
        description="MediaPipe's BlazePose landmark model: 1 (full) ships in the wheel; 0 (lite) and 2 (heavy) need "
        "mediapipe_model",
    )
    mediapipe_model: ProjectPath | None = Field(
        None,
        description=f"local {MEDIAPIPE_LANDMARK_MODELS[0]} or {MEDIAPIPE_LANDMARK_MODELS[2]} for model_complexity 0 "
        "or 2 (never downloaded)",
    )
    person_id: int | None = Field(None, description="EasyMocap person id; None: the first person of the first frame")
    easymocap_camera: str | None = Field(None, description="camera name in intri.yml/extri.yml; None: the first")

    @model_validator(mode="after")
    def _mediapipe_model_matches(self) -> PoseOptions:
        needs_file = self.model_complexity != 1
        if needs_file and self.keypoint_backend == "mediapipe" and self.mediapipe_model is None:
            name = MEDIAPIPE_LANDMARK_MODELS[self.model_complexity]
            raise ValueError(
                f"model_complexity {self.model_complexity} needs mediapipe_model: a local {name} (not in the mediapipe "
                "wheel, and never downloaded); model_complexity 1 uses the wheel's own model"
            )
        if not needs_file and self.mediapipe_model is not None:
            raise ValueError(
                "mediapipe_model is for model_complexity 0 or 2; model_complexity 1 uses the wheel's own model"
            )
        return self


class KeypointEstimator(Protocol):
    """A 2D body keypoint estimator: uint8 RGB frames [T,H,W,3] -> COCO-17 keypoints [T,17,3] (x, y, confidence)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def clip_motion(
    video: str | Path,
    frame_indices: Sequence[int] | np.ndarray,
    video_frames: int,
    image_size: tuple[int, int],
    fps: float,
    motion: str | Path | None = None,
    keypoints: str | Path | None = None,
    body: BodyModel | None = None,
    estimator: KeypointEstimator | None = None,
    **options: Any,
) -> Motion:
    """The motion of the clip made of `frame_indices` of `video` (`video_frames` frames of `image_size` (H, W)).

    `motion` and `keypoints` are the video's sidecar paths (or None); `body` is the body model the fit and the
    EasyMocap conversion use (default: the generated template); `options` are `PoseOptions` fields (a
    `pipelines.io.config.ConfigError` names a bad one).
    """
    opts = validate_config(PoseOptions, options, source="pose options")
    indices = np.asarray(frame_indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= video_frames:
        raise PoseSourceError(f"frame_indices must be a non-empty list of frames in [0, {video_frames}), got {indices.tolist()}")
    image_size = (int(image_size[0]), int(image_size[1]))
    if motion is not None:
        path = Path(motion)
        if is_easymocap(path):
            params, camera = load_easymocap(path, opts.easymocap_camera, opts.person_id)
            check_frames(len(params["Rh"]), video_frames, f"EasyMocap output {path}")
            picked = {key: value[indices] for key, value in params.items()}
            return easymocap_to_motion(picked, camera, body or load_body_model(), image_size, fps)
        return motion_file_motion(path, indices, video_frames, image_size, fps)
    if keypoints is not None:
        sidecar = load_keypoints_sidecar(keypoints)
        check_frames(len(sidecar.keypoints2d), video_frames, f"keypoints sidecar {keypoints}")
        points, K = keypoints_at_image_size(sidecar, indices, image_size, Path(keypoints))
        return _fit(points, K, image_size, fps, sidecar.layout, body, opts)
    points = _estimate(estimator or _configured_estimator(opts, video), video, indices, image_size)
    return _fit(points, guess_intrinsics(image_size), image_size, fps, "coco17", body, opts)


def _estimate(estimator: KeypointEstimator, video: str | Path, indices: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """COCO-17 keypoints [T,17,3] of the clip's decoded frames."""
    frames = decode_frames(video, indices)
    if frames.shape[1:3] != image_size:
        raise PoseSourceError(f"video {video} decodes to {list(frames.shape[1:3])} frames, expected {list(image_size)}")
    points = np.asarray(estimator(frames), dtype=np.float64)
    expected = [len(indices), COCO17_JOINTS, 3]
    if list(points.shape) != expected:
        raise PoseSourceError(f"keypoint estimator returned shape {list(points.shape)}, expected {expected}")
    return points


def keypoint_estimator(opts: PoseOptions) -> KeypointEstimator | None:
    """The estimator the options configure (one per process), or None: the dwpose backend without a model file.

    Building it imports the backend and checks its model files, so a stage can build it once at start and fail there.
    """
    if opts.keypoint_backend == "mediapipe":
        return mediapipe_estimator(opts.model_complexity, opts.mediapipe_model)
    return None if opts.dwpose_model is None else dwpose_estimator(opts.dwpose_model)


def _configured_estimator(opts: PoseOptions, video: str | Path) -> KeypointEstimator:
    estimator = keypoint_estimator(opts)
    if estimator is None:
        raise PoseSourceError(
            f"no pose source for {video}: no motion sidecar, no keypoints sidecar, and no keypoint estimator "
            f"(set the pose option dwpose_model to DWPose's {DWPOSE_MODEL_NAME}, or keypoint_backend: mediapipe)"
        )
    return estimator


def _fit(
    keypoints: np.ndarray,
    K: np.ndarray,
    image_size: tuple[int, int],
    fps: float,
    layout: str,
    body: BodyModel | None,
    opts: PoseOptions,
) -> Motion:
    body = body or load_body_model()
    return fit_smpl(keypoints, K, image_size, body.to(opts.device), layout, opts.fit, opts.device, fps=fps).motion
