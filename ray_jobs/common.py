"""Ray wiring shared by the job entry points."""

from __future__ import annotations

import os

import ray


def init_ray() -> None:
    """Join the cluster a job was submitted to (RAY_ADDRESS), else start a local Ray for this process."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(include_dashboard=False)
