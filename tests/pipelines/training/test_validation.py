"""Validation split over workers and bounded in time, in one process: the tiny CogVideoX on three held-out rows.

The other workers' side of the gather is played by a stand-in returning what a peer would report; the real
2-worker run over gloo is in tests/ray_jobs/test_train_job.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pytest
from helpers import ROOT, write_tiny_rows

from models.backbones import build_adapter
from models.body_model import load_body_model
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.config import load_config
from pipelines.io.filesystem import resolve_uri
from pipelines.io.row_reader import keys_table, read_rows
from pipelines.training.config import COLLECTIVE_TIMEOUT_S, VALIDATION_MAX_SECONDS, TrainJobConfig
from pipelines.training.schedule import plan_rows
from pipelines.training.validation import SUMMARY_NAME, row_of, validate

CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[TrainJobConfig, AnimationPipeline, pa.Table]:
    folder = tmp_path_factory.mktemp("validation")
    rows_dir = write_tiny_rows(folder, load_body_model(detail=12), {"walk": 3, "turn": 2})
    config = load_config(TrainJobConfig, CONFIG, {"output_dir": folder / "out",
                                                  "data": {"rows_dir": str(rows_dir), "validation_rows": 3}})
    plan = plan_rows(config)
    rows = read_rows(resolve_uri(plan.rows_uri)[0], keys_table(list(plan.validation)))
    adapter = build_adapter(config.backbone_config())
    adapter.transformer.eval()
    return config, AnimationPipeline(adapter), rows


@contextmanager
def counted_forwards(pipeline: AnimationPipeline) -> Iterator[list[int]]:
    """The transformer's forward calls while inside."""
    calls = [0]
    handle = pipeline.adapter.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def with_peer(rank: int, elapsed: float = 0.0):
    """A gather for worker `rank` of 2 whose other worker generated its row, if it had one, in 1 s and reports
    `elapsed` seconds on its clock (`values`: generated, seconds, l1, psnr, ssim, clock)."""

    def gather(values: list[float]) -> list[list[float]]:
        other = [1.0, 1.0, 0.1, 20.0, 0.5, elapsed]
        return [values, other] if rank == 0 else [other, values]

    return gather


def test_rows_go_round_robin_over_the_workers() -> None:
    assert [[row_of(r, rank, 2, 5) for r in range(3)] for rank in (0, 1)] == [[0, 2, 4], [1, 3, None]]
    assert [row_of(0, rank, 4, 2) for rank in range(4)] == [0, 1, None, None]


def test_the_default_bound_stays_well_under_the_collective_timeout() -> None:
    # 600 s plus one round of CogVideoX-5B rows (~90 s on an H100) against the 1800 s timeout.
    assert VALIDATION_MAX_SECONDS + 90 < 0.4 * COLLECTIVE_TIMEOUT_S


def test_one_worker_generates_every_row_within_the_budget(setup, tmp_path) -> None:
    config, pipeline, rows = setup
    report = validate(pipeline, rows, config.validation, config.loss, tmp_path)
    assert [row.status for row in report.rows] == ["done"] * 3 and {row.rank for row in report.rows} == {0}
    assert sorted(path.stem for path in tmp_path.glob("*.mp4")) == rows.column("clip_id").to_pylist()
    metrics = report.metrics()
    assert metrics["val_rows"] == 3 and metrics["val_rows_skipped"] == 0 and 0 < metrics["val_l1"] < 1


def test_past_the_budget_the_remaining_rows_are_skipped_and_recorded(setup, tmp_path) -> None:
    config, pipeline, rows = setup
    settings = config.validation.model_copy(update={"max_seconds": 1e-3})
    report = validate(pipeline, rows, settings, config.loss, tmp_path)
    clip_ids = rows.column("clip_id").to_pylist()
    assert [(row.clip_id, row.status) for row in report.rows] == [
        (clip_ids[0], "done"), (clip_ids[1], "skipped"), (clip_ids[2], "skipped")
    ]
    assert [path.stem for path in tmp_path.glob("*.mp4")] == [clip_ids[0]]
    assert report.metrics()["val_rows_skipped"] == 2 and report.metrics()["val_rows"] == 1
    report.write(tmp_path, settings.max_seconds)
    summary = json.loads((tmp_path / SUMMARY_NAME).read_text())
    assert [row["status"] for row in summary["rows"]] == ["done", "skipped", "skipped"]
    assert summary["rows"][0]["scores"]["l1"] == pytest.approx(report.metrics()["val_l1"])


def test_a_slow_peer_stops_every_worker_after_the_same_round(setup) -> None:
    """Worker 0 is well within its budget, but the gathered clock of worker 1 is past it: worker 0 stops too (a
    worker that went on alone would wait in the next gather until the collective timeout)."""
    config, pipeline, rows = setup
    with counted_forwards(pipeline) as forwards:
        report = validate(pipeline, rows, config.validation, config.loss, None, rank=0, world_size=2,
                          gather=with_peer(0, elapsed=config.validation.max_seconds + 1))
    assert [(row.rank, row.status) for row in report.rows] == [(0, "done"), (1, "done"), (0, "skipped")]
    assert report.rows[1].scores == {"l1": 0.1, "psnr": 20.0, "ssim": 0.5}
    assert report.seconds > config.validation.max_seconds
    assert forwards[0] == config.validation.num_inference_steps


@pytest.mark.parametrize("pad", [False, True])
def test_under_zero3_a_worker_out_of_rows_pads_to_the_same_number_of_forwards(setup, pad) -> None:
    """3 rows on 2 workers: worker 0 generates two, worker 1 one. Under ZeRO-3 every forward is collective, so
    worker 1 generates a discarded padding row in the second round."""
    config, pipeline, rows = setup
    with counted_forwards(pipeline) as forwards:
        report = validate(pipeline, rows, config.validation, config.loss, None, rank=1, world_size=2,
                          gather=with_peer(1), pad=pad)
    assert forwards[0] == (2 if pad else 1) * config.validation.num_inference_steps
    assert [(row.rank, row.status) for row in report.rows] == [(0, "done"), (1, "done"), (0, "done")]
    assert report.metrics()["val_rows"] == 3
