"""MediaPipe BlazePose on a real photo, in the Ray runtime_env the README documents (pip from PyPI: slow)."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import ray.cloudpickle
import ray.data
from helpers import VIDEOS_TINY

from pipelines.io.config import StageResources, load_config
from pipelines.io.video import write_video
from pipelines.preprocess.clips import decode_frames
from pipelines.preprocess.config import VideoJobConfig
from pipelines.preprocess.keypoint_estimators import MEDIAPIPE_RUNTIME_ENV
from pipelines.preprocess.stages import PoseStage
from ray_jobs.common import actor_stage

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# skimage's astronaut.png (512x512), its top-left 480x480: where BlazePose's full model (model_complexity 1) puts
# the nose and the left and right shoulders (COCO-17 indices 0, 5, 6), in pixels
EXPECTED = {0: (222, 127), 5: (306, 256), 6: (112, 239)}
TOLERANCE_PX = 25


class EstimateStage:
    """The pose stage's own keypoint estimator (a PoseStage built in the actor) on each video of the batch."""

    def __init__(self, config: VideoJobConfig) -> None:
        self.estimator = PoseStage(config).estimator

    def __call__(self, batch: pa.Table) -> pa.Table:
        videos = batch.column("video").to_pylist()
        return pa.table({"keypoints": [self.estimator(decode_frames(path, np.arange(5))).tolist() for path in videos]})


def test_blazepose_finds_the_astronaut_in_its_runtime_env(ray_local, tmp_path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skimage_data.astronaut()[:480, :480])
    video = tmp_path / "astronaut.mp4"
    write_video(video, np.repeat(photo[None], 5, axis=0), 12.0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    config = load_config(VideoJobConfig, VIDEOS_TINY, {"videos": tmp_path, "pose": {"keypoint_backend": "mediapipe"}})
    resources = StageResources(num_cpus=0.5, runtime_env=MEDIAPIPE_RUNTIME_ENV)
    data = ray.data.from_items([{"video": str(video)}])
    rows = actor_stage(data, EstimateStage, resources, (config,), "pose").take_all()
    keypoints = np.asarray(rows[0]["keypoints"])
    assert keypoints.shape == (5, 17, 3)
    for joint, expected in EXPECTED.items():
        distance = np.linalg.norm(keypoints[:, joint, :2] - np.array(expected), axis=-1)
        assert np.all(distance < TOLERANCE_PX), (joint, keypoints[:, joint].tolist())
        assert np.all(keypoints[:, joint, 2] > 0.5)


def _photo_intake(photo: np.ndarray, size: tuple[int, int]) -> tuple[dict, np.ndarray]:
    from pipelines.generation.photo import PhotoOptions, prepare_photo

    prepared = prepare_photo(photo, size, PhotoOptions(detector={"keypoint_backend": "mediapipe"}))
    return prepared.intake.model_dump(), prepared.keypoints


def test_photo_intake_crops_around_the_astronaut_found_by_blazepose(ray_local) -> None:
    """The photo intake with `detector: {keypoint_backend: mediapipe}`: a portrait cut of the astronaut fitted to a
    landscape output, the box placed by BlazePose's keypoints."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skimage_data.astronaut()[:, 60:360])  # 512 high, 300 wide
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray.remote(_photo_intake).options(num_cpus=0.5, runtime_env=MEDIAPIPE_RUNTIME_ENV)
    intake, keypoints = ray.get(task.remote(photo, (32, 48)))
    assert intake["method"] == "keypoints" and (intake["width"], intake["height"]) == (300, 200)
    nose_x, nose_y = EXPECTED[0][0] - 60, EXPECTED[0][1]
    assert intake["y0"] <= nose_y < intake["y0"] + intake["height"] and 0 <= nose_x < 300
    assert keypoints.shape == (17, 3) and 0 <= keypoints[0, 1] < 32 and keypoints[0, 2] > 0.5


# The same photo's nose and shoulders marked by hand (looking at the image, not at any estimator's output), pixels
HAND_MARKED = {0: (222, 126), 5: (312, 252), 6: (105, 245)}
RETARGET_TOLERANCE_PX = 30  # 6% of the photo: SMPL's joints are not BlazePose's, and one photo fixes no depth


def _retargeted_frame0(photo: np.ndarray, lead_in: int) -> np.ndarray:
    """The demo walk retargeted onto the photo's person (BlazePose keypoints, the single-image SMPL fit): its frame
    0's COCO-17 keypoints projected into the photo (output size = the photo's, `fit: centre`: the identity box)."""
    from models.body_model import load_body_model
    from models.keypoints import COCO17, motion_keypoints2d
    from pipelines.demo.motions import make_demo_motion
    from pipelines.generation.photo import PhotoOptions, prepare_photo
    from pipelines.generation.photo_retarget import retarget_to_photo

    options = PhotoOptions(fit="centre", detector={"keypoint_backend": "mediapipe"})
    prepared = prepare_photo(photo, photo.shape[:2], options, detect=True)
    body = load_body_model()
    motion, _ = retarget_to_photo(prepared, make_demo_motion("walk", 25), body, lead_in)
    return motion_keypoints2d(body, motion.slice(0, 1), COCO17)[0]


def test_a_motion_retargeted_onto_the_astronaut_starts_where_she_is(ray_local) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skimage_data.astronaut()[:480, :480])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray.remote(_retargeted_frame0).options(num_cpus=0.5, runtime_env=MEDIAPIPE_RUNTIME_ENV)
    keypoints = ray.get(task.remote(photo, 8))
    for joint, marked in HAND_MARKED.items():
        distance = float(np.linalg.norm(keypoints[joint] - np.array(marked)))
        assert distance < RETARGET_TOLERANCE_PX, (joint, keypoints[joint].tolist(), marked)
