"""Step caching (diffusers' First Block Cache) in the animation pipeline, on the tiny random CogVideoX and Wan."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import CONFIGS, ROOT

from models.backbones import BackboneConfig, build_adapter, load_backbone_config
from models.backbones.config import StepCacheSettings
from models.body_model import load_body_model
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.io.config import ConfigError, load_config, validate_config
from pipelines.training.config import TrainJobConfig
from ray_jobs.cli import _cache_option, _generation_options, build_parser, main
from serve.config import BackboneEntry


@pytest.fixture(scope="module")
def body():
    return load_body_model()


def pipeline_with(name: str, body, cache: dict | None) -> tuple[AnimationPipeline, list[int]]:
    """The tiny backbone's pipeline (same seeded weights every time) and a list counting the runs of its last
    DiT block (its norm1: a cached step calls the block, whose hook returns without running it)."""
    config = load_backbone_config(CONFIGS / f"{name}.yaml").model_copy(
        update={"cache": None if cache is None else StepCacheSettings(**cache)}
    )
    pipeline = AnimationPipeline(build_adapter(config), body=body, noise_options={"texture_size": 32})
    calls = []
    pipeline.adapter.blocks[-1].norm1.register_forward_hook(lambda *_: calls.append(1))
    return pipeline, calls


def generate(pipeline: AnimationPipeline, **options) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    settings = {"num_frames": 9, "num_inference_steps": 8, "guidance_scale": 3.0, "seed": 0, **options}
    return pipeline(image, "a person walking", make_demo_motion("walk", 81), **settings).frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_a_cache_that_never_hits_is_bitwise_off_and_one_that_hits_skips_blocks(body, name) -> None:
    off, off_calls = pipeline_with(name, body, None)
    reference = generate(off)
    assert len(off_calls) == 8 * (1 if off.adapter.guidance_in_one_batch else 2)

    never, never_calls = pipeline_with(name, body, {"threshold": 1e-9})  # every step runs every block
    assert np.array_equal(generate(never), reference) and len(never_calls) == len(off_calls)

    cached, cached_calls = pipeline_with(name, body, {"threshold": 1.0})
    video = generate(cached)
    assert len(cached_calls) < len(off_calls)  # steps were skipped...
    assert psnr(video, reference) > 20  # ...and the output stays close (random weights: a loose bound)
    first_run = len(cached_calls)
    again = generate(cached)  # the cache is emptied between videos: the same video, the same blocks run
    assert np.array_equal(again, video) and len(cached_calls) == 2 * first_run


def test_long_videos_keep_one_cache_per_window(body) -> None:
    cached, calls = pipeline_with("tiny-cogvideox", body, {"threshold": 0.3})
    video = generate(cached, num_frames=25, num_inference_steps=4)  # 9-frame windows: 3 latent frames, blended
    assert video.shape == (25, 32, 32, 3)
    off, off_calls = pipeline_with("tiny-cogvideox", body, None)
    generate(off, num_frames=25, num_inference_steps=4)
    assert 0 < len(calls) <= len(off_calls)


@pytest.mark.parametrize(("cache", "message"), [
    ({"kind": "teacache", "threshold": 0.1}, "cache.kind"),
    ({"threshold": 0}, "cache.threshold"),
    ({"threshold": 2}, "cache.threshold"),
    ({"kind": "first_block"}, "cache.threshold"),
])
def test_bad_cache_settings_name_the_field(cache, message) -> None:
    config = {"family": "cogvideox", "variant": "1.0", "tiny": {}, "cache": cache}
    with pytest.raises(ConfigError, match=message):
        validate_config(BackboneConfig, config)


def test_the_cache_is_an_option_of_generate_render_and_serve(tmp_path, capsys) -> None:
    settings = StepCacheSettings(threshold=0.1)
    assert _cache_option("first_block:0.1") == settings and _cache_option("off") == "off"
    with pytest.raises(SystemExit):
        main(["generate", "--image", "x.png", "--out", "x.mp4", "--cache", "first_block:2"])
    assert "--cache: expected first_block:THRESHOLD" in capsys.readouterr().err

    tiny = CONFIGS / "tiny-cogvideox.yaml"
    render = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path, backbone=tiny, cache={"threshold": 0.1})
    assert render.backbone_config().cache == settings
    assert BackboneEntry(config=tiny, cache={"threshold": 0.1}).backbone_config().cache == settings
    assert BackboneEntry(config=tiny).backbone_config().cache is None

    # a backbone config that caches: `off` (CLI, manifest, Serve entry) runs exact steps; unset keeps its cache
    cached = tmp_path / "cached.yaml"
    cached.write_text(yaml.safe_dump({**yaml.safe_load(tiny.read_text()), "cache": {"threshold": 0.1}}))
    render = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path, backbone=cached, cache="off")
    assert render.backbone_config().cache is None
    assert BackboneEntry(config=cached, cache="off").backbone_config().cache is None
    assert BackboneEntry(config=cached).backbone_config().cache == settings
    args = build_parser().parse_args(["generate", "--image", "x.png", "--out", "x.mp4", "--cache", "off"])
    assert _generation_options(args, load_backbone_config(cached)).cache is None
    args = build_parser().parse_args(["generate", "--image", "x.png", "--out", "x.mp4"])
    assert _generation_options(args, load_backbone_config(cached)).cache == settings


def test_training_never_runs_with_the_generation_options() -> None:
    backbone = {**load_backbone_config(CONFIGS / "tiny-cogvideox.yaml").model_dump(mode="json"),
                "cache": {"threshold": 0.2}, "compile": {"mode": "blocks"}, "attention": "sdpa_math"}
    train = load_config(TrainJobConfig, ROOT / "configs/train/tiny-cpu.yaml", {"backbone": backbone})
    assert train.backbone["cache"] is not None and train.backbone["compile"]["mode"] == "blocks"
    trained = train.backbone_config()
    assert trained.cache is None and trained.compile.mode == "off" and trained.attention == "sdpa"
