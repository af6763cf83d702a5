"""The pipeline, `humanim generate`, the render job and the Serve ingress take the backbone config's steps, guidance
and gamma when left out, else (steps, guidance) its family's."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pyarrow as pa
import pytest
import yaml
from helpers import CONFIGS

from models.backbones.config import DEFAULT_GAMMA
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.generation.render_stages import PrepareStage, input_items, items_from_table
from pipelines.io.motion import save_motion
from ray_jobs.cli import main
from serve.config import BackboneEntry
from serve.requests import BackboneInfo

FAMILY_DEFAULTS = {"tiny-cogvideox": (50, 6.0), "tiny-wan": (50, 5.0)}


class Sampled(Exception):
    """Raised by the spied `denoise` with the steps and guidance it was called with."""


def spy_denoise(monkeypatch):
    def denoise(self, noise, windows, conditioning, pose_latents, steps, guidance, on_step=None, window_condition=None):
        raise Sampled(steps, guidance)

    monkeypatch.setattr(AnimationPipeline, "denoise", denoise)


@pytest.mark.parametrize("name", sorted(FAMILY_DEFAULTS))
def test_pipeline_and_cli_take_the_familys_defaults(name, monkeypatch, tmp_path):
    spy_denoise(monkeypatch)
    pipeline = AnimationPipeline.from_config(CONFIGS / f"{name}.yaml")
    motion = make_demo_motion("walk", 9)
    with pytest.raises(Sampled) as sampled:
        pipeline(np.zeros((32, 32, 3), np.uint8), "a person", motion, articulated_noise=False)
    assert sampled.value.args == FAMILY_DEFAULTS[name]

    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "person.png")
    save_motion(tmp_path / "walk.npz", motion)
    with pytest.raises(Sampled) as sampled:
        main(["generate", "--image", str(tmp_path / "person.png"), "--motion", str(tmp_path / "walk.npz"),
              "--backbone", str(CONFIGS / f"{name}.yaml"), "--no-articulated-noise", "--no-retarget",
              "--out", str(tmp_path / "o.mp4")])
    assert sampled.value.args == FAMILY_DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(FAMILY_DEFAULTS))
def test_render_rows_without_steps_or_guidance_take_the_familys(name, tmp_path):
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "person.png")
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out",
                             backbone=CONFIGS / f"{name}.yaml", defaults={"articulated_noise": False, "retarget": False})
    rows = [{"id": "a", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz")},
            {"id": "b", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz"), "steps": 3,
             "guidance": 1.5}]
    items = items_from_table(PrepareStage(config)(pa.concat_tables(input_items(rows))))
    assert [(item.settings["steps"], item.settings["guidance"]) for item in items] == [FAMILY_DEFAULTS[name],
                                                                                      (3, 1.5)]


def test_a_backbone_config_sets_its_own_sampling_defaults(monkeypatch, tmp_path):
    """A trained model's config (the toy: 20 steps, no guidance) overrides the family's defaults everywhere."""
    settings = yaml.safe_load((CONFIGS / "tiny-cogvideox.yaml").read_text())
    (tmp_path / "own.yaml").write_text(yaml.safe_dump({**settings, "num_inference_steps": 7, "guidance_scale": 1.0}))
    spy_denoise(monkeypatch)
    pipeline = AnimationPipeline.from_config(tmp_path / "own.yaml")
    with pytest.raises(Sampled) as sampled:
        pipeline(np.zeros((32, 32, 3), np.uint8), "a person", make_demo_motion("walk", 9), articulated_noise=False)
    assert sampled.value.args == (7, 1.0)
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "person.png")
    save_motion(tmp_path / "walk.npz", make_demo_motion("walk", 9))
    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out", backbone=tmp_path / "own.yaml",
                             defaults={"articulated_noise": False, "retarget": False})
    row = {"id": "a", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz")}
    [item] = items_from_table(PrepareStage(config)(pa.concat_tables(input_items([row]))))
    assert (item.settings["steps"], item.settings["guidance"]) == (7, 1.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**settings, "guidance_scale": 0.5}))
        AnimationPipeline.from_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("gamma", [None, 0.1])
def test_a_backbone_config_sets_its_inference_gamma(gamma, monkeypatch, tmp_path):
    """The config's `gamma` (else DEFAULT_GAMMA) reaches the initial noise of the pipeline and the CLI, a render row's
    settings and a Serve backbone's defaults; a request's own gamma wins."""
    settings = yaml.safe_load((CONFIGS / "tiny-cogvideox.yaml").read_text())
    (tmp_path / "own.yaml").write_text(yaml.safe_dump({**settings, "gamma": gamma} if gamma is not None else settings))
    expected = DEFAULT_GAMMA if gamma is None else gamma

    def initial_noise(self, request, gamma, *args):
        raise Sampled(gamma)

    monkeypatch.setattr(AnimationPipeline, "_initial_noise", initial_noise)
    pipeline = AnimationPipeline.from_config(tmp_path / "own.yaml")
    motion = make_demo_motion("walk", 9)
    for asked, used in ((None, expected), (0.75, 0.75)):
        with pytest.raises(Sampled) as sampled:
            pipeline(np.zeros((32, 32, 3), np.uint8), "a person", motion, gamma=asked)
        assert sampled.value.args == (used,)
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "person.png")
    save_motion(tmp_path / "walk.npz", motion)
    with pytest.raises(Sampled) as sampled:
        main(["generate", "--image", str(tmp_path / "person.png"), "--motion", str(tmp_path / "walk.npz"),
              "--backbone", str(tmp_path / "own.yaml"), "--no-retarget", "--out", str(tmp_path / "o.mp4")])
    assert sampled.value.args == (expected,)

    config = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path / "out", backbone=tmp_path / "own.yaml",
                             defaults={"retarget": False})
    rows = [{"id": "a", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz")},
            {"id": "b", "image": str(tmp_path / "person.png"), "motion": str(tmp_path / "walk.npz"), "gamma": 0.75}]
    items = items_from_table(PrepareStage(config)(pa.concat_tables(input_items(rows))))
    assert [item.settings["gamma"] for item in items] == [expected, 0.75]
    assert BackboneInfo.load("own", BackboneEntry(config=tmp_path / "own.yaml")).default_gamma == expected
