"""Where jobs look for their inputs and write their outputs: config paths are relative to the project root from
any working directory, command-line paths to the shell's directory; a job submitted with a Ray working_dir finds
weights at absolute paths, writes where its config says, and refuses outputs inside Ray's per-job copy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import CONFIGS, ROOT

from models.backbones import build_adapter, load_backbone_config
from models.paths import PROJECT_ROOT
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.render_manifest import RenderJobConfig
from pipelines.generation.render_store import METADATA_NAME
from pipelines.io.config import load_config
from pipelines.io.motion import save_motion
from pipelines.training.config import TrainJobConfig
from ray_jobs.locations import JOB_CONFIG_ENV, check_durable_output

RESOURCES = {
    "prepare": {"workers": 1, "num_cpus": 0.25},
    "generate": {"workers": 1, "num_cpus": 0.5},
    "encode": {"workers": 1, "num_cpus": 0.25},
}


def test_config_paths_are_relative_to_the_project_root_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # as under KubeRay (/home/ray) or a job's working_dir copy
    config_file = tmp_path / "render.yaml"
    config_file.write_text(yaml.safe_dump({
        "manifest": "out/renders/manifest.jsonl", "output_dir": "out/renders",
        "backbone": "configs/backbones/tiny-cogvideox.yaml",
    }))
    render = load_config(RenderJobConfig, config_file)
    assert render.backbone == PROJECT_ROOT / "configs/backbones/tiny-cogvideox.yaml"
    assert render.output_dir == str(PROJECT_ROOT / "out/renders")
    assert render.manifest == PROJECT_ROOT / "out/renders/manifest.jsonl"
    # command-line paths are the user's: relative to the shell's directory; URIs stay as they are
    typed = load_config(RenderJobConfig, config_file, {"manifest": Path("m.jsonl"), "output_dir": "s3://bucket/r"})
    assert typed.manifest == tmp_path / "m.jsonl" and typed.output_dir == "s3://bucket/r"

    assert load_backbone_config(CONFIGS / "toy-cogvideox.yaml").path == PROJECT_ROOT / "weights/toy-cogvideox"
    train = load_config(TrainJobConfig, ROOT / "configs/train/tiny-cpu.yaml")
    assert train.data.rows_dir == str(PROJECT_ROOT / "out/video-rows")
    assert train.output_dir == PROJECT_ROOT / "out/train"
    assert train.deepspeed == PROJECT_ROOT / "configs/deepspeed/zero2.json"


def test_outputs_inside_a_ray_working_dir_copy_are_refused(tmp_path, monkeypatch) -> None:
    copy = tmp_path / "_ray_pkg_0123"
    copy.mkdir()
    monkeypatch.chdir(copy)
    check_durable_output("output_dir", copy / "out")  # not a submitted job: anything goes
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}))
    for inside in (copy / "out" / "renders", copy):
        with pytest.raises(ValueError, match="output_dir: .* per-job copy of the working dir"):
            check_durable_output("output_dir", inside)
    check_durable_output("output_dir", tmp_path / "shared" / "renders")
    check_durable_output("output_dir", "s3://bucket/renders")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def head(no_local_ray):
    """A local Ray head with the job server, in its own process, stopped at the end (never `ray stop`, which would
    stop every Ray on the machine)."""
    port = _free_port()
    script = textwrap.dedent(f"""
        import sys, ray
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port={port})
        print("ready", flush=True)
        sys.stdin.readline()
        ray.shutdown()
    """)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "ready"
        _wait_for_job_agent(f"http://127.0.0.1:{port}", env)
        yield f"http://127.0.0.1:{port}", env
    finally:
        process.communicate("stop\n", timeout=120)


def _submit(address: str, env: dict[str, str], config: Path) -> subprocess.CompletedProcess:
    ray_cli = Path(sys.executable).parent / "ray"
    command = [str(ray_cli), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
               sys.executable, "-m", "ray_jobs.render", "--config", str(config)]
    for _ in range(3):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
        # Both submissions upload the same package (same content hash); Ray may still be deleting the first job's
        # copy when the second checks that it exists, and then the second cannot download it: submit again.
        if "Failed to download runtime_env file package" not in done.stdout + done.stderr:
            return done
        time.sleep(2)
    return done


def _wait_for_job_agent(address: str, env: dict[str, str]) -> None:
    """A fresh head's job agent may come up after `ray.init` returns: submit an empty job until one is taken."""
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--", "true"]
    for _ in range(30):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
        if done.returncode == 0:
            return
        if "No available agent" not in done.stdout + done.stderr:
            raise RuntimeError(f"the test head takes no jobs: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        time.sleep(2)
    raise TimeoutError(f"no job agent on {address} after a minute")


def test_a_submitted_job_finds_its_weights_and_writes_where_its_config_says(head, tmp_path) -> None:
    """`ray job submit --working-dir .`: weights/ and out/ are not uploaded (.gitignore), so the job reads weights
    from an absolute path and writes to one; a relative output_dir would land in the per-job copy and is refused."""
    address, env = head
    weights = tmp_path / "weights" / "tiny-cogvideox"
    build_adapter(load_backbone_config(CONFIGS / "tiny-cogvideox.yaml")).save_pretrained(weights)
    backbone = tmp_path / "backbone.yaml"
    backbone.write_text(yaml.safe_dump({
        "family": "cogvideox", "variant": "1.0", "path": str(weights), "dtype": "float32",
        "resolution": [32, 32], "num_frames": 9,
    }))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    PIL.Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(inputs / "person.png")
    save_motion(inputs / "walk.npz", make_demo_motion("walk", 9))
    (inputs / "manifest.jsonl").write_text(json.dumps({"id": "walk", "image": "person.png", "motion": "walk.npz"}))
    render = {
        "manifest": str(inputs / "manifest.jsonl"), "output_dir": str(tmp_path / "shared" / "renders"),
        "backbone": str(backbone), "noise": {"texture_size": 32, "supersample": 2},
        "defaults": {"steps": 1, "guidance": 1.0, "retarget": False},  # the job has no keypoint estimator
        "resources": RESOURCES,
    }
    config = tmp_path / "render.yaml"
    config.write_text(yaml.safe_dump(render))

    done = _submit(address, env, config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "shared" / "renders" / METADATA_NAME).to_pylist()
    assert [(row["id"], row["status"]) for row in rows] == [("walk", "ok")]
    assert rows[0]["output_path"] == str(tmp_path / "shared" / "renders" / "videos" / "walk.mp4")
    assert Path(rows[0]["output_path"]).stat().st_size > 0

    config.write_text(yaml.safe_dump({**render, "output_dir": "out/renders"}))
    refused = _submit(address, env, config)
    assert refused.returncode != 0
    assert "output_dir:" in refused.stdout + refused.stderr
    assert "per-job copy of the working dir" in refused.stdout + refused.stderr
