"""Ray Data job: a manifest of (reference image, motion and/or pose video, prompt) rows -> MP4s + metadata Parquet.

On a cluster: `ray job submit --working-dir . -- python -m ray_jobs.render --manifest M.jsonl --config C.yaml`;
locally the same command starts its own Ray. `--demo` first writes the demo manifest and its inputs where the
config's `manifest` points. Stages (pipelines/generation/render_stages.py): prepare on CPU actors, generate on an actor pool
(`resources.generate.num_gpus` GPUs per actor), encode on CPU actors, streamed with backpressure. Every row ends
written, failed or skipped (already done), and `summary.json` says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
import ray.data

from pipelines.demo.manifest import write_demo_manifest
from pipelines.generation.render_manifest import RenderJobConfig, read_render_manifest
from pipelines.generation.render_stages import EncodeStage, GenerateStage, PrepareStage, input_items
from pipelines.generation.render_store import SUMMARY_NAME, RenderStore
from pipelines.io.config import load_config, write_resolved_config
from ray_jobs.common import actor_stage, init_ray, run_job
from ray_jobs.locations import check_durable_output, cli_location

log = logging.getLogger("humanim.render")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "render" / "demo.yaml"


def render_pipeline(config: RenderJobConfig, rows: list[dict[str, Any]]) -> ray.data.Dataset:
    """The streaming dataset of metadata rows (one per manifest row) for `rows`."""
    resources = config.resources
    data = ray.data.from_arrow(input_items(rows))  # one block per row, so prepare spreads over the cluster
    data = actor_stage(data, PrepareStage, resources.prepare, (config,), "prepare")
    data = actor_stage(data, GenerateStage, resources.generate, (config, resources.generate.device), "generate")
    return actor_stage(data, EncodeStage, resources.encode, (config,), "encode")


def run(config: RenderJobConfig) -> dict[str, int]:
    """Render every manifest row not done yet; returns the item counts (items = written + failed + skipped)."""
    rows = read_render_manifest(config.manifest)
    store = RenderStore(config.output_dir)
    write_resolved_config(config, store.uri)
    done = store.done()
    todo = [row for row in rows if row["id"] not in done]
    counts = {"items": len(rows), "written": 0, "failed": 0, "skipped": len(rows) - len(todo)}
    seen: set[str] = set()
    last_log = time.monotonic()
    if todo:
        for outcomes in render_pipeline(config, todo).iter_batches(batch_size=None, batch_format="pyarrow"):
            store.append(outcomes)
            seen.update(outcomes.column("id").to_pylist())
            for status in outcomes.column("status").to_pylist():
                counts["written" if status == "ok" else "failed"] += 1
            if time.monotonic() - last_log >= config.progress_interval_s:
                log.info("%s", counts)
                last_log = time.monotonic()
    store.finish([row["id"] for row in rows])
    lost = sorted({row["id"] for row in todo} - seen)
    if lost:
        raise RuntimeError(f"lost items: {lost} were neither written nor failed ({counts})")
    summary: dict[str, Any] = dict(counts)
    if store.unreadable:  # set aside in metadata.unreadable/; their rows were rendered again
        summary["unreadable_metadata"] = dict(store.unreadable)
    store.write_text(SUMMARY_NAME, json.dumps(summary, indent=2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML job config (configs/render/)")
    parser.add_argument("--manifest", type=Path, help="override the config's manifest (.parquet, .jsonl or .csv)")
    parser.add_argument("--output-dir", type=cli_location, help="override output_dir (a path or pyarrow URI)")
    parser.add_argument("--demo", action="store_true", help="first write the demo manifest where `manifest` points")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {key: value for key, value in (("manifest", args.manifest), ("output_dir", args.output_dir)) if value}
    config = load_config(RenderJobConfig, args.config, overrides)
    check_durable_output("output_dir", config.output_dir)
    if args.demo:
        check_durable_output("manifest", config.manifest)
        backbone = config.backbone_config()
        frames = config.defaults.num_frames or backbone.num_frames or backbone.spec.default_num_frames
        write_demo_manifest(config.manifest, config.resolution(), frames)
    init_ray()
    print(json.dumps(run_job("render", lambda: run(config))))


if __name__ == "__main__":
    main()
