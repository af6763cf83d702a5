"""The Ray Data wiring every job shares: a stage class on an actor pool, with its resources and runtime_env."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import ray.cloudpickle
import ray.data

from pipelines.io.config import StageResources
from ray_jobs.common import actor_stage


class TagStage:
    """Appends the actor's HUMANIM_STAGE_TAG and the constructor's suffix to each id."""

    def __init__(self, suffix: str) -> None:
        self.tag = os.environ.get("HUMANIM_STAGE_TAG", "unset") + suffix

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"id": [f"{item}:{self.tag}" for item in batch.column("id").to_pylist()]})


def test_actor_stage_runs_the_stage_in_its_runtime_env(ray_local) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    data = ray.data.from_items([{"id": f"item{index}"} for index in range(3)])
    resources = StageResources(num_cpus=0.25, batch_size=2, runtime_env={"env_vars": {"HUMANIM_STAGE_TAG": "isolated"}})
    tagged = actor_stage(data, TagStage, resources, ("!",), "tag").take_all()
    assert sorted(row["id"] for row in tagged) == ["item0:isolated!", "item1:isolated!", "item2:isolated!"]
    plain = actor_stage(data, TagStage, resources.model_copy(update={"runtime_env": None}), ("",), "tag").take_all()
    assert {row["id"].split(":")[1] for row in plain} == {"unset"}
