"""Ray Data preprocessing: videos -> training rows, or a folder of motion files -> warp-operator rows.

On a cluster: `ray job submit --working-dir . -- python -m ray_jobs.preprocess --config C.yaml`; locally the
same command starts its own Ray. A config with `videos:` runs the video job (pipelines/preprocess/stages.py: probe
as tasks, then pose, decode, render, encode and write, each its own actor pool, streamed with backpressure); a
config with `input_dir:` runs the motion-folder job. Every item ends written or failed, and `summary.json` says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
import yaml

from pipelines.io.config import MAX_ACTOR_RESTARTS, StageResources, load_config, write_resolved_config
from pipelines.io.manifest import list_videos
from pipelines.io.training_rows import SUMMARY_NAME, RowStore
from pipelines.preprocess.config import VideoJobConfig
from pipelines.preprocess.motion_folder import MotionNoiseJobConfig, MotionNoiseWorker, list_motion_files, rows_to_table
from pipelines.preprocess.stages import DecodeStage, EncodeStage, PoseStage, ProbeStage, RenderStage, Tally, WriteStage
from ray_jobs.common import actor_stage, init_ray, run_job, task_stage
from ray_jobs.locations import check_durable_output, cli_location

log = logging.getLogger("humanim.preprocess")
MAX_INPUT_BLOCKS = 1024


# The video job


Stage = Callable[[ray.data.Dataset], ray.data.Dataset]


def video_stages(config: VideoJobConfig, written: frozenset[str]) -> list[tuple[str, Stage]]:
    """The job's stages in order, each a Dataset -> Dataset step with its own resources."""
    res = config.resources
    return [
        ("probe", partial(task_stage, stage=ProbeStage, resources=res.probe, args=(config, written))),
        _on_actors("pose", PoseStage, res.pose, config),
        _on_actors("decode", DecodeStage, res.decode, config),
        _on_actors("render", RenderStage, res.render, config, res.render.device),
        _on_actors("encode", EncodeStage, res.encode, config, res.encode.device),
        _on_actors("write", WriteStage, res.write, config),
    ]


def _on_actors(name: str, stage: type, resources: StageResources, *args: Any) -> tuple[str, Stage]:
    """A stage on its own actor pool, whose actors Ray names after the stage."""
    return name, partial(actor_stage, stage=stage, resources=resources, args=args, name=name)


def video_items(items: list[dict[str, Any]]) -> ray.data.Dataset:
    """The job's input, in up to MAX_INPUT_BLOCKS blocks so the probe tasks spread over the cluster."""
    return ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_INPUT_BLOCKS)))


def video_pipeline(config: VideoJobConfig, items: list[dict[str, Any]], written: frozenset[str]) -> ray.data.Dataset:
    """The streaming dataset of clip outcomes (clip keys, status, stage, error) for `items`."""
    data = video_items(items)
    for _, stage in video_stages(config, written):
        data = stage(data)
    return data


def run_videos(config: VideoJobConfig) -> dict[str, Any]:
    """Training rows for every clip of `config.videos` not written yet; returns the run's summary."""
    items = [item.as_dict() for item in list_videos(config.videos)]
    store = RowStore(config.output_dir)
    written = store.start_run(config)
    tally = Tally()
    last_log = time.monotonic()
    if items:
        for outcomes in video_pipeline(config, items, written).iter_batches(batch_size=None, batch_format="pyarrow"):
            tally.add(outcomes)
            if time.monotonic() - last_log >= config.progress_interval_s:
                log.info(tally.progress_line())
                last_log = time.monotonic()
    store.write_failures(tally.failures_table())
    lost = sorted({item["video_id"] for item in items} - tally.video_ids)
    if lost:
        raise RuntimeError(f"lost videos: no clip of {lost} was written, failed or skipped")
    summary = tally.summary(len(items))
    store.write_text(SUMMARY_NAME, json.dumps(summary, indent=2))
    log.info(tally.progress_line())
    return summary


# The motion-folder job


class NoiseStage:
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
                NoiseStage,
                fn_constructor_args=(config,),
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(config.num_workers, len(paths))),
                num_cpus=config.cpus_per_worker,
                max_restarts=MAX_ACTOR_RESTARTS,  # Ray Data's default restarts actors that cannot start forever
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
    (output / SUMMARY_NAME).write_text(json.dumps(counts, indent=2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML job config (configs/preprocess/)")
    parser.add_argument("--input-dir", type=Path, help="override the input (input_dir, or videos for the video job)")
    parser.add_argument("--output-dir", type=cli_location, help="override output_dir (a path or URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    is_video_job = _is_video_config(args.config)
    input_key = "videos" if is_video_job else "input_dir"
    overrides = {key: value for key, value in ((input_key, args.input_dir), ("output_dir", args.output_dir)) if value}
    config = load_config(VideoJobConfig if is_video_job else MotionNoiseJobConfig, args.config, overrides)
    check_durable_output("output_dir", config.output_dir)
    init_ray()
    print(json.dumps(run_job("preprocess", lambda: run_videos(config) if is_video_job else run(config))))


def _is_video_config(path: Path) -> bool:
    """A config with `videos:` is the video job's; anything else is left to the motion-folder job's validation."""
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return isinstance(data, dict) and "videos" in data


if __name__ == "__main__":
    main()
