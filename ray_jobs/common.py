"""Ray wiring shared by the job entry points."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import ray
import ray.data

from pipelines.io.config import StageResources, TaskResources


def init_ray() -> None:
    """Join the cluster a job was submitted to (RAY_ADDRESS), else start a local Ray for this process."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(include_dashboard=False)


class StageActor:
    """Ray Data actor around one job stage (a callable on pyarrow batches), built once per actor."""

    def __init__(self, stage: type, threads: int, *args: Any) -> None:
        import torch

        torch.set_num_threads(threads)
        self.stage = stage(*args)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def actor_stage(data: ray.data.Dataset, stage: type, resources: StageResources, args: tuple) -> ray.data.Dataset:
    """`data` through `stage(*args)` on an actor pool sized by `resources`."""
    return data.map_batches(
        StageActor,
        fn_constructor_args=(stage, max(1, int(resources.num_cpus)), *args),
        batch_size=resources.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            min_size=resources.workers, max_size=resources.max_workers or resources.workers
        ),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        **({"runtime_env": resources.runtime_env} if resources.runtime_env else {}),
    )


def _run_task(batch: pa.Table, stage: type, *args: Any) -> pa.Table:
    """Ray Data task for a light stage: built per call."""
    return stage(*args)(batch)


def task_stage(data: ray.data.Dataset, stage: type, resources: TaskResources, args: tuple) -> ray.data.Dataset:
    """`data` through `stage(*args)` as Ray tasks (for stages with nothing to load once)."""
    return data.map_batches(
        _run_task,
        fn_args=(stage, *args),
        batch_size=resources.batch_size,
        batch_format="pyarrow",
        num_cpus=resources.num_cpus,
    )
