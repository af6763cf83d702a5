"""YAML configs validated by pydantic; every run writes its resolved config next to its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.io.filesystem import resolve_uri, write_text

ConfigT = TypeVar("ConfigT", bound=BaseModel)
RESOLVED_CONFIG_NAME = "config.resolved.yaml"


class ConfigError(ValueError):
    """A config that does not validate; the message names each offending field."""


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate_config(schema: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {source}:\n{_describe(err)}") from None


def load_config(schema: type[ConfigT], path: str | Path, overrides: dict[str, Any] | None = None) -> ConfigT:
    """Read a YAML file, apply top-level overrides, validate against `schema`.

    Relative paths in the file are relative to the project root (`models.paths`); `Path` overrides come from a
    command line, so a relative one is relative to the current directory, as the user typed it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    typed = {key: value.absolute() if isinstance(value, Path) else value for key, value in (overrides or {}).items()}
    return validate_config(schema, {**data, **typed}, source=f"config {path}")


def write_resolved_config(config: BaseModel, output_dir: str | Path) -> str:
    """Write the fully resolved config (defaults filled in) as `output_dir/config.resolved.yaml`; `output_dir` is a
    local path or a pyarrow filesystem URI. Returns the file's path on its filesystem."""
    filesystem, root = resolve_uri(str(output_dir))
    path = f"{root}/{RESOLVED_CONFIG_NAME}"
    write_text(filesystem, path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


MAX_ACTOR_RESTARTS = 2  # an actor pool's default: finite, so actors that can never start fail the job


class StageResources(BaseModel):
    """One job stage's actor pool."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1, description="actors in the pool")
    max_workers: int | None = Field(None, ge=1, description="let the pool grow to this many actors")
    num_cpus: float = Field(1.0, gt=0, description="per actor")
    num_gpus: float = Field(0.0, ge=0, description="per actor; fractions share a GPU; 0 runs on the CPU")
    batch_size: int = Field(1, ge=1, description="items per call")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env of the actors, e.g. {pip: [...]} for an extra that needs its own packages"
    )
    max_restarts: int = Field(
        MAX_ACTOR_RESTARTS,
        ge=0,
        description="times an actor whose process died is restarted (a lost node, a crash); finite, so a stage whose "
        "actors can never start (a broken runtime_env) fails the job instead of restarting forever",
    )

    @property
    def device(self) -> str:
        """Where the stage's actors compute."""
        return "cuda" if self.num_gpus > 0 else "cpu"


class TaskResources(BaseModel):
    """A light job stage run as Ray tasks (nothing to load once per worker)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.25, gt=0, description="per task")
    batch_size: int = Field(4, ge=1, description="items per call")
