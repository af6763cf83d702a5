"""The Ray Train + DeepSpeed fine-tuning job on CPU: 2 workers, ZeRO-2 over gloo, the tiny CogVideoX with LoRA,
PadaLN and the motion decoder, on three training rows (two to overfit, one held out for validation).

One uninterrupted run is the reference: its loss falls, it logs and validates, and its export reloads into the
animation pipeline. A second run loses a worker after a step and must resume and end with the same weights.
Runs on five rows (three held out) check that the workers split validation, under ZeRO-2 and ZeRO-3, and that a
validation past its time budget skips rows without stopping training.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, write_tiny_rows
from safetensors.torch import load_file

from models.backbones import build_adapter
from models.body_model import load_body_model
from models.motion_decoder import MOTION_DECODER_WEIGHTS_NAME, MotionDecoder
from models.padaln import PADALN_WEIGHTS_NAME, PadaLN
from pipelines.demo.motions import make_demo_motion
from pipelines.demo.reference import render_reference_image
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.config import RESOLVED_CONFIG_NAME, ConfigError, load_config
from pipelines.training.config import TrainJobConfig
from pipelines.training.engine import DEEPSPEED_DIR, DEEPSPEED_TAG
from ray_jobs import cli, train

CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"
LORA_FILE = "pytorch_lora_weights.safetensors"
EXPORTED = (LORA_FILE, PADALN_WEIGHTS_NAME, MOTION_DECODER_WEIGHTS_NAME)


def train_config(rows_dir: Path, output_dir: Path, **overrides) -> TrainJobConfig:
    data = {"rows_dir": str(rows_dir), "validation_rows": 1}
    return load_config(TrainJobConfig, CONFIG, {"output_dir": output_dir, "data": data, **overrides})


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """`tag`'s scalars by step from the TensorBoard event files in `folder` (TFRecord framing, tensorboardX protos)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in folder.glob("events.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.tag == tag:
                    scalars[event.step] = value.simple_value
    return scalars


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory) -> Path:
    """walk (two clips) and turn (one clip), 9 frames at 32x32, as the preprocessing stages write them."""
    return write_tiny_rows(tmp_path_factory.mktemp("train-rows"), load_body_model(detail=12), {"walk": 2, "turn": 1})


@pytest.fixture(scope="module")
def five_rows_dir(tmp_path_factory) -> Path:
    """walk (three clips) and turn (two clips): three to hold out for validation, two to train on."""
    return write_tiny_rows(tmp_path_factory.mktemp("train-rows-5"), load_body_model(detail=12), {"walk": 3, "turn": 2})


@pytest.fixture(scope="module")
def reference(ray_local, rows_dir, tmp_path_factory) -> tuple[TrainJobConfig, dict]:
    config = train_config(rows_dir, tmp_path_factory.mktemp("train-reference"))
    return config, train.run(config)


# Bad configs


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "tiny-nonexistent"}, "unknown backbone 'tiny-nonexistent'"),
        ({"lora": {"rank": 0}}, r"lora\.rank"),
        ({"batch_size": 3}, "batch_size: 3 rows per step cannot be split evenly across 2 workers"),
        ({"data": {"rows_dir": "MISSING"}}, r"data\.rows_dir: no training rows"),
        ({"data": {"validation_rows": 3}}, r"data\.validation_rows: 3 held out of 3 rows"),
        ({"batch_size": 4}, "batch_size: 4 rows per step but only 2 training rows"),
        ({"deepspeed": "configs/deepspeed/zero9.json"}, "DeepSpeed config .*zero9.json.* not found"),
        ({"backbone": "tiny-wan"}, "rows were made for backbone .*cogvideox"),
        ({"logging": {"mlflow": {"tracking_uri": "file:/tmp/mlruns"}}}, r"logging\.mlflow: configured, but"),
    ],
)
def test_bad_configs_fail_before_any_worker_starts(rows_dir, tmp_path, monkeypatch, change, message) -> None:
    def no_trainer(*args, **kwargs):
        raise AssertionError("a TorchTrainer was created for a bad config")

    monkeypatch.setattr(train, "TorchTrainer", no_trainer)
    data = yaml.safe_load(CONFIG.read_text())
    data.update(output_dir=str(tmp_path / "out"), data={"rows_dir": str(rows_dir), "validation_rows": 1})
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    if data["data"]["rows_dir"] == "MISSING":
        data["data"]["rows_dir"] = str(tmp_path / "nothing-here")
    with pytest.raises((ConfigError, ValueError), match=message):
        train.run(load_config(TrainJobConfig, _write(tmp_path, data)))


def test_the_cli_reports_a_bad_config_as_an_error(tmp_path, capsys) -> None:
    data = {**yaml.safe_load(CONFIG.read_text()), "batch_size": 3}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", str(_write(tmp_path, data))])
    assert exit_info.value.code == 2
    assert "humanim train: error:" in capsys.readouterr().err


# The reference run


def test_the_loss_falls_and_every_step_is_logged(reference) -> None:
    config, summary = reference
    run_dir = config.run_dir
    metrics = read_metrics(run_dir)
    assert [row["step"] for row in metrics] == list(range(1, config.max_steps + 1))
    for row in metrics:
        for name in ("loss", "diffusion", "motion", "consistency", "lr", "samples_per_s", "peak_memory_mb"):
            assert np.isfinite(row[name]) and row[name] >= 0, (name, row)
        assert row["lr"] == config.optimizer.lr
    losses = [row["loss"] for row in metrics]
    quarter = len(losses) // 4
    early, late = np.mean(losses[:quarter]), np.mean(losses[-quarter:])
    assert late < 0.9 * early, losses
    assert metrics[-1]["motion"] < metrics[0]["motion"]

    assert tensorboard_scalars(run_dir / "tensorboard", "loss") == pytest.approx(
        {row["step"]: row["loss"] for row in metrics}, rel=1e-6
    )
    assert summary["metrics"]["step"] == config.max_steps and summary["train_rows"] == 2
    assert yaml.safe_load((run_dir / RESOLVED_CONFIG_NAME).read_text())["batch_size"] == config.batch_size
    kept = (config.max_steps - config.checkpoint_every_steps, config.max_steps)
    checkpoints = sorted(path.name for path in run_dir.glob("checkpoint_*") if path.is_dir())
    assert checkpoints == [f"checkpoint_{step:08d}" for step in kept]


def test_validation_writes_a_video_per_held_out_row_with_metrics(reference) -> None:
    config, _ = reference
    every = config.validation.every_steps
    metrics = {row["step"]: row for row in read_metrics(config.run_dir)}
    for step in range(1, config.max_steps + 1):
        assert ("val_l1" in metrics[step]) == (step % every == 0)
    for step in range(every, config.max_steps + 1, every):
        videos = list((config.run_dir / "validation" / f"step_{step:08d}").glob("*.mp4"))
        assert len(videos) == 1 and videos[0].stat().st_size > 0
        assert 0 < metrics[step]["val_l1"] < 1 and np.isfinite(metrics[step]["val_psnr"])
        assert -1 <= metrics[step]["val_ssim"] <= 1
        assert (metrics[step]["val_rows"], metrics[step]["val_rows_skipped"]) == (1, 0)
        summary = json.loads((videos[0].parent / "summary.json").read_text())
        assert [(row["clip_id"], row["rank"], row["status"]) for row in summary["rows"]] == [(videos[0].stem, 0, "done")]


def test_two_workers_split_the_held_out_rows_and_a_validation_past_its_budget_skips_rows(
    ray_local, five_rows_dir, tmp_path
) -> None:
    """Three held-out rows on 2 workers: the first round (row 0 on worker 0, row 1 on worker 1) always runs, and
    with a budget that any generation exceeds the second round (row 2) is skipped on both workers alike; training
    goes on to the end."""
    config = load_config(TrainJobConfig, CONFIG, {
        "output_dir": tmp_path, "data": {"rows_dir": str(five_rows_dir), "validation_rows": 3}, "max_steps": 8,
        "checkpoint_every_steps": 8, "validation": {"every_steps": 4, "num_inference_steps": 8, "max_seconds": 1e-3},
    })
    summary = train.run(config)
    assert summary["metrics"]["step"] == config.max_steps
    assert (config.run_dir / "export" / LORA_FILE).is_file()
    metrics = {row["step"]: row for row in read_metrics(config.run_dir)}
    assert sorted(metrics) == list(range(1, config.max_steps + 1))
    for step in (4, 8):
        assert (metrics[step]["val_rows"], metrics[step]["val_rows_skipped"]) == (2, 1)
        folder = config.run_dir / "validation" / f"step_{step:08d}"
        rows = json.loads((folder / "summary.json").read_text())["rows"]
        assert [(row["rank"], row["status"]) for row in rows] == [(0, "done"), (1, "done"), (0, "skipped")]
        assert all(row["seconds"] > 0 and 0 < row["scores"]["l1"] < 1 for row in rows[:2])
        assert rows[2]["seconds"] is None and rows[2]["scores"] == {}
        assert sorted(path.stem for path in folder.glob("*.mp4")) == [row["clip_id"] for row in rows[:2]]
        assert metrics[step]["val_l1"] == pytest.approx(np.mean([row["scores"]["l1"] for row in rows[:2]]))


def test_under_zero3_two_workers_generate_different_rows_and_pad_the_last_round(
    ray_local, five_rows_dir, tmp_path
) -> None:
    """ZeRO-3 shards the transformer, so each denoising forward is collective: worker 1 runs a discarded padding
    row while worker 0 generates row 2 (without it the two workers' collectives would no longer match)."""
    config = load_config(TrainJobConfig, CONFIG, {
        "output_dir": tmp_path, "data": {"rows_dir": str(five_rows_dir), "validation_rows": 3}, "max_steps": 2,
        "checkpoint_every_steps": 2, "deepspeed": str(ROOT / "configs" / "deepspeed" / "zero3.json"),
        "validation": {"every_steps": 2, "num_inference_steps": 3},
    })
    assert train.run(config)["metrics"]["step"] == 2
    folder = config.run_dir / "validation" / "step_00000002"
    rows = json.loads((folder / "summary.json").read_text())["rows"]
    assert [(row["rank"], row["status"]) for row in rows] == [(0, "done"), (1, "done"), (0, "done")]
    assert sorted(path.stem for path in folder.glob("*.mp4")) == [row["clip_id"] for row in rows]
    # Different rows, so different videos and scores: the workers did not all render the same one.
    assert len({row["scores"]["l1"] for row in rows}) == 3

def _generate(pipeline: AnimationPipeline, body) -> np.ndarray:
    motion = make_demo_motion("walk", 9)
    image = render_reference_image(motion, body, pipeline.adapter.resolution)
    output = pipeline(image, "a person walking", motion=motion, num_inference_steps=3, guidance_scale=1.0, seed=0)
    return output.frames


def test_the_export_reloads_into_the_pipeline_and_changes_its_output(reference) -> None:
    config, _ = reference
    export = config.run_dir / "export"
    assert sorted(path.name for path in export.iterdir()) == sorted(EXPORTED)
    body = load_body_model(detail=12)
    backbone = config.backbone_config()
    plain = _generate(AnimationPipeline.from_config(backbone, body=body), body)
    tuned = _generate(AnimationPipeline.from_config(backbone, lora=export, padaln=export, body=body), body)
    assert np.abs(tuned.astype(float) - plain.astype(float)).mean() > 1.0

    # The same output from the weights in the final DeepSpeed checkpoint, loaded into a fresh LoRA and PadaLN.
    checkpoint = config.run_dir / f"checkpoint_{config.max_steps:08d}" / DEEPSPEED_DIR / DEEPSPEED_TAG
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    adapter = build_adapter(backbone)
    adapter.add_lora()
    padaln = PadaLN.for_adapter(adapter, config.padaln.mlp_dim)
    decoder = MotionDecoder(adapter.latent_channels, config.motion_decoder_channels)
    for prefix, module in (("transformer.", adapter.transformer), ("padaln.", padaln), ("decoder.", decoder)):
        part = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        loaded = module.load_state_dict(part, strict=False)
        assert not loaded.unexpected_keys and not [key for key in loaded.missing_keys if "lora" in key]
    assert np.array_equal(_generate(AnimationPipeline(adapter, padaln, body), body), tuned)
    exported = MotionDecoder.load(export).state_dict()
    assert all(torch.equal(exported[name], value) for name, value in decoder.state_dict().items())


# Fault tolerance


def test_a_killed_worker_resumes_and_ends_with_the_uninterrupted_weights(reference, rows_dir, tmp_path, capsys) -> None:
    """Run through the command line (`humanim train`, i.e. `python -m ray_jobs.train`), losing worker 1 two steps
    after a checkpoint."""
    uninterrupted, _ = reference
    fail_after = uninterrupted.checkpoint_every_steps + 2
    data = {
        **yaml.safe_load(CONFIG.read_text()),
        "output_dir": str(tmp_path),
        "data": {"rows_dir": str(rows_dir), "validation_rows": 1},
        "inject_failure": {"after_step": fail_after, "rank": 1},
    }
    path = _write(tmp_path, data)
    cli.main(["train", "--config", str(path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = load_config(TrainJobConfig, path)
    assert summary["run_dir"] == str(config.run_dir)
    assert (config.run_dir / train.FAILURE_MARKER).is_file()
    assert summary["metrics"]["step"] == config.max_steps

    # Rank 0 logged up to the failure, then again from the step after the checkpoint it resumed from.
    steps = [row["step"] for row in read_metrics(config.run_dir)]
    resumed = list(range(uninterrupted.checkpoint_every_steps + 1, config.max_steps + 1))
    assert steps == list(range(1, fail_after + 1)) + resumed
    reference_losses = {row["step"]: row["loss"] for row in read_metrics(uninterrupted.run_dir)}
    assert {row["step"]: row["loss"] for row in read_metrics(config.run_dir)} == pytest.approx(reference_losses)

    for name in EXPORTED:
        expected = load_file(uninterrupted.run_dir / "export" / name)
        actual = load_file(config.run_dir / "export" / name)
        assert expected.keys() == actual.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(actual[key], tensor, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
