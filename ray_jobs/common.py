"""Ray wiring shared by the job entry points."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

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
        ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": quiet_dashboardless_workers})


def quiet_dashboardless_workers() -> None:
    """Worker setup for the local Ray `init_ray` starts without a dashboard. Ray Train's placement-group cleaner asks
    the state API (which the dashboard serves) every second whether the train controller lives, and warns at each
    failure for the whole run; a local Ray ends with its driver, so there is nothing left for it to clean."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


class StageActor:
    """Ray Data actor around one job stage (a callable on pyarrow batches), built once per actor."""

    def __init__(self, stage: type, threads: int, *args: Any) -> None:
        import torch

        torch.set_num_threads(threads)
        self.stage = stage(*args)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def actor_stage(
    data: ray.data.Dataset, stage: type, resources: StageResources, args: tuple, name: str
) -> ray.data.Dataset:
    """`data` through `stage(*args)` on an actor pool sized by `resources`; Ray names its actors after `name`
    (`MapBatches(<name>)`), so `stage_failure` can tell which stage's actors died."""
    return data.map_batches(
        named_actor(name),
        fn_constructor_args=(stage, max(1, int(resources.num_cpus)), *args),
        batch_size=resources.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            min_size=resources.workers, max_size=resources.max_workers or resources.workers
        ),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        max_restarts=resources.max_restarts,  # Ray Data's default restarts forever, also actors that cannot start
        **({"runtime_env": resources.runtime_env} if resources.runtime_env else {}),
    )


def named_actor(name: str) -> type[StageActor]:
    """A StageActor subclass called `name`: Ray Data names the operator and its actors after the class."""
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ValueError(f"stage name must be a word, got {name!r}")
    return type(name, (StageActor,), {"__module__": __name__, "__qualname__": name})


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


# Failing fast

_ACTOR_NAME = re.compile(r"MapBatches\(([\w-]+)\)")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*", re.MULTILINE)
_CANNOT_START = ("creation task", "failed to import", "runtime env", "runtime_env")
_TRAIN_START_ERRORS = ("WorkerGroupStartupFailedError", "WorkerGroupStartupTimeoutError")
Result = TypeVar("Result")


def stage_failure(error: BaseException) -> tuple[str, str] | None:
    """(stage name, cause) when `error` says a named stage's actors (Ray Data) or the training workers (Ray Train,
    stage "train") died or could not start, else None. The cause is the last exception line of the error's text
    (the import or constructor error raised in the actor)."""
    text = str(error)
    if _is_train_start_failure(error):
        stage = "train"
    elif isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.RuntimeEnvSetupError)):
        named = _ACTOR_NAME.search(text)
        if named is None:
            return None
        stage = named.group(1)
    else:
        return None
    causes = [line.strip() for line in _EXCEPTION_LINE.findall(text)]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return stage, causes[-1] if causes else first


def _is_train_start_failure(error: BaseException) -> bool:
    """Ray Train's ControllerError around a worker group that failed to start (or to be placed in time)."""
    failure = getattr(error, "controller_failure", None)
    return type(failure).__name__ in _TRAIN_START_ERRORS


def run_job(job: str, run: Callable[[], Result]) -> Result:
    """`run()`, except that a stage whose actors died ends the process non-zero with one last line
    `humanim <job>: stage '<name>' cannot start: <cause>` (or `... actors died: <cause>` once running)."""
    try:
        return run()
    except Exception as error:
        failure = stage_failure(error)
        if failure is None:
            raise
        cannot_start = _is_train_start_failure(error) or any(word in str(error) for word in _CANNOT_START)
        _exit_stage_failed(job, *failure, cannot_start=cannot_start)


def _exit_stage_failed(job: str, stage: str, cause: str, cannot_start: bool) -> NoReturn:
    what = "cannot start" if cannot_start else "actors died"
    ray.shutdown()  # before the line, so Ray's shutdown messages do not follow it
    sys.stdout.flush()
    print(f"humanim {job}: stage '{stage}' {what}: {cause}", file=sys.stderr, flush=True)
    sys.exit(1)
