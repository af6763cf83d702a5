"""Compiled DiT blocks (backbone config `compile`) and the generation options of generate, render and Serve."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import CONFIGS, generate_walk
from torch._dynamo.utils import counters

from models.backbones import BackboneConfig, build_adapter, load_backbone_config
from models.backbones.config import CompileSettings, StepCacheSettings
from models.body_model import load_body_model
from models.padaln import PadaLN
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.io.config import ConfigError, validate_config
from ray_jobs.cli import _attention_option, build_parser, main
from serve.config import BackboneEntry

BLOCKS = 4


@pytest.fixture(scope="module")
def body():
    return load_body_model()


def tiny_config(name: str, **options) -> BackboneConfig:
    """The tiny backbone with `BLOCKS` DiT blocks and the given options."""
    config = load_backbone_config(CONFIGS / f"{name}.yaml")
    tiny = config.tiny.model_copy(update={"transformer": {**config.tiny.transformer, "num_layers": BLOCKS}})
    return config.with_options(tiny=tiny, **options)


def posed_pipeline(config: BackboneConfig, body) -> AnimationPipeline:
    """A pipeline with a PadaLN whose output layers are not zero, so its hooks change every block's input."""
    adapter = build_adapter(config)
    torch.manual_seed(0)  # the same PadaLN every time
    padaln = PadaLN.for_adapter(adapter)
    for modulation in padaln.modulations:
        torch.nn.init.normal_(modulation.mlp[-1].weight, std=0.1)
    return AnimationPipeline(adapter, padaln, body, noise_options={"texture_size": 32})


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-wan"])
def test_compiled_blocks_share_one_graph_outside_the_hooks(body, name) -> None:
    reference = generate_walk(posed_pipeline(tiny_config(name), body))
    torch._dynamo.reset()
    counters.clear()
    compiled = posed_pipeline(tiny_config(name, compile={"mode": "blocks", "backend": "eager"}), body)
    assert all("forward" in vars(block) for block in compiled.adapter.blocks)  # each block's own compiled forward
    assert np.array_equal(generate_walk(compiled), reference)  # eager backend: the same operations
    # One graph for all blocks, not one per block; PadaLN's hooks (each passes its block's index) are not traced.
    assert 1 <= counters["stats"]["unique_graphs"] <= 2 < BLOCKS
    assert not counters["recompiles"] or max(counters["recompiles"].values()) < BLOCKS


def test_compiled_blocks_keep_the_step_cache(body) -> None:
    cache = StepCacheSettings(threshold=1.0)
    uncached = generate_walk(posed_pipeline(tiny_config("tiny-cogvideox"), body))
    cached = generate_walk(posed_pipeline(tiny_config("tiny-cogvideox", cache=cache), body))
    assert not np.array_equal(cached, uncached)  # steps were cached...
    compile_settings = {"mode": "blocks", "backend": "eager"}
    compiled = posed_pipeline(tiny_config("tiny-cogvideox", cache=cache, compile=compile_settings), body)
    assert np.array_equal(generate_walk(compiled), cached)  # ...and the same ones with compiled blocks


def test_inductor_compiled_blocks_match(body) -> None:
    """The product path (inductor) on the CPU: C++ kernels of one block, about 30 s of compiling here."""
    torch._dynamo.reset()
    config = tiny_config("tiny-cogvideox")
    reference = posed_pipeline(config, body)
    compiled = posed_pipeline(config.with_options(compile=CompileSettings(mode="blocks")), body)
    latents = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    conditioning = reference.adapter.encode_conditioning(
        torch.zeros(1, 3, 32, 32), "a person", 9, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad(), reference.padaln.pose(latents), compiled.padaln.pose(latents):
        expected = reference.adapter.predict(latents, torch.tensor([500]), conditioning)
        actual = compiled.adapter.predict(latents, torch.tensor([500]), conditioning)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("compile_settings", "message"), [
    ({"mode": "all"}, "compile.mode"),
    ({"mode": "blocks", "backend": "tvm"}, "compile.backend"),
    ({"mode": "blocks", "fullgraph": True}, "compile.fullgraph"),
])
def test_bad_compile_settings_name_the_field(compile_settings, message) -> None:
    config = {"family": "cogvideox", "variant": "1.0", "tiny": {}, "compile": compile_settings}
    with pytest.raises(ConfigError, match=message):
        validate_config(BackboneConfig, config)


def test_compile_and_attention_are_options_of_generate_render_and_serve(tmp_path, capsys) -> None:
    args = build_parser().parse_args(["generate", "--image", "x.png", "--out", "x.mp4", "--compile", "blocks",
                                      "--attention", "sdpa_math"])
    assert (args.compile, args.attention) == ("blocks", "sdpa_math")
    assert _attention_option("sdpa_flash") == "sdpa_flash"
    with pytest.raises(SystemExit):
        main(["generate", "--image", "x.png", "--out", "x.mp4", "--attention", "flash_hub"])
    assert "--attention: " in capsys.readouterr().err
    image = tmp_path / "x.png"
    PIL.Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(SystemExit):  # a valid name the backbone's family cannot run: the config says so
        main(["generate", "--image", str(image), "--out", "x.mp4", "--attention", "sage", "--no-retarget"])
    assert "attention: 'sage' goes through diffusers' attention dispatcher" in capsys.readouterr().err

    tiny = CONFIGS / "tiny-cogvideox.yaml"
    options = {"compile": {"mode": "blocks"}, "attention": "sdpa_math"}
    render = RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path, backbone=tiny, **options)
    entry = BackboneEntry(config=tiny, **options)
    for backbone in (render.backbone_config(), entry.backbone_config()):
        assert backbone.compile == CompileSettings(mode="blocks") and backbone.attention == "sdpa_math"
    default = BackboneEntry(config=tiny).backbone_config()
    assert default.compile.mode == "off" and default.attention == "sdpa" and default.cache is None
    with pytest.raises(ValueError, match="attention: 'sage' goes through"):
        RenderJobConfig(manifest=tmp_path / "m.jsonl", output_dir=tmp_path, backbone=tiny, attention="sage")
