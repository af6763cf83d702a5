"""Shared fixtures: one local Ray per test session, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# Set before Ray is imported anywhere: no token auth or usage stats for the local test cluster,
# and a short temp dir of its own (Ray's socket paths have a length limit).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))

# The tests' tensors are tiny: intra-op threads only add overhead, and they stall when the 2-core CI
# machine is busy with Ray workers.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs CUDA")
    if os.environ.get("HUMANIM_SLOW") != "1":
        skips["slow"] = pytest.mark.skip(reason="slow (minutes, PyPI): set HUMANIM_SLOW=1 to run it")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


def start_local_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray shared by every test that needs one (each start costs seconds)."""
    import ray

    start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture()
def no_local_ray():
    """This process's Ray stopped for the test and started again after it: a second Ray on the machine (a test's
    own head) needs the dashboard agent's fixed port (52365) that the first one holds."""
    import ray

    running = ray.is_initialized()
    if running:
        ray.shutdown()
    yield
    if running:
        start_local_ray()
