"""The fine-tuning job's pieces without Ray: the data schedule, DeepSpeed settings, row reads, atomic export."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers import ROOT, write_tiny_rows

from models.body_model import load_body_model
from models.motion_decoder import MotionDecoder
from pipelines.io.config import load_config
from pipelines.io.filesystem import resolve_uri
from pipelines.io.row_reader import RowKey, keys_table, read_rows
from pipelines.training.config import TrainJobConfig
from pipelines.training.engine import deepspeed_settings, publish, step_generator
from pipelines.training.schedule import plan_rows, step_rows

CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"


def config_with(tmp_path: Path, **overrides) -> TrainJobConfig:
    return load_config(TrainJobConfig, CONFIG, {"output_dir": tmp_path, **overrides})


def keys(count: int) -> tuple[RowKey, ...]:
    return tuple(RowKey(f"clip_{index:03d}", "rows.parquet", index) for index in range(count))


def test_each_epoch_trains_on_distinct_rows_split_across_workers_and_micro_steps() -> None:
    rows = keys(23)
    world, micro, accumulation = 2, 3, 2  # 12 rows per step: one step per epoch, 11 rows wait
    for epoch_start in (0, 1, 2):
        seen = [
            key
            for rank in range(world)
            for batch in step_rows(rows, 7, epoch_start, rank, world, micro, accumulation)
            for key in batch
        ]
        assert len(seen) == len(set(seen)) == micro * world * accumulation
    first = step_rows(rows, 7, 0, 0, world, micro, accumulation)
    assert step_rows(rows, 7, 0, 0, world, micro, accumulation) == first  # a function of its arguments only
    assert step_rows(rows, 7, 1, 0, world, micro, accumulation) != first  # the next epoch is reshuffled
    assert step_rows(rows, 8, 0, 0, world, micro, accumulation) != first  # and so is another seed
    assert [len(batch) for batch in first] == [micro] * accumulation


def test_step_generators_differ_by_step_rank_and_micro_step() -> None:
    draws = {
        (step, rank, micro): torch.rand(4, generator=step_generator(0, step, rank, micro)).tolist()
        for step in (1, 2)
        for rank in (0, 1)
        for micro in (0, 1)
    }
    assert len({tuple(value) for value in draws.values()}) == len(draws)
    assert torch.rand(4, generator=step_generator(0, 2, 1, 0)).tolist() == draws[2, 1, 0]


def test_deepspeed_auto_values_come_from_the_train_config(tmp_path) -> None:
    settings = deepspeed_settings(config_with(tmp_path, batch_size=4, gradient_accumulation_steps=2))
    assert (settings["train_batch_size"], settings["train_micro_batch_size_per_gpu"]) == (4, 1)
    assert settings["gradient_accumulation_steps"] == 2 and settings["gradient_clipping"] == 1.0
    assert settings["bf16"] == {"enabled": False} and settings["zero_optimization"]["stage"] == 2

    def with_json(content: dict) -> TrainJobConfig:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(content))
        return config_with(tmp_path, deepspeed=path)

    base = json.loads((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    with pytest.raises(ValueError, match="train_batch_size is 8 .* gives 2"):
        deepspeed_settings(with_json({**base, "train_batch_size": 8}))
    with pytest.raises(ValueError, match="remove the 'optimizer' section"):
        deepspeed_settings(with_json({**base, "optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match=r"zero_optimization\.offload_optimizer\.device is 'auto'"):
        zero = {**base["zero_optimization"], "offload_optimizer": {"device": "auto"}}
        deepspeed_settings(with_json({**base, "zero_optimization": zero}))
    with pytest.raises(ValueError, match="needs a zero_optimization section"):
        with_json({"train_batch_size": "auto"})


def test_rows_are_read_by_key_in_schedule_order_and_held_out_by_seed(tmp_path) -> None:
    rows_dir = write_tiny_rows(tmp_path, load_body_model(detail=12), {"walk": 2, "turn": 1})
    config = config_with(tmp_path / "out", data={"rows_dir": str(rows_dir), "validation_rows": 1})
    plan = plan_rows(config)
    assert len(plan.train) == 2 and len(plan.validation) == 1
    assert {key.clip_id for key in plan.train + plan.validation} == {"turn_000000", "walk_000000", "walk_000009"}
    assert plan_rows(config) == plan
    order = [plan.train[1], plan.validation[0], plan.train[0]]
    filesystem = resolve_uri(plan.rows_uri)[0]
    table = read_rows(filesystem, keys_table(order))
    assert table.column("clip_id").to_pylist() == [key.clip_id for key in order]
    walk = [key for key in order if key.clip_id.startswith("walk")]
    assert walk[0].path == walk[1].path  # two rows of one file, each its own row group, read back in key order
    metadata = pq.ParquetFile(filesystem.open_input_file(walk[0].path)).metadata
    assert metadata.num_rows >= 2 and metadata.num_row_groups == metadata.num_rows
    repeated = read_rows(filesystem, keys_table([walk[1], walk[0], walk[1]]))
    assert repeated.column("clip_id").to_pylist() == [walk[1].clip_id, walk[0].clip_id, walk[1].clip_id]


def test_publish_replaces_the_folder_whole(tmp_path) -> None:
    target = tmp_path / "export"

    def writer(marker: str):
        def write(folder: Path) -> None:
            MotionDecoder(4, 4).save(folder)
            (folder / "marker").write_text(marker)

        return write

    publish(writer("first"), target)
    publish(writer("second"), target)
    assert (target / "marker").read_text() == "second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]
    assert MotionDecoder.load(target).settings == {"latent_channels": 4, "hidden_channels": 4}

    def broken(folder: Path) -> None:
        folder.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(broken, target)
    assert (target / "marker").read_text() == "second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_a_full_fine_tune_trains_and_exports_the_whole_transformer(tmp_path) -> None:
    from diffusers import CogVideoXTransformer3DModel

    from models.backbones import build_adapter
    from pipelines.training.engine import build_modules, export_weights, parameter_groups

    config = config_with(tmp_path, finetune="full", padaln={"enabled": False})
    _, modules = build_modules(config, build_adapter(config.backbone_config()))
    transformer = list(modules.transformer.parameters())
    groups = parameter_groups(modules, config)
    assert [len(group["params"]) for group in groups] == [len(transformer), len(list(modules.decoder.parameters()))]
    assert all(p.requires_grad for p in transformer) and modules.padaln is None
    assert not any(p.requires_grad for p in modules.adapter.vae.parameters())
    export_weights(modules, tmp_path / "export")
    reloaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "export" / "transformer")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), transformer, strict=True))
    assert sorted(path.name for path in (tmp_path / "export").iterdir()) == ["motion_decoder.safetensors", "transformer"]


def test_a_random_init_trains_fresh_seeded_weights_of_the_same_architecture(tmp_path) -> None:
    from models.backbones import build_adapter
    from pipelines.training.engine import build_modules

    config = config_with(tmp_path, finetune="full", transformer_init="random", padaln={"enabled": False})
    loaded = build_adapter(config.backbone_config()).transformer.state_dict()
    first, second = (build_modules(config, build_adapter(config.backbone_config()))[1].transformer for _ in "ab")
    assert first.config == build_adapter(config.backbone_config()).transformer.config
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert not torch.equal(first.state_dict()["proj_out.weight"], loaded["proj_out.weight"])
    assert all(p.requires_grad for p in first.parameters())
    with pytest.raises(ValueError, match="transformer_init: random .* finetune: full"):
        config_with(tmp_path, finetune="lora", transformer_init="random")


def test_the_backbone_folder_is_resolved_where_the_job_starts(tmp_path, monkeypatch) -> None:
    """Ray Train workers run in other working directories: a relative `path:` must not reach them relative."""
    monkeypatch.chdir(ROOT)
    config = load_config(TrainJobConfig, ROOT / "configs" / "train" / "toy-humandiff.yaml")
    assert config.backbone["path"] == str(ROOT / "weights" / "toy-cogvideox")
    assert config.backbone_config().path == ROOT / "weights" / "toy-cogvideox"
