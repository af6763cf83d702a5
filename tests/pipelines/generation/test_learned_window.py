"""A CogVideoX with learned positional embeddings always runs at its window: shorter videos are generated at the
window and trimmed, so the learned table is used, never the sin-cos embeddings diffusers swaps in at other counts."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import PIL.Image
import pyarrow as pa
import pytest
import yaml
from diffusers.models.embeddings import CogVideoXPatchEmbed
from helpers import CONFIGS

from models.backbones import generated_num_frames, load_backbone_config
from models.body_model import load_body_model
from models.pose_video import render_pose_video
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.generation.render_stages import GenerateStage, PrepareStage, input_items, items_from_table
from pipelines.io.motion import save_motion
from pipelines.io.video import read_video
from ray_jobs.cli import main
from serve.config import ServeConfig
from serve.jobs import JobStore
from serve.requests import BackboneInfo, Upload
from serve.service import JobService
from serve.worker import GenerationWorker

WINDOW = 17  # pixel frames of the learned table: 5 latent frames


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def backbone_yaml(tmp_path_factory):
    """tiny-cogvideox (learned positional embeddings, sample_frames = num_frames) with a 17-frame window."""
    settings = yaml.safe_load((CONFIGS / "tiny-cogvideox.yaml").read_text())
    path = tmp_path_factory.mktemp("backbone") / "tiny-cogvideox-17.yaml"
    path.write_text(yaml.safe_dump({**settings, "num_frames": WINDOW}))
    return path


@pytest.fixture(scope="module")
def pipeline(backbone_yaml, body):
    return AnimationPipeline.from_config(backbone_yaml, body=body, noise_options={"texture_size": 32})


@pytest.fixture()
def patch_embed_frames(pipeline, monkeypatch):
    """Latent frame counts the patch embedding sees; fails the test if it ever builds sin-cos embeddings."""
    patch_embed = pipeline.adapter.transformer.patch_embed
    seen: list[int] = []
    handle = patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[1].shape[1]))

    def sincos(*args, **kwargs):
        raise AssertionError(f"sin-cos positional embeddings built for {args[2]} frames instead of the learned table")

    monkeypatch.setattr(patch_embed, "_get_positional_embeddings", sincos)
    yield seen
    handle.remove()


def test_the_adapter_reports_its_learned_window(pipeline, backbone_yaml):
    adapter = pipeline.adapter
    assert adapter.fixed_num_frames == WINDOW == adapter.transformer.patch_embed.sample_frames
    assert type(adapter).config_fixed_num_frames(load_backbone_config(backbone_yaml)) == WINDOW
    assert [generated_num_frames(count, WINDOW) for count in (1, 9, 17, 33)] == [17, 17, 17, 33]
    assert generated_num_frames(9, None) == 9
    wan = load_backbone_config(CONFIGS / "tiny-wan.yaml")
    assert AnimationPipeline.from_config(wan).adapter.fixed_num_frames is None


@pytest.mark.parametrize("motion_frames", [9, 40])  # the last pose held; the motion's own next frames
def test_a_shorter_video_is_generated_at_the_window_and_trimmed(pipeline, patch_embed_frames, motion_frames):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    video = pipeline(image, "a person", make_demo_motion("walk", motion_frames), num_frames=9,
                     num_inference_steps=1, guidance_scale=2.0, seed=0).frames
    assert video.shape == (9, 32, 32, 3)
    assert set(patch_embed_frames) == {pipeline.adapter.latent_num_frames(WINDOW)}


def test_pose_video_and_padaln_follow_the_window(pipeline, body, patch_embed_frames):
    """A pose-only request (its video padded with its last frame) through PadaLN, which patchifies the pose."""
    from models.padaln import PadaLN

    padaln = PadaLN.for_adapter(pipeline.adapter)
    posed = AnimationPipeline(pipeline.adapter, padaln, body)
    try:
        pose_video = render_pose_video(make_demo_motion("walk", 9), (32, 32), body)
        image = np.zeros((32, 32, 3), np.uint8)
        video = posed(image, "a person", pose_video=pose_video, articulated_noise=False, num_inference_steps=1,
                      guidance_scale=1.0, seed=0).frames
    finally:
        padaln.detach()
    assert video.shape == (9, 32, 32, 3)
    assert set(patch_embed_frames) == {pipeline.adapter.latent_num_frames(WINDOW)}


def test_render_job_builds_the_operator_for_the_window(backbone_yaml, tmp_path):
    """The render job's CPU stage builds the warp operator the pipeline needs: the whole window, not 9 frames."""
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "person.png")
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out", backbone=backbone_yaml,
                             noise={"texture_size": 32, "supersample": 2}, defaults={"steps": 1, "guidance": 1.0, "retarget": False})
    row = {"id": "walk", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz")}
    prepared = PrepareStage(config)(pa.concat_tables(input_items([row])))
    item = items_from_table(prepared)[0]
    assert item.status == "ok", item.error
    assert item.settings["num_frames"] == 9
    assert item.state["operator.latent_shape"].tolist() == [5, 4, 4]  # 17 frames at 32x32
    rendered = items_from_table(GenerateStage(config, "cpu")(prepared))[0]
    assert rendered.status == "ok", rendered.error
    assert rendered.state["frames"].shape == (9, 32, 32, 3)


@pytest.fixture()
def no_sincos(monkeypatch) -> list[int]:
    """Fails the forward of any CogVideoX patch embedding (of any pipeline the test builds) that builds sin-cos
    embeddings; yields the latent frame counts the forwards saw."""
    forward, seen = CogVideoXPatchEmbed.forward, []

    def sincos(height, width, frames, device=None):
        raise AssertionError(f"sin-cos positional embeddings built for {frames} frames instead of the learned table")

    def guarded(self, text_embeds, image_embeds):
        seen.append(image_embeds.shape[1])
        self._get_positional_embeddings = sincos
        try:
            return forward(self, text_embeds, image_embeds)
        finally:
            del self._get_positional_embeddings

    monkeypatch.setattr(CogVideoXPatchEmbed, "forward", guarded)
    return seen


def test_cli_and_http_api_run_whole_windows(backbone_yaml, tmp_path, no_sincos):
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "person.png")
    motion = make_demo_motion("walk", 9)
    save_motion(tmp_path / "walk.npz", motion)
    main(["generate", "--image", str(tmp_path / "person.png"), "--motion", str(tmp_path / "walk.npz"), "--steps", "1",
          "--backbone", str(backbone_yaml), "--no-retarget", "--out", str(tmp_path / "cli.mp4")])
    assert read_video(tmp_path / "cli.mp4")[0].shape == (9, 32, 32, 3)

    config = ServeConfig.model_validate({
        "storage_uri": str(tmp_path / "jobs"), "auth": {"required": False}, "noise_options": {"texture_size": 32},
        "backbones": {"tiny-17": {"config": str(backbone_yaml), "device": "cpu"}}, "defaults": {"retarget": False},
    })
    store = JobStore(config.storage_uri)
    backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}

    async def dispatch_nothing(record):
        pass

    service = JobService(config, store, backbones, dispatch_nothing, owner="ingress-test")
    image, npz = io.BytesIO(), io.BytesIO()
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image, "PNG")
    np.savez(npz, **motion.to_arrays())
    upload = Upload(image.getvalue(), motion=npz.getvalue(), fields={"num_frames": 9, "steps": 1})
    record = asyncio.run(service.submit("c", upload, None))[0]
    assert GenerationWorker(config, "worker-test").run(record) == "succeeded", store.record(record.id).error
    (tmp_path / "api.mp4").write_bytes(store.result(record.id))
    assert read_video(tmp_path / "api.mp4")[0].shape == (9, 32, 32, 3)
    assert set(no_sincos) == {5}  # latent frames of the 17-frame window, in both
