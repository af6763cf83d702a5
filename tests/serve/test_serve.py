"""The Serve HTTP API on the session's local Ray with the tiny CogVideoX backbone (32x32, 9-frame window),
plus the job logic (reconciler, auth, storage) without Ray."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import PIL.Image
import pytest
import requests

from pipelines.demo.motions import make_demo_motion
from pipelines.io.video import write_video
from serve.auth import ApiKeys, AuthError
from serve.config import AuthSettings, ServeConfig
from serve.jobs import TERMINAL, GenerationParams, JobRecord, JobStore, Storage, check_job_id, new_job_id
from serve.service import JobService

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "humanim-test"
MOTION_FRAMES = 33


def _args(storage: str) -> dict:
    return {
        "storage_uri": storage,
        "backbones": {"tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"}},
        "noise_options": {"texture_size": 32},
        "defaults": {"steps": 2, "guidance": 1.0, "retarget": False},  # no keypoint estimator here
        "auth": {"required": True, "api_keys": [KEY], "api_keys_env": None},
        "limits": {"max_body_bytes": 1_000_000, "max_image_pixels": 256 * 256, "max_frames": 17, "max_steps": 1000},
        "jobs": {"heartbeat_interval_s": 0.2, "lease_timeout_s": 3, "reconcile_interval_s": 0.5, "max_attempts": 2},
        "ingress": {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.05}},
        "generation": {
            "num_replicas": 2, "max_ongoing_requests": 8, "batch": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02},
            "ray_actor_options": {"num_cpus": 0.2},
        },
        "long_video": {"num_replicas": 1, "max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": 0.2}},
    }


def _png(size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


MOTION = make_demo_motion("walk", MOTION_FRAMES).to_arrays()
IMAGE = _png()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api(ray_local, tmp_path_factory):
    """The app on a real local Serve (batching does not run in _local_testing_mode): (base URL, storage)."""
    from ray import serve

    from serve.app import build_app

    storage = str(tmp_path_factory.mktemp("serve-jobs"))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(_args(storage)), name=APP, route_prefix="/")
    yield f"http://127.0.0.1:{port}", storage
    serve.delete(APP)
    serve.shutdown()


def submit(base: str, data: dict | None = None, files: dict | None = None, headers: dict | None = None,
           motion: bytes | None = b"") -> requests.Response:
    """POST a job; `motion`: the .npz bytes (b"": the walk, unless the data has motion_json; None: no motion)."""
    files = {"image": ("person.png", IMAGE, "image/png"), **(files or {})}
    if motion is not None and "motion_json" not in (data or {}):
        files["motion"] = ("walk.npz", motion or _npz(MOTION))
    headers = AUTH if headers is None else headers
    return requests.post(f"{base}/v1/videos", data=data or {}, files=files, headers=headers, timeout=30)


def wait(base: str, job_id: str, until=None, timeout: float = 60) -> dict:
    """The job once it has ended (long polls), or once `until(job)` holds (polls)."""
    deadline = time.monotonic() + timeout
    while True:
        params = {"wait_s": 0 if until else 1}
        response = requests.get(f"{base}/v1/videos/{job_id}", params=params, headers=AUTH, timeout=10)
        if response.status_code == 503:  # the replica holds its share of long polls
            time.sleep(float(response.headers["Retry-After"]))
            continue
        job = response.json()
        if until(job) if until else job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        if until:
            time.sleep(0.05)


def _frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return sum(1 for _ in container.decode(video=0))


def _pose_video(tmp_path) -> bytes:
    path = tmp_path / "pose.mp4"
    write_video(path, np.random.default_rng(1).integers(0, 256, (17, 32, 32, 3), dtype=np.uint8), 16)
    return path.read_bytes()


@pytest.mark.ray
@pytest.mark.parametrize("frames, deployment", [(9, "generation"), (17, "long_video")])
def test_submit_poll_and_fetch_an_mp4(api, tmp_path, frames, deployment):
    """The short video driven by a motion sent as JSON, the long one by a pose video alone."""
    base, storage = api
    data = {"num_frames": frames, "prompt": "a person walking", "seed": 1}
    if deployment == "generation":
        response = submit(base, {**data, "motion_json": json.dumps({k: v.tolist() for k, v in MOTION.items()})})
    else:
        response = submit(base, data, files={"pose_video": ("pose.mp4", _pose_video(tmp_path), "video/mp4")},
                          motion=None)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"].endswith(f"/v1/videos/{job['id']}")
    assert JobStore(storage).record(job["id"]).deployment == deployment  # 17 > the tiny window of 9 frames
    done = wait(base, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"] > 0 and done["generation_s"] > 0
    video = requests.get(f"{base}/v1/videos/{job['id']}/content", headers=AUTH, timeout=10)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert _frames(video.content) == frames


@pytest.mark.ray
def test_api_keys_are_required(api):
    base, _ = api
    assert submit(base, headers={}).status_code == 401
    wrong = submit(base, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid API key"
    assert requests.get(f"{base}/v1/videos/{new_job_id()}", timeout=10).status_code == 401
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{base}/docs", timeout=10).status_code == 200
    assert "/v1/videos" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]


@pytest.mark.ray
def test_bad_inputs_get_a_clear_4xx(api):
    base, _ = api
    nan = {**MOTION, "transl": MOTION["transl"].copy()}
    nan["transl"][2, 1] = np.nan
    cases = [
        (submit(base, files={"image": ("x.png", b"not an image at all", "image/png")}), 422, "image: not a"),
        (submit(base, motion=pickle.dumps({"global_orient": np.zeros((9, 3))})), 422, "looks like a pickle"),
        (submit(base, motion=_npz(nan)), 422, "'transl' contains NaN"),
        (submit(base, {"motion_json": "{\"global_orient\": [[NaN, 0, 0]]}"}, files={}), 422, "contains NaN"),
        (submit(base, {"num_frames": 33}), 422, "at most 17 are accepted"),
        (submit(base, {"num_frames": 11}), 422, "num_frames: CogVideoX 1.0 needs"),
        (submit(base, {"backbone": "../../etc"}), 422, "backbone: '../../etc' is not served"),
        (submit(base, files={"image": ("big.png", _png((300, 300)), "image/png")}), 413, "at most 65536"),
        (submit(base, files={"pose_video": ("pose.mp4", b"\0" * 1_100_000)}), 413, "at most 1000000 are accepted"),
    ]
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    chunked = requests.post(f"{base}/v1/videos", data=iter([part, b"\0" * 600_000, b"\0" * 600_000, b"\r\n--x--\r\n"]),
                            timeout=30,
                            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"})
    cases.append((chunked, 413, "more than 1000000 bytes"))
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"], response.text
    assert requests.get(f"{base}/v1/videos/not-a-job-id", headers=AUTH, timeout=10).status_code == 422
    assert requests.get(f"{base}/v1/videos/{new_job_id()}", headers=AUTH, timeout=10).status_code == 404


@pytest.mark.ray
def test_concurrent_submissions_all_end(api):
    base, _ = api

    def one(index: int) -> dict:
        response = submit(base, {"num_frames": 9, "seed": index, "articulated_noise": "false"})
        assert response.status_code == 202, response.text
        return wait(base, response.json()["id"], timeout=80)

    with ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(one, range(20)))
    assert len({job["id"] for job in jobs}) == 20
    for job in jobs:
        assert job["status"] == "succeeded" or job["status"] == "failed" and job["error"], job


@pytest.mark.ray
def test_idempotency_key_returns_the_same_job(api):
    base, _ = api
    first = submit(base, {"seed": 7}, headers={**AUTH, "Idempotency-Key": "order-42"})
    again = submit(base, {"seed": 7}, headers={**AUTH, "Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = submit(base, {"seed": 8}, headers={**AUTH, "Idempotency-Key": "order-42"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    wait(base, first.json()["id"])


@pytest.mark.ray
def test_delete_cancels_a_running_job(api):
    base, _ = api
    job = submit(base, {"num_frames": 9, "steps": 1000, "articulated_noise": "false"}).json()
    wait(base, job["id"], until=lambda job: job["progress"]["done"] > 0)
    response = requests.delete(f"{base}/v1/videos/{job['id']}", headers=AUTH, timeout=10)
    assert response.status_code == 202
    done = wait(base, job["id"])
    assert done["status"] == "cancelled" and done["progress"]["done"] < 1000
    content = requests.get(f"{base}/v1/videos/{job['id']}/content", headers=AUTH, timeout=10)
    assert content.status_code == 409 and "cancelled" in content.json()["detail"]
    assert requests.delete(f"{base}/v1/videos/{job['id']}", headers=AUTH, timeout=10).status_code == 202


@pytest.mark.ray
def test_a_killed_generation_replica_does_not_lose_the_job(api):
    import ray

    base, storage = api
    job = submit(base, {"num_frames": 9, "steps": 300, "articulated_noise": "false"}).json()
    wait(base, job["id"], until=lambda job: job["progress"]["done"] > 0)
    worker = JobStore(storage).record(job["id"]).worker
    ray.kill(ray.get_actor(worker, namespace="serve"), no_restart=True)
    done = wait(base, job["id"], timeout=80)
    retried = done["status"] == "succeeded" and done["attempt"] == 2
    assert retried or done["status"] == "failed" and "replica lost" in done["error"], done


# The job logic without Ray


def _config(tmp_path) -> ServeConfig:
    return ServeConfig.model_validate(_args(str(tmp_path)))


def _record(**changes) -> JobRecord:
    params = GenerationParams(
        backbone="tiny-cogvideox", prompt="", negative_prompt="", num_frames=9, resolution=(32, 32), steps=2,
        guidance=1.0, gamma=0.5, seed=0, articulated_noise=False, inputs=["image.npy"],
    )
    now = time.time()
    fields = {"id": new_job_id(), "client": "c", "status": "queued", "deployment": "generation", "params": params,
              "created_at": now, "updated_at": now, "owner": "ingress-old"}
    return JobRecord(**{**fields, **changes})


def test_reconciler_retries_then_fails_a_silent_job_and_adopts_orphans(tmp_path):
    store = JobStore(str(tmp_path))
    dispatched = []

    async def dispatch(record: JobRecord) -> None:
        dispatched.append((record.id, record.attempt))

    async def scenario() -> None:
        service = JobService(_config(tmp_path), store, {}, dispatch, owner="ingress-new")
        stale = time.time() - 10
        silent = _record(status="running", started_at=stale, heartbeat_at=stale)
        orphan = _record()  # its ingress never beat: gone
        for record in (silent, orphan):
            store.create(record, {})
        await service.reconcile()
        await asyncio.sleep(0)
        assert sorted(dispatched) == sorted([(silent.id, 2), (orphan.id, 1)])
        assert store.record(orphan.id).owner == "ingress-new"
        store.save(store.record(silent.id).moved(status="running", heartbeat_at=stale))
        await service.reconcile()
        failed = store.record(silent.id)
        assert failed.status == "failed" and "generation replica lost" in failed.error
        assert silent.id not in store.active() and orphan.id in store.active()

    asyncio.run(scenario())


def test_api_keys_and_job_ids(tmp_path):
    with pytest.raises(ValueError, match="auth: required but no API key"):
        ApiKeys(AuthSettings(api_keys_env="HUMANIM_TEST_KEYS"), environ={})
    keys = ApiKeys(AuthSettings(api_keys_env="HUMANIM_TEST_KEYS"), environ={"HUMANIM_TEST_KEYS": "a-key, b-key"})
    assert keys.client("Bearer b-key").startswith("key-") and keys.client("Bearer a-key") != keys.client("Bearer b-key")
    for header in (None, "b-key", "Basic b-key", "Bearer c-key"):
        with pytest.raises(AuthError):
            keys.client(header)
    assert ApiKeys(AuthSettings(required=False), environ={}).client(None) == "anonymous"
    for bad in ("../" + "0" * 29, "0" * 31, "A" * 32):
        with pytest.raises(ValueError, match="job id"):
            check_job_id(bad)
    storage = Storage(str(tmp_path))
    storage.write_json("a/b.json", {"x": 1})
    assert storage.read_json("a/b.json") == {"x": 1} and storage.names("a") == ["b.json"]
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": 1}
    assert len(list((tmp_path / "a").iterdir())) == 1  # no temp file left
