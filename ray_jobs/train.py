"""Ray Train + DeepSpeed fine-tuning on the preprocessing job's training rows.

On a cluster: `ray job submit --working-dir . -- python -m ray_jobs.train --config configs/train/<x>.yaml`;
locally the same command (or `humanim train`) starts its own Ray. The driver checks the config and the rows
(pipelines/training/config.py, pipelines/training/schedule.py) before any worker starts, writes the resolved config to
the run folder `<output_dir>/<run_name>/`, and runs a TorchTrainer over `resources.num_workers` workers. Each
worker reads its rows of every step by key and collates them into training batches a few micro-batches ahead
of the step in a background thread (pipelines/training/row_stream.py) and runs the DeepSpeed steps of
pipelines/training/engine.py. Checkpoints
(DeepSpeed state, RNG, the export) go through `ray.train.report`; a failed worker group restarts from the
latest one (FailureConfig), and so does a rerun of the job with the same run folder. The run folder also holds
`metrics.jsonl`, `tensorboard/`, `validation/step_<n>/` (`*.mp4`, `summary.json`: done and skipped rows) and, at
the end, `export/` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer, get_device

from pipelines.io.config import load_config, write_resolved_config
from pipelines.io.filesystem import resolve_uri
from pipelines.io.row_reader import keys_table, read_rows
from pipelines.training.config import COLLECTIVE_TIMEOUT_S, TrainJobConfig
from pipelines.training.engine import (
    EXPORT_DIR,
    TrainState,
    build_engine,
    build_modules,
    build_training_adapter,
    eval_mode,
    final_export,
    from_workers,
    load_checkpoint,
    optimizer_step,
    peak_memory_mb,
    per_worker,
    preflight,
    save_checkpoint,
)
from pipelines.training.metrics import MetricSinks
from pipelines.training.row_stream import scheduled_batches
from pipelines.training.schedule import RowPlan, steps_per_epoch
from pipelines.training.validation import VALIDATION_DIR, validate
from ray_jobs.common import init_ray, run_job
from ray_jobs.locations import check_durable_output

log = logging.getLogger("humanim.train")
FAILURE_MARKER = ".failure_injected"


# The worker


def _inject_failure(config: TrainJobConfig, step: int, rank: int) -> None:
    injection = config.inject_failure
    if injection is None or (step, rank) != (injection.after_step, injection.rank):
        return
    marker = config.run_dir / FAILURE_MARKER
    if not marker.exists():
        marker.touch()
        # After the checkpoints reported so far are committed: Ray Train V2 registers a report only when its
        # controller polls the worker (about every 2 s), and a crash before that loses the newest checkpoint.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        log.warning("inject_failure: worker %d exits after step %d", rank, step)
        os._exit(1)


def _report(engine: Any, state: TrainState, metrics: dict[str, float], config: TrainJobConfig, rank: int) -> None:
    """Report the step's metrics to Ray Train when due, with a checkpoint every `checkpoint_every_steps` and at the
    end (every worker writes its share into a local folder; Ray Train merges them into the run folder)."""
    step = state.step
    if step % config.checkpoint_every_steps == 0 or step == config.max_steps:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as directory:
            save_checkpoint(engine, Path(directory), state, rank)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({"step": step, **metrics}, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")
    elif config.logging.report_every_steps and step % config.logging.report_every_steps == 0:
        ray.train.report({"step": step, **metrics})


def train_worker(settings: dict[str, Any]) -> None:
    """The per-worker training loop (Ray Train's train_loop_per_worker)."""
    config = TrainJobConfig.model_validate(settings["config"])
    plan: RowPlan = settings["plan"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if config.resources.use_gpu:
        device = get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(config.resources.torch_threads)
    pipeline, modules = build_modules(config, build_training_adapter(config, plan, device))
    engine = build_engine(modules, config)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(engine, Path(directory), rank)
        log.info("worker %d resumed after step %d", rank, state.step)

    zero3 = engine.zero_optimization_stage() == 3
    validation = config.validation
    # Every worker validates its share of the held-out rows (pipelines/training/validation.py).
    validating = validation.every_steps is not None and bool(plan.validation)
    held_out = read_rows(resolve_uri(plan.rows_uri)[0], keys_table(list(plan.validation))) if validating else None
    sinks = MetricSinks(config.logging, config.run_dir, config.run_name, settings["config"]) if rank == 0 else None
    per_epoch = steps_per_epoch(len(plan.train), config.batch_size)
    engine.train()
    try:
        last = time.perf_counter()
        steps = range(state.step, config.max_steps)
        for batches in scheduled_batches(plan, config.seed, steps, rank, world_size, config.micro_batch_size,
                                         config.gradient_accumulation_steps, pipeline.adapter, device,
                                         config.data.prefetch_batches):
            step = state.step + 1
            metrics = optimizer_step(engine, batches, config, step, rank)
            state.step = step
            now = time.perf_counter()
            state.train_s += now - last
            memory = per_worker(peak_memory_mb())
            metrics.update(
                samples_per_s=config.batch_size / (now - last), epoch=(step - 1) // per_epoch, train_s=state.train_s,
                peak_memory_mb=max(memory), **{f"peak_memory_mb_rank{index}": value for index, value in enumerate(memory)},
            )
            if validating and step % validation.every_steps == 0:
                folder = config.run_dir / VALIDATION_DIR / f"step_{step:08d}"
                with eval_mode(engine):
                    report = validate(pipeline, held_out, validation, config.loss, folder, rank, world_size,
                                      from_workers, pad=zero3)
                metrics.update(report.metrics())
                if rank == 0:
                    report.write(folder, validation.max_seconds)
                    if metrics["val_rows_skipped"]:
                        log.warning("validation at step %d: %d rows skipped after %.0f s (validation.max_seconds)",
                                    step, metrics["val_rows_skipped"], report.seconds)
            if sinks is not None and (step % config.logging.every_steps == 0 or step == config.max_steps):
                sinks.log(metrics, step)
            _report(engine, state, metrics, config, rank)
            _inject_failure(config, step, rank)
            last = time.perf_counter()
        final_export(engine, config.run_dir / EXPORT_DIR, rank)
    finally:
        if sinks is not None:
            sinks.close()


# The driver


def run(config: TrainJobConfig) -> dict[str, Any]:
    """Check everything, then train (on the Ray of RAY_ADDRESS, the running one, or a new local one); returns
    the run's summary. A rerun with the same run folder resumes from its latest checkpoint."""
    plan = preflight(config)
    write_resolved_config(config, config.run_dir)
    init_ray()
    resources = config.resources
    per_worker_resources = {"CPU": resources.cpus_per_worker, **({"GPU": 1} if resources.use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "plan": plan},
        torch_config=TorchConfig(timeout_s=COLLECTIVE_TIMEOUT_S),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker_resources
        ),
        run_config=ray.train.RunConfig(
            name=config.run_name,
            storage_path=str(config.output_dir),
            failure_config=ray.train.FailureConfig(
                max_failures=config.max_failures, controller_failure_limit=resources.max_start_failures
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )
    started = time.monotonic()
    result = trainer.fit()
    return {
        "run_dir": str(config.run_dir),
        "export": str(config.run_dir / EXPORT_DIR),
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
        "train_rows": len(plan.train),
        "validation_rows": len(plan.validation),
        "seconds": round(time.monotonic() - started, 2),
        "metrics": result.metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML train config (configs/train/)")
    parser.add_argument("--output-dir", type=Path, help="override output_dir")
    parser.add_argument("--run-name", help="override run_name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {key: value for key, value in (("output_dir", args.output_dir), ("run_name", args.run_name)) if value}
    config = load_config(TrainJobConfig, args.config, overrides)
    check_durable_output("output_dir", config.output_dir)
    print(json.dumps(run_job("train", lambda: run(config)), default=str))


if __name__ == "__main__":
    main()
