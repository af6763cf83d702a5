"""Shipping finished full fine-tunes into a backbone folder as float16 variants, and loading a variant back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT
from safetensors.torch import load_file

from models.backbones import build_adapter, load_backbone_config
from models.padaln import PADALN_WEIGHTS_NAME, PadaLN
from pipelines.demo.motions import make_demo_motion
from pipelines.evaluation.heldout import variant_pipeline
from pipelines.training.ship import default_variant, shipped_variants
from ray_jobs.cli import main as cli

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture()
def backbone(tmp_path):
    """A tiny CogVideoX written as a diffusers folder, its YAML loading it by `path:`, and two finished runs
    (one with PadaLN) whose exports hold perturbed transformers."""
    tiny = load_backbone_config(CONFIGS / "tiny-cogvideox.yaml")
    adapter = build_adapter(tiny)
    adapter.save_pretrained(tmp_path / "toy")
    settings = {**tiny.model_dump(mode="json", exclude_none=True), "path": str(tmp_path / "toy"), "dtype": "float32"}
    del settings["tiny"]
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(settings))
    train = yaml.safe_load((ROOT / "configs" / "train" / "toy-humandiff.yaml").read_text())
    configs = {}
    for index, (name, padaln) in enumerate((("plain", False), ("posed", True))):
        run = tmp_path / "runs" / name
        with torch.no_grad():
            for param in adapter.transformer.parameters():
                param.add_(0.01 * (index + 1))
        adapter.transformer.save_pretrained(run / "export" / "transformer")
        if padaln:
            PadaLN.for_adapter(adapter, 16).save(run / "export")
        (run / "metrics.jsonl").write_text(json.dumps({"step": 7, "train_s": 12.5}) + "\n")
        config = {**train, "backbone": str(tmp_path / "toy.yaml"), "output_dir": str(tmp_path / "runs"),
                  "run_name": name, "max_steps": 7, "padaln": {"enabled": padaln, "mlp_dim": 16},
                  "data": {"rows_dir": str(tmp_path / "rows")}}
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(config))
    return tmp_path, configs


def test_variants_ship_in_float16_and_load_back(backbone, capsys):
    root, configs = backbone
    cli(["backbone", "ship", "--train-config", str(configs["plain"]), "--name", "plain", "--backbone", str(root / "toy"),
         "--default"])
    cli(["backbone", "ship", "--train-config", str(configs["posed"]), "--name", "posed", "--backbone", str(root / "toy")])
    variants = shipped_variants(root / "toy")
    assert sorted(variants) == ["plain", "posed"] and default_variant(root / "toy") == "plain"
    folder, info = variants["posed"]
    assert (info.padaln, info.articulated_noise, info.steps, info.train_s) == (True, True, 7, 12.5)
    exported = load_file(root / "runs" / "posed" / "export" / "transformer" / WEIGHTS)
    shipped = load_file(folder / "transformer" / WEIGHTS)
    assert all(shipped[key].dtype == torch.float16 and torch.equal(shipped[key], value.half())
               for key, value in exported.items())
    assert load_file(folder / PADALN_WEIGHTS_NAME)[next(iter(load_file(folder / PADALN_WEIGHTS_NAME)))].dtype == \
        torch.float16
    # --default also stores the folder's VAE in float16, and it still loads at the config's dtype
    assert {value.dtype for value in load_file(root / "toy" / "vae" / WEIGHTS).values()} == {torch.float16}
    assert not (root / "toy" / "vae.half").exists()
    # the folder's own transformer is the default variant's
    own = load_file(root / "toy" / "transformer" / WEIGHTS)
    assert all(torch.equal(own[key], value) for key, value in load_file(variants["plain"][0] / "transformer" / WEIGHTS).items())

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    videos = {}
    for name in ("plain", "posed"):
        pipeline, info = variant_pipeline(root / "toy.yaml", name)
        assert (pipeline.padaln is not None) == info.padaln
        videos[name] = pipeline(image, "a person", make_demo_motion("walk", 9), num_inference_steps=1,
                                guidance_scale=1.0, seed=0).frames
    assert not np.array_equal(videos["plain"], videos["posed"])
    with pytest.raises(ValueError, match="variant: 'missing' is not in"):
        variant_pipeline(root / "toy.yaml", "missing")


def test_a_default_padaln_variant_brings_its_padaln_to_the_backbone(backbone):
    from pipelines.generation.animation import AnimationPipeline

    root, configs = backbone
    ship = ["backbone", "ship", "--backbone", str(root / "toy"), "--default"]
    cli([*ship, "--train-config", str(configs["posed"]), "--name", "posed"])
    pipeline = AnimationPipeline.from_config(root / "toy.yaml")
    assert pipeline.padaln is not None
    assert all(torch.equal(a, b.half()) for a, b in zip(
        pipeline.padaln.state_dict().values(), PadaLN.load(root / "runs" / "posed" / "export").state_dict().values(),
        strict=True))
    assert variant_pipeline(root / "toy.yaml", "posed")[0].padaln is not None
    cli([*ship, "--train-config", str(configs["plain"]), "--name", "plain"])
    assert AnimationPipeline.from_config(root / "toy.yaml").padaln is None


def test_an_unfinished_run_is_not_shipped(backbone, capsys):
    root, configs = backbone
    (root / "runs" / "plain" / "metrics.jsonl").write_text(json.dumps({"step": 3, "train_s": 1.0}) + "\n")
    with pytest.raises(SystemExit):
        cli(["backbone", "ship", "--train-config", str(configs["plain"]), "--name", "plain",
             "--backbone", str(root / "toy")])
    assert "stopped at step 3 of 7; rerun the training job" in capsys.readouterr().err
    assert not (root / "toy" / "variants").exists()
