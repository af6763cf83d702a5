"""Where a job submitted to a cluster may write.

`ray job submit --working-dir .` runs the job in Ray's per-job copy of the folder
(`.../runtime_resources/working_dir_files/_ray_pkg_<hash>/`). Files written there live on the head node only and
vanish with the Ray session, and the next submission (another hash) cannot find them. So under a Ray working_dir,
outputs must go to an absolute path on storage every node mounts, or to a URI where the field takes one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.paths import is_uri

# Set by Ray's job manager for a submitted job's driver: the job config, with its runtime_env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def cli_location(text: str) -> Path | str:
    """An argparse type for outputs that take a path or a URI: URIs as typed, local paths as `Path`s (relative to
    the shell's directory, see `pipelines.io.config.load_config`)."""
    return text if is_uri(text) else Path(text)


def ray_working_dir_copy() -> Path | None:
    """The per-job copy this process runs in when it is a job submitted with a working_dir, else None."""
    job_config = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}")
    if not (job_config.get("runtime_env") or {}).get("working_dir"):
        return None
    return Path.cwd().resolve()


def check_durable_output(field: str, location: str | Path) -> None:
    """Refuse a local output inside the per-job copy of a Ray working_dir (see the module docstring)."""
    copy = ray_working_dir_copy()
    if copy is None or is_uri(str(location)):
        return
    path = Path(location).resolve()
    if path == copy or copy in path.parents:
        raise ValueError(
            f"{field}: {path} lies in Ray's per-job copy of the working dir ({copy}), which is deleted with the Ray "
            "session and differs per submission; give an absolute path on storage every node mounts "
            "(or a URI such as s3://bucket/prefix where this field takes one)"
        )
