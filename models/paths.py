"""Where the paths in a config point: relative paths are relative to the project root (the folder holding
`configs/`), wherever the command runs.

A job does not run where it was typed: `ray job submit --working-dir .` runs it in Ray's per-job copy of the
folder, KubeRay in /home/ray, a Serve replica wherever its node puts it. Resolving against the project root makes
a config mean the same thing in all of them. Paths typed on a command line are the exception: they are relative
to the shell's directory (`load_config` makes them absolute before resolving). Weights and outputs on a cluster
belong on storage every node mounts (absolute paths) or in object storage (URIs, for the fields that take them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | Path) -> Path:
    """An absolute path: `path` itself, or `path` under the project root."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def is_uri(location: str) -> bool:
    """A location with a scheme (s3://, gs://, file://, ...), for a pyarrow filesystem."""
    return "://" in location


def resolve_location(location: str) -> str:
    """A `pyarrow.fs` location: URIs as they are, local paths made absolute under the project root."""
    return location if is_uri(location) else str(project_path(location))


def _as_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# Config field types that resolve as described above (a location may also be given as a `Path`).
ProjectPath = Annotated[Path, AfterValidator(project_path)]
ProjectUri = Annotated[str, BeforeValidator(_as_text), AfterValidator(resolve_location)]
