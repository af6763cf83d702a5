"""Requests that leave steps and guidance out get their backbone family's defaults (CogVideoX 50 / 6.0, Wan 50 /
5.0, from the adapter classes); a long video's run-time limit grows with its windows x steps."""

from __future__ import annotations

import io
import time

import numpy as np
import PIL.Image
import pytest
from helpers import ROOT

from models.backbones import CogVideoXAdapter, WanAdapter
from pipelines.demo.motions import make_demo_motion
from serve.config import ServeConfig
from serve.jobs import JobRecord, JobStore, new_job_id
from serve.requests import BackboneInfo, Upload, parse_submission
from serve.service import JobService

BACKBONES = {
    "tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"},
    "tiny-wan": {"config": "configs/backbones/tiny-wan.yaml", "device": "cpu"},
}


def serve_config(tmp_path, defaults: dict | None = None, **settings) -> ServeConfig:
    defaults = {"retarget": False, **(defaults or {})}  # no keypoint estimator here
    return ServeConfig.model_validate({"storage_uri": str(tmp_path / "jobs"), "backbones": BACKBONES,
                                       "auth": {"required": False}, "defaults": defaults, **settings})


def upload(frames: int, **fields) -> Upload:
    image = io.BytesIO()
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image, "PNG")
    motion = io.BytesIO()
    np.savez(motion, **make_demo_motion("walk", frames).to_arrays())
    return Upload(image.getvalue(), motion=motion.getvalue(), fields={"seed": 0, **fields})


def submit(config: ServeConfig, frames: int = 9, **fields):
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}
    return parse_submission(upload(frames, **fields), backbones, config).params


def test_the_family_defaults_live_on_the_adapters():
    assert (CogVideoXAdapter.default_num_inference_steps, CogVideoXAdapter.default_guidance_scale) == (50, 6.0)
    assert (WanAdapter.default_num_inference_steps, WanAdapter.default_guidance_scale) == (50, 5.0)


def test_a_request_without_steps_or_guidance_gets_its_familys(tmp_path):
    config = serve_config(tmp_path)
    assert (submit(config).steps, submit(config).guidance) == (50, 6.0)
    wan = submit(config, backbone="tiny-wan")
    assert (wan.steps, wan.guidance) == (50, 5.0)
    assert submit(config, backbone="tiny-wan", guidance=2.5, steps=3).guidance == 2.5
    overridden = serve_config(tmp_path, defaults={"steps": 4, "guidance": 2.0})  # a config's own, for every backbone
    assert (submit(overridden, backbone="tiny-wan").steps, submit(overridden, backbone="tiny-wan").guidance) == (4, 2.0)


def test_articulated_noise_defaults_to_what_the_backbone_was_trained_on(tmp_path):
    iid = tmp_path / "tiny-iid.yaml"
    iid.write_text((ROOT / "configs" / "backbones" / "tiny-cogvideox.yaml").read_text() + "articulated_noise: false\n")
    config = serve_config(tmp_path, backbones={**BACKBONES, "tiny-iid": {"config": str(iid), "device": "cpu"}})
    assert submit(config).articulated_noise is True  # a motion was given; the default backbone is trained on it
    assert submit(config, backbone="tiny-iid").articulated_noise is False
    assert submit(config, backbone="tiny-iid", articulated_noise=True).articulated_noise is True


def test_a_long_videos_time_limit_scales_with_windows_and_steps(tmp_path):
    config = serve_config(tmp_path, jobs={"max_run_s": 100, "run_s_per_window_step": 2})
    assert submit(config, num_frames=9, steps=10).max_run_s == 100  # one window: the floor
    # tiny-cogvideox: 9-frame windows (3 latent frames), overlap 1 -> 49 frames (13 latent) in 6 windows
    assert submit(config, frames=49, num_frames=49, steps=20).max_run_s == 6 * 20 * 2
    assert submit(config, frames=49, num_frames=49, steps=40).max_run_s == 6 * 40 * 2


@pytest.mark.parametrize("limit, failed", [(None, True), (1000.0, False)])
def test_the_reconciler_times_a_job_out_by_its_own_limit(tmp_path, limit, failed):
    config = serve_config(tmp_path, jobs={"max_run_s": 60})
    store = JobStore(config.storage_uri)
    params = submit(config).model_copy(update={"max_run_s": limit})
    now = time.time()
    record = JobRecord(id=new_job_id(), client="c", status="running", deployment="generation", params=params,
                       created_at=now - 120, updated_at=now, started_at=now - 120, heartbeat_at=now, owner="x")
    store.create(record, {})
    service = JobService(config, store, {}, None, owner="ingress-test")
    service._scan()
    after = store.record(record.id)
    assert (after.status == "failed") is failed
    if failed:
        assert after.error == "timed out: ran longer than 60 s"
