"""Where the fine-tuning metrics go on rank 0: `metrics.jsonl` in the run folder always, TensorBoard by default,
MLflow and W&B when configured (imported only then; `check_sinks` fails early when they are not installed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from pipelines.training.config import LoggingSettings

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}


def check_sinks(settings: LoggingSettings) -> None:
    """Raise a ValueError naming the field when a configured sink's package is not installed."""
    wanted = {"tensorboard": settings.tensorboard, "mlflow": settings.mlflow, "wandb": settings.wandb}
    for field, enabled in wanted.items():
        package = _PACKAGES[field]
        if enabled and importlib.util.find_spec(package) is None:
            raise ValueError(f"logging.{field}: configured, but the {package!r} package is not installed "
                             f"(pip install {package}), or turn it off")


class MetricSinks:
    """Logs `{name: value}` dicts with their step to every configured sink."""

    def __init__(self, settings: LoggingSettings, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        check_sinks(settings)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (run_dir / METRICS_NAME).open("a")
        self._tensorboard = None
        self._mlflow = None
        self._wandb = None
        if settings.tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        if settings.mlflow is not None:
            import mlflow

            mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
            mlflow.set_experiment(settings.mlflow.experiment)
            mlflow.start_run(run_name=run_name)
            mlflow.log_dict(config, "config.resolved.json")
            self._mlflow = mlflow
        if settings.wandb is not None:
            import wandb

            wandb.init(project=settings.wandb.project, entity=settings.wandb.entity, name=run_name, id=run_name,
                       resume="allow", dir=str(run_dir), mode=settings.wandb.mode, config=config)
            self._wandb = wandb

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        finite = {name: value for name, value in metrics.items() if math.isfinite(value)}
        if self._tensorboard is not None:
            for name, value in finite.items():
                self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(finite, step=step)
        if self._wandb is not None:
            self._wandb.log(finite, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()
