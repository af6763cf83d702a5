"""The HTTP API in this process (FastAPI's TestClient over a JobService whose dispatch only records the job): what
a hostile client sends is refused with the field named, before any generation replica sees it."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient
from helpers import CONFIGS, hostile_files

from pipelines.demo.motions import make_demo_motion
from serve.api import build_api
from serve.auth import ApiKeys
from serve.config import ServeConfig
from serve.jobs import GenerationParams, JobRecord, JobStore, Storage, new_job_id
from serve.requests import BackboneInfo, Upload
from serve.service import JobService
from serve.worker import JobStopped, Lease

MOTION = {key: value.tolist() for key, value in make_demo_motion("walk", 9).to_arrays().items()}


def png(size: tuple[int, int] = (32, 32)) -> bytes:
    return encoded(np.zeros((*size, 3), dtype=np.uint8), "PNG")


def encoded(pixels: np.ndarray, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, kind, **options)
    return buffer.getvalue()


@pytest.fixture()
def service(tmp_path) -> JobService:
    """An ingress's job service on tmp_path whose dispatch does nothing (no generation replica)."""
    config = ServeConfig.model_validate({
        "storage_uri": str(tmp_path / "jobs"),
        "backbones": {"tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"}},
        "auth": {"required": False},
        "limits": {"max_body_bytes": 1_000_000, "max_text_field_bytes": 100_000, "max_image_pixels": 256 * 256},
        "defaults": {"retarget": False},  # no keypoint estimator here (tests/serve/test_api_retarget.py has one)
    })
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}
    return JobService(config, JobStore(config.storage_uri), backbones, dispatch_nothing, owner="ingress-test")


async def dispatch_nothing(record: JobRecord) -> None:
    pass


@pytest.fixture()
def landscape_service(tmp_path) -> JobService:
    """The same service with the tiny CogVideoX at a landscape 32x48 as its backbone."""
    backbone = tmp_path / "tiny-landscape.yaml"
    backbone.write_text(CONFIGS.joinpath("tiny-cogvideox.yaml").read_text().replace("resolution: [32, 32]",
                                                                                    "resolution: [32, 48]"))
    config = ServeConfig.model_validate({
        "storage_uri": str(tmp_path / "jobs"), "auth": {"required": False},
        "backbones": {"tiny-landscape": {"config": str(backbone), "device": "cpu"}}, "defaults": {"retarget": False},
    })
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}
    return JobService(config, JobStore(config.storage_uri), backbones, dispatch_nothing, owner="ingress-test")


@pytest.fixture()
def client(service):
    with TestClient(build_api(service, ApiKeys(service.config.auth), service.config.limits)) as test_client:
        yield test_client


def post(client: TestClient, data: dict | None = None, files: dict | None = None):
    files = {"image": ("person.png", png(), "image/png"), **(files or {})}
    data = {"motion_json": json.dumps(MOTION), **(data or {})}
    return client.post("/v1/videos", data=data, files=files)


def refused(response, status: int, *texts: str) -> None:
    assert response.status_code == status, response.text
    for text in texts:
        assert text in response.json()["detail"], response.text


def test_a_good_request_is_accepted(client):
    assert post(client, {"num_frames": 9}).status_code == 202


@pytest.mark.parametrize("name", ["ffconcat", "hls", "file_url"])
def test_pose_videos_that_name_other_files_are_refused(client, tmp_path, name):
    upload = hostile_files(tmp_path)[name]
    refused(post(client, files={"pose_video": ("pose.mp4", upload, "video/mp4")}), 422, "pose_video: ")
    assert "No such file" not in post(client, files={"pose_video": ("pose.mp4", upload)}).json()["detail"]


def test_deeply_nested_or_float32_overflowing_motion_json_is_refused(client):
    refused(post(client, {"motion_json": "[" * 1000 + "]" * 1000}), 422, "motion_json: ", "nests 1000 levels")
    refused(post(client, {"motion_json": '{"a": "' + "[" * 1000 + '"}'}), 422, "motion_json: ", "missing key")
    big = {**MOTION, "transl": [[0.0, 1e39, 2.0]] * 9}
    refused(post(client, {"motion_json": json.dumps(big)}), 422, "motion_json: ", "'transl'", "float32")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_unknown_oversized_and_bomb_fields_are_named(client):
    refused(post(client, {"numframes": 9}), 422, "numframes: not a field", "num_frames")
    refused(post(client, {"stepz": 3}), 422, "stepz: not a field")
    refused(post(client, {"prompt": "x" * 100_001}), 413, "prompt: 100001 bytes; at most 100000")
    refused(post(client, {"motion_json": " " * 100_001}), 413, "motion_json: 100001 bytes")
    bomb = ("bomb.png", png_header(30_000, 30_000), "image/png")
    refused(post(client, files={"image": bomb}), 413, "image: 900000000 pixels; at most 65536")
    refused(post(client, {"motion_json": json.dumps(MOTION)[:-1] + ', "x": ' + "1" * 5000 + "}"}), 422,
            "motion_json: motion JSON is malformed", "4300 digits")


def test_phone_rgba_and_portrait_photos_are_fitted_and_the_box_is_in_the_job(landscape_service):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored on its side: 90 wide, 60 high; upright 60 wide, 90 high
    phone = encoded(np.full((60, 90, 3), 90, np.uint8), "JPEG", exif=exif)
    cut_out = np.zeros((90, 60, 4), np.uint8)
    cut_out[10:50, 30:50] = 255
    portrait = encoded(np.full((90, 60, 3), 200, np.uint8), "PNG")
    uploads = [
        ({}, ("phone.jpg", phone, "image/jpeg"), ("centre", 0, 25, 60, 40)),
        ({"background": "0,0,0"}, ("cut-out.png", encoded(cut_out, "PNG"), "image/png"), ("alpha", 0, 10, 60, 40)),
        ({"fit": "pad", "background": "#0000ff"}, ("portrait.png", portrait, "image/png"), ("pad", -37, 0, 135, 90)),
    ]
    with TestClient(build_api(landscape_service, ApiKeys(landscape_service.config.auth),
                              landscape_service.config.limits)) as client:
        for data, image, box in uploads:
            response = post(client, {"num_frames": 9, **data}, {"image": image})
            assert response.status_code == 202, response.text
            photo = response.json()["params"]["photo"]
            assert (photo["method"], photo["x0"], photo["y0"], photo["width"], photo["height"]) == box
            assert client.get(response.headers["Location"]).json()["params"]["photo"] == photo
            pixels = np.load(io.BytesIO(landscape_service.store.input(response.json()["id"], "image.npy")))
            assert pixels.shape == (32, 48, 3)
        assert (photo["fit"], tuple(pixels[16, 0])) == ("pad", (0, 0, 255))
        refused(post(client, {"fit": "stretch"}), 422, "fit: ")
        refused(post(client, {"background": "red"}), 422, "background: ")
        refused(post(client, files={"image": ("clear.png", encoded(np.zeros((8, 8, 4), np.uint8), "PNG"))}), 422,
                "image: the photo is fully transparent", "fit: pad")


def test_a_cancel_stops_the_generation_at_the_next_steps_not_the_next_heartbeat(tmp_path):
    store = JobStore(str(tmp_path))
    record = JobRecord(
        id=new_job_id(), client="c", status="running", deployment="generation", created_at=0.0, updated_at=0.0,
        owner="ingress-test", params=GenerationParams(
            backbone="tiny-cogvideox", prompt="", negative_prompt="", num_frames=9, resolution=(32, 32), steps=1000,
            guidance=1.0, gamma=0.5, seed=0, articulated_noise=False, inputs=[],
        ),
    )
    store.create(record, {})
    with Lease(store, record, interval_s=60.0) as lease:
        lease.step(1, 1000)
        store.request_cancel(record.id)
        deadline = time.monotonic() + 5
        with pytest.raises(JobStopped) as stopped:
            for done in range(2, 1000):
                assert time.monotonic() < deadline, "the cancel was not seen within 5 s of steps"
                lease.step(done, 1000)
                time.sleep(0.01)  # a denoising step
    assert stopped.value.cancelled and done < 100


def test_concurrent_posts_with_one_idempotency_key_make_one_job_across_ingresses(service):
    """Ten requests with one key, each through its own ingress (JobService) on the same storage, at once."""
    motion = make_demo_motion("walk", 9).to_arrays()
    buffer = io.BytesIO()
    np.savez(buffer, **motion)
    upload = Upload(png(), motion=buffer.getvalue(), fields={"seed": 1})
    barrier = threading.Barrier(10)

    def one_ingress(index: int) -> tuple[str, bool]:
        ingress = JobService(service.config, JobStore(service.config.storage_uri), service.backbones,
                             dispatch_nothing, owner=f"ingress-{index}")

        async def post() -> tuple[str, bool]:
            barrier.wait()
            record, replayed = await ingress.submit("client", upload, "order-42")
            return record.id, replayed

        return asyncio.run(post())

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one_ingress, range(10)))
    assert len({job_id for job_id, _ in answers}) == 1, answers
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * 9
    assert len(service.store.active()) == 1


def test_exclusive_creation_has_one_winner(tmp_path):
    storage = Storage(str(tmp_path))
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda index: storage.create_exclusive("claim.json", str(index).encode()), range(8)))
    assert won.count(True) == 1 and storage.read("claim.json") == str(won.index(True)).encode()
    assert storage.names("") == ["claim.json"]  # no temporary file left


def test_a_flood_of_long_polls_is_bounded_and_healthz_still_answers(client, service):
    """Past `limits.max_waiting_polls` (2 here) a long poll is answered 503 with Retry-After at once."""
    service.config.limits.max_waiting_polls = 2
    job = post(client, {"num_frames": 9}).json()
    with ThreadPoolExecutor(12) as pool:
        polls = [pool.submit(client.get, f"/v1/videos/{job['id']}", params={"wait_s": 30}) for _ in range(10)]
        deadline = time.monotonic() + 10
        while sum(poll.done() for poll in polls) < 8:
            assert time.monotonic() < deadline, "the polls past the bound were not answered at once"
            time.sleep(0.05)
        assert client.get("/healthz").json() == {"status": "ok"}
        busy = [poll.result() for poll in polls if poll.done()]
        assert {response.status_code for response in busy} == {503}
        assert busy[0].headers["Retry-After"] == "1" and "wait_s: 2 long polls" in busy[0].json()["detail"]
        assert client.get(f"/v1/videos/{job['id']}").status_code == 200  # a plain poll is never refused
        service.store.finish(service.store.record(job["id"]).moved(status="cancelled"))
        assert [poll.result().json()["status"] for poll in polls if poll.result().status_code == 200] == ["cancelled"] * 2
