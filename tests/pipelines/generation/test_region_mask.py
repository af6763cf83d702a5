"""DynamiCtrl's region control: a masked reference image from the pipeline call, `humanim generate --mask`, the
render manifest's `mask` column and the HTTP API's `mask` upload. Blanking with a mask gives exactly the video of
the image with that region painted black."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import PIL.Image
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from helpers import CONFIGS

from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.generation.render_stages import GenerateStage, PrepareStage, input_items, items_from_table
from pipelines.io.motion import save_motion
from pipelines.io.video import read_video
from ray_jobs.cli import main
from serve.api import build_api
from serve.auth import ApiKeys
from serve.config import ServeConfig
from serve.jobs import JobStore
from serve.requests import BackboneInfo, RequestError, Upload
from serve.service import JobService
from serve.worker import GenerationWorker

IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
MASK = np.zeros((32, 32), np.uint8)
MASK[:, :16] = 255  # keep the left half; the prompt describes the right
BLANKED = IMAGE * (MASK[..., None] > 0)


@pytest.fixture(scope="module")
def pipeline():
    return AnimationPipeline.from_config(CONFIGS / "tiny-cogvideox.yaml", noise_options={"texture_size": 32})


def generate(pipeline, image, **options):
    return pipeline(image, "", make_demo_motion("walk", 9), num_frames=9, num_inference_steps=1,
                    guidance_scale=2.0, seed=0, **options).frames


@pytest.fixture()
def outputs(monkeypatch) -> list[np.ndarray]:
    """Frames of every pipeline call (MP4 encoding here is not bit-reproducible, so compare before it)."""
    frames, call = [], AnimationPipeline.__call__

    def recorded(self, *args, **kwargs):
        output = call(self, *args, **kwargs)
        frames.append(output.frames)
        return output

    monkeypatch.setattr(AnimationPipeline, "__call__", recorded)
    return frames


def png(array: np.ndarray, path=None) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(path or buffer, "PNG")
    return buffer.getvalue()


def test_the_pipeline_blanks_the_masked_out_region(pipeline):
    masked = generate(pipeline, IMAGE, mask=MASK)
    assert np.array_equal(masked, generate(pipeline, BLANKED))
    assert not np.array_equal(masked, generate(pipeline, IMAGE))
    assert np.array_equal(generate(pipeline, IMAGE, mask=np.ones((32, 32), bool)), generate(pipeline, IMAGE))
    assert np.array_equal(generate(pipeline, IMAGE, mask=PIL.Image.fromarray(MASK)), masked)
    with pytest.raises(ValueError, match="mask: size 32x16"):
        generate(pipeline, IMAGE, mask=MASK[:, :16])
    with pytest.raises(ValueError, match="mask: mode RGB"):
        generate(pipeline, IMAGE, mask=PIL.Image.fromarray(IMAGE))


def test_generate_command_takes_a_mask(tmp_path, capsys, outputs):
    png(IMAGE, tmp_path / "person.png")
    png(BLANKED, tmp_path / "blanked.png")
    png(MASK, tmp_path / "mask.png")
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    common = ["generate", "--motion", str(tmp_path / "walk.npz"), "--steps", "1", "--seed", "0", "--prompt", "",
              "--no-retarget", "--backbone", str(CONFIGS / "tiny-cogvideox.yaml")]
    main([*common, "--image", str(tmp_path / "person.png"), "--mask", str(tmp_path / "mask.png"),
          "--out", str(tmp_path / "masked.mp4")])
    main([*common, "--image", str(tmp_path / "blanked.png"), "--out", str(tmp_path / "blanked.mp4")])
    main([*common, "--image", str(tmp_path / "person.png"), "--out", str(tmp_path / "plain.mp4")])
    masked, blanked, plain = outputs
    assert np.array_equal(masked, blanked) and not np.array_equal(masked, plain)
    assert read_video(tmp_path / "masked.mp4")[0].shape == (9, 32, 32, 3)
    # a photo and its mask of another size than the output (the default backbone, the shipped toy, is 64x96)
    main([*common[:-2], "--image", str(tmp_path / "person.png"), "--mask", str(tmp_path / "mask.png"),
          "--out", str(tmp_path / "toy.mp4")])
    assert read_video(tmp_path / "toy.mp4")[0].shape == (9, 64, 96, 3)
    with pytest.raises(SystemExit):
        main([*common, "--image", str(tmp_path / "person.png"), "--mask", str(tmp_path / "none.png"),
              "--out", str(tmp_path / "x.mp4")])
    assert "mask: file not found" in capsys.readouterr().err


def test_render_manifest_mask_column(tmp_path):
    png(IMAGE, tmp_path / "person.png")
    png(BLANKED, tmp_path / "blanked.png")
    png(MASK, tmp_path / "mask.png")
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out",
                             backbone=CONFIGS / "tiny-cogvideox.yaml", noise={"texture_size": 32},
                             defaults={"steps": 1, "guidance": 2.0, "retarget": False})
    row = {"image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz"), "prompt": ""}
    rows = [{**row, "id": "masked", "mask": str(tmp_path / "mask.png")},
            {**row, "id": "blanked", "image": str(tmp_path / "blanked.png")},
            {**row, "id": "no_mask_file", "mask": str(tmp_path / "none.png")}]
    prepared = PrepareStage(config)(pa.concat_tables(input_items(rows)))
    masked, blanked, missing = items_from_table(GenerateStage(config, "cpu")(prepared))
    assert masked.status == blanked.status == "ok", (masked.error, blanked.error)
    assert np.array_equal(masked.state["frames"], blanked.state["frames"])
    assert (missing.status, missing.stage) == ("failed", "prepare") and "mask: file not found" in missing.error


def test_http_api_mask_upload(tmp_path, outputs):
    config = ServeConfig.model_validate({
        "storage_uri": str(tmp_path / "jobs"), "auth": {"required": False}, "defaults": {"retarget": False},
        "backbones": {"tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"}},
    })
    store = JobStore(config.storage_uri)
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}

    async def dispatch_nothing(record):
        pass

    service = JobService(config, store, backbones, dispatch_nothing, owner="ingress-test")
    motion = io.BytesIO()
    np.savez(motion, **make_demo_motion("walk", 9).to_arrays())
    fields = {"seed": 0, "steps": 1, "guidance": 2.0, "prompt": ""}

    def submit(image: np.ndarray, mask: bytes | None = None):
        upload = Upload(png(image), motion=motion.getvalue(), fields=fields, mask=mask)
        return asyncio.run(service.submit("c", upload, None))[0]

    jobs = [submit(IMAGE, png(MASK)), submit(BLANKED), submit(IMAGE)]
    assert "mask.npy" in jobs[0].params.inputs and "mask.npy" not in jobs[2].params.inputs
    worker = GenerationWorker(config, "worker-test")
    assert [worker.run(job) for job in jobs] == ["succeeded"] * 3
    masked, blanked, plain = outputs
    assert np.array_equal(masked, blanked) and not np.array_equal(masked, plain)
    with pytest.raises(RequestError, match="mask: mode RGB"):
        submit(IMAGE, png(IMAGE))

    # the multipart form's `mask` file
    with TestClient(build_api(service, ApiKeys(config.auth), config.limits)) as client:
        files = {"image": ("p.png", png(IMAGE), "image/png"), "mask": ("m.png", png(MASK), "image/png"),
                 "motion": ("walk.npz", motion.getvalue(), "application/octet-stream")}
        response = client.post("/v1/videos", files=files, data={"steps": "1"})
        assert response.status_code == 202, response.text
        assert "mask.npy" in store.record(response.json()["id"]).params.inputs
        files["mask"] = ("m.png", png(IMAGE), "image/png")
        response = client.post("/v1/videos", files=files)
        assert response.status_code == 422 and "mask: mode RGB" in response.text
