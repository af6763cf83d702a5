"""Ray Data job: generated videos vs ground truth (paired by file stem) -> per-video metrics and the papers' table.

On a cluster: `ray job submit --working-dir . -- python -m ray_jobs.evaluate --generated G --reference R
--config C.yaml`; locally the same command starts its own Ray. Pairs are scored on an actor pool (feature networks
loaded once per actor; `resources.num_gpus` > 0 runs them on CUDA); the driver fits the Gaussians for FID, FID-VID
and FVD. Writes per_video.parquet/.csv, metrics.md and summary.json under `output_dir` (pipelines/evaluation/job.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from pipelines.evaluation.job import EvaluateJobConfig, PairEvaluator, pair_videos, per_video_table, write_report
from pipelines.io.config import load_config, write_resolved_config
from ray_jobs.common import actor_stage, init_ray, run_job
from ray_jobs.locations import check_durable_output, cli_location

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "evaluate" / "demo.yaml"


def run(config: EvaluateJobConfig) -> dict[str, Any]:
    """Score every pair; returns the summary (pairs = evaluated + failed)."""
    config.check_weights()
    pairs, unpaired = pair_videos(config.generated, config.reference)
    write_resolved_config(config, config.output_dir)
    resources = config.resources
    batches = []
    if pairs:
        data = ray.data.from_items(pairs, override_num_blocks=len(pairs))
        # feature networks load once per actor
        data = actor_stage(data, PairEvaluator, resources, (config, resources.device), "evaluate")
        batches = list(data.iter_batches(batch_size=None, batch_format="pyarrow"))
    table = pa.concat_tables([per_video_table([], with_features=True), *batches])
    if len(table) != len(pairs):
        raise RuntimeError(f"lost pairs: {len(pairs)} paired, {len(table)} scored")
    return write_report(config, table, unpaired)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML job config (configs/evaluate/)")
    parser.add_argument("--generated", type=cli_location, help="folder of generated videos, a path or URI (overrides the config)")
    parser.add_argument("--reference", type=cli_location, help="folder of ground-truth videos with the same file stems (a path or URI)")
    parser.add_argument("--output-dir", type=Path, help="override output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {key: getattr(args, key) for key in ("generated", "reference", "output_dir") if getattr(args, key)}
    config = load_config(EvaluateJobConfig, args.config, overrides)
    check_durable_output("output_dir", config.output_dir)
    init_ray()
    print(json.dumps(run_job("evaluate", lambda: run(config))))


if __name__ == "__main__":
    main()
