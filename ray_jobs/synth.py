"""Ray Data job: N synthetic people clips of one split (pipelines/demo/synth.py), written as a video folder the
preprocessing job reads. Clips are drawn from (seed, split, index) alone, so actors write them in any order; a rerun
skips clips whose video exists. Writes `summary.json` (clips = written + skipped + failed, failures with reasons).

    humanim synth --out data/synth/train --clips 512 --split train --seed 0
    ray job submit --working-dir . -- humanim synth ...        # the same on a cluster
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from pipelines.demo.synth import RESULT_SCHEMA, SynthWorker
from pipelines.io.config import StageResources
from ray_jobs.common import actor_stage

SUMMARY_NAME = "summary.json"


def run(output_dir: Path, clips: int, split: str, seed: int, num_frames: int, size: tuple[int, int],
        resources: StageResources | None = None) -> dict[str, Any]:
    """Write `clips` clips; returns the summary."""
    if clips < 1:
        raise ValueError(f"clips: must be >= 1, got {clips}")
    resources = resources or StageResources(batch_size=4)
    data = ray.data.range(clips, override_num_blocks=max(1, min(clips, 64)))
    data = actor_stage(data, SynthWorker, resources, (output_dir, seed, split, num_frames, size), "synth")
    table = pa.concat_tables([RESULT_SCHEMA.empty_table(),
                              *data.iter_batches(batch_size=None, batch_format="pyarrow")])
    rows = table.to_pylist()
    if len(rows) != clips:
        raise RuntimeError(f"lost clips: {clips} asked for, {len(rows)} answered")
    count = {status: sum(row["status"] == status for row in rows) for status in ("ok", "skipped", "failed")}
    summary = {"clips": clips, "written": count["ok"], "skipped": count["skipped"], "failed": count["failed"],
               "failures": [row for row in rows if row["status"] == "failed"], "split": split, "seed": seed,
               "frames": num_frames, "size": list(size)}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))
    return summary
