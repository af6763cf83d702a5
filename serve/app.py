"""The humanim Ray Serve application: an HTTP ingress, a batching generation deployment for videos that fit the
backbone's window, and a long-video deployment for windowed generation beyond it. Wiring only: the logic lives
in serve.service, serve.worker and serve.api.

    serve run configs/serve/local.yaml          # or: humanim serve --config configs/serve/local.yaml
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import yaml
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from models.paths import resolve_location
from pipelines.io.config import validate_config
from serve.api import build_api
from serve.auth import ApiKeys
from serve.config import ServeConfig
from serve.jobs import JobRecord, JobStore
from serve.requests import BackboneInfo
from serve.retargeting import load_retargeter
from serve.service import JobService, ReplicaLost
from serve.worker import GenerationWorker, JobRef


def _replica_name() -> str:
    """This replica's actor name (what a job record's `worker` shows)."""
    return ray.get_runtime_context().get_actor_name() or f"replica-{uuid.uuid4().hex[:12]}"


@serve.deployment(name="Generation")
class Generation:
    """Videos within the backbone's window; `@serve.batch` collects requests, compatible ones run together."""

    def __init__(self, config: ServeConfig):
        self.worker = GenerationWorker(config, _replica_name())
        self.generate.set_max_batch_size(config.generation.batch.max_batch_size)
        self.generate.set_batch_wait_timeout_s(config.generation.batch.batch_wait_timeout_s)

    @serve.batch
    async def generate(self, jobs: list[JobRef]) -> list[str]:
        return await asyncio.to_thread(self.worker.run_batch, jobs)


@serve.deployment(name="LongVideo")
class LongVideo:
    """Videos longer than the backbone's window, generated in overlapping windows, one at a time."""

    def __init__(self, config: ServeConfig):
        self.worker = GenerationWorker(config, _replica_name())

    async def generate(self, job: JobRef) -> str:
        return (await asyncio.to_thread(self.worker.run_batch, [job]))[0]


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """The HTTP API; dispatches jobs to the generation deployments and reconciles job records. It runs the
    keypoint estimator and the photo fit that retarget a request's motion (serve.retargeting)."""

    def __init__(self, config: ServeConfig, generation: DeploymentHandle, long_video: DeploymentHandle):
        self.handles = {"generation": generation, "long_video": long_video}
        self.keys = ApiKeys(config.auth)
        self.limits = config.limits
        backbones = {name: BackboneInfo.load(name, entry) for name, entry in config.backbones.items()}
        store = JobStore(resolve_location(config.storage_uri))
        self.service = JobService(config, store, backbones, self._dispatch, owner=f"ingress-{uuid.uuid4().hex}",
                                  retargeter=load_retargeter(config))
        self._reconciler = asyncio.get_running_loop().create_task(self.service.reconcile_forever())

    async def _dispatch(self, record: JobRecord) -> str:
        try:
            return await self.handles[record.deployment].generate.remote(JobRef(record.id, record.attempt))
        except RayActorError as err:
            raise ReplicaLost(f"generation replica lost ({type(err).__name__})") from None

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.service, self.keys, self.limits)


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for a serve config (`args` of configs/serve/*.yaml, see serve.config.ServeConfig)."""
    config = validate_config(ServeConfig, args, source="serve config")
    generation = Generation.options(**config.generation.options()).bind(config)
    long_video = LongVideo.options(**config.long_video.options()).bind(config)
    return Ingress.options(**config.ingress.options()).bind(config, generation, long_video)


def run_config_file(path: str | Path, blocking: bool = True) -> None:
    """Deploy the applications of a Serve config file on Ray (local unless RAY_ADDRESS is set), as `serve run`
    does; with `blocking`, serve until interrupted, then shut Serve down."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"serve config not found: {path}")
    deploy = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in deploy.applications:
        if app.deployments or app.runtime_env:
            raise ValueError(
                f"{path}: application {app.name!r} sets `deployments` or `runtime_env`, which humanim serve does not "
                "apply; put deployment settings under args (ingress, generation, long_video) or use `serve run`"
            )
    if not ray.is_initialized():
        ray.init()  # the cluster named by RAY_ADDRESS, else a local Ray for this process
    serve.start(http_options=deploy.http_options.model_dump(exclude_unset=True), proxy_location=deploy.proxy_location)
    for app in deploy.applications:
        module, _, attribute = app.import_path.replace(":", ".").rpartition(".")
        builder = getattr(importlib.import_module(module), attribute)
        serve.run(builder(app.args), name=app.name, route_prefix=app.route_prefix)
    if not blocking:
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop on SIGTERM as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
