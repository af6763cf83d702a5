"""What the ingress needs to retarget requests' motions onto their photos' people, built once at start. The
retargeting itself is the code `humanim generate` and the render job run
(`pipelines.generation.photo_retarget.retarget_to_photo`), called by `serve.requests.parse_submission`.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.body_model import BodyModel, load_body_model
from pipelines.generation.photo import KeypointEstimator
from pipelines.generation.photo_retarget import job_estimator
from serve.config import ServeConfig

HOW_TO_SKIP = ("or set defaults.retarget: false in the serve config to drive requests' motions as they are; "
               "photo.detector picks the estimator, ingress.ray_actor_options.runtime_env installs it")


@dataclass(frozen=True)
class Retargeter:
    """The ingress's keypoint estimator (it also places `fit: crop` boxes) and the SMPL body the photo is fitted
    with (the generation replicas' default body)."""

    estimator: KeypointEstimator
    body: BodyModel


def load_retargeter(config: ServeConfig) -> Retargeter | None:
    """The config's estimator (`photo.detector`, else MediaPipe when `defaults.retarget`; an error saying how to get
    one, or how to turn retargeting off, when it cannot be built) with the body model; None without an estimator."""
    estimator = job_estimator(config.photo, config.defaults.retarget, HOW_TO_SKIP)
    return None if estimator is None else Retargeter(estimator, load_body_model())
