"""Ray Data job: a folder of motion files -> warp-operator rows (Parquet), previews and failures.

On a cluster: `ray job submit --working-dir . -- python -m ray_jobs.preprocess --config C.yaml`;
locally the same command starts its own Ray. Every item ends in exactly one of `operators/` or
`failures/`; `summary.json` checks items in = written + failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import ray
import ray.data

from pipelines.noise_items import MotionNoiseJobConfig, MotionNoiseWorker, list_motion_files, rows_to_table
from pipelines.config import load_config, write_resolved_config
from ray_jobs.common import init_ray


class _NoiseActor:
    """Ray Data actor: one body model per actor, one row per motion file."""

    def __init__(self, config: MotionNoiseJobConfig) -> None:
        import torch

        torch.set_num_threads(max(1, int(config.cpus_per_worker)))
        self.worker = MotionNoiseWorker(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table([self.worker(path) for path in batch.column("path").to_pylist()])


def run(config: MotionNoiseJobConfig) -> dict[str, int]:
    """Build operator rows for every motion file of `config.input_dir`; returns the item counts."""
    paths = [str(p) for p in list_motion_files(config.input_dir)]
    output = config.output_dir
    write_resolved_config(config, output)
    counts = {"items": len(paths), "written": 0, "failed": 0}
    if paths:
        rows = (
            ray.data.from_items([{"path": path} for path in paths])
            .map_batches(
                _NoiseActor,
                fn_constructor_args=(config,),
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(config.num_workers, len(paths))),
                num_cpus=config.cpus_per_worker,
            )
            .materialize()
        )
        built = rows.filter(expr="status == 'ok'")
        failed = rows.filter(expr="status == 'failed'")
        counts["written"], counts["failed"] = built.count(), failed.count()
        built.write_parquet(str(output / "operators"))
        failed.drop_columns(["indptr", "indices", "values"]).write_parquet(str(output / "failures"))
    if counts["written"] + counts["failed"] != counts["items"]:
        raise RuntimeError(f"lost items: {counts}")
    (output / "summary.json").write_text(json.dumps(counts, indent=2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML job config (configs/preprocess/)")
    parser.add_argument("--input-dir", type=Path, help="override input_dir")
    parser.add_argument("--output-dir", type=Path, help="override output_dir")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("input_dir", args.input_dir), ("output_dir", args.output_dir)) if v}
    config = load_config(MotionNoiseJobConfig, args.config, overrides)
    init_ray()
    print(json.dumps(run(config)))


if __name__ == "__main__":
    main()
