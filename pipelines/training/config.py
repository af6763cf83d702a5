"""The fine-tuning job's config: what to train, on which rows, with which DeepSpeed setup, and how to report it.

Everything that can be checked from the config alone is checked here (pydantic, errors name the field); the
row folder is checked by `pipelines.training.schedule.plan_rows`. Both run in the driver before any worker starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.backbones.config import BackboneConfig, GenerationOptions, LoraSettings
from models.losses import LossConfig
from models.paths import PROJECT_ROOT, ProjectPath, ProjectUri, project_path

BACKBONE_CONFIGS = PROJECT_ROOT / "configs" / "backbones"

# Seconds a worker may wait in one collective (NCCL/gloo) before the job fails and restarts from its last
# checkpoint: Ray Train's TorchConfig default, passed explicitly by ray_jobs/train.py.
COLLECTIVE_TIMEOUT_S = 1800

# Validation's default time bound. Workers validate in rounds of one row each, so a worker waits in a collective at
# most one row's spread, and training stalls at most max_seconds plus one round. CogVideoX-5B-I2V at 49x480x720,
# 50 steps with CFG, is about 90 s a video on an H100: 8 rows on 8 GPUs are one round (90 s; it was 8 x 90 = 720 s
# on rank 0 while 7 ranks waited in a collective), on 2 GPUs four rounds (360 s); whatever the rows, a validation
# ends within 600 + 90 = 690 s, under 40% of the 1800 s collective timeout even for a worker that waited it all.
VALIDATION_MAX_SECONDS = 600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def resolve_backbone(value: Any) -> dict[str, Any]:
    """A backbone config as a validated mapping, from a YAML path, a name under configs/backbones/, or a mapping.
    Its weights folders come out absolute (`models.paths`), so Ray Train workers find them from any directory."""
    if isinstance(value, dict):
        return BackboneConfig.model_validate(value).model_dump(mode="json")
    if not isinstance(value, (str, Path)):
        # A ValueError, not a TypeError: pydantic reports ValueErrors as field errors.
        raise ValueError(f"expected a backbone YAML path or name, got {type(value).__name__}")  # noqa: TRY004
    path = project_path(value)
    if not path.is_file():
        path = BACKBONE_CONFIGS / f"{value}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BACKBONE_CONFIGS.glob("*.yaml"))
        raise ValueError(f"unknown backbone {str(value)!r}: neither a YAML file nor one of {known}")
    return BackboneConfig.model_validate(yaml.safe_load(path.read_text())).model_dump(mode="json")


class DataSettings(_Strict):
    """Training rows written by the preprocessing job."""

    rows_dir: ProjectUri = Field(description="the preprocessing job's output_dir (holding rows/): a path or pyarrow URI")
    validation_rows: int = Field(0, ge=0, description="rows held out of training for validation")
    prefetch_batches: int = Field(
        2, ge=0, description="micro-batches each worker reads and collates ahead of the step (a background thread)"
    )


class OptimizerSettings(_Strict):
    """AdamW (torch's: no compiled ops) with linear warm-up, then constant, then (with `decay_steps`) a linear fall
    to zero over the run's last steps (warmup-stable-decay); per-part learning rates default to `lr`."""

    lr: float = Field(1e-4, gt=0, description="LoRA (or full transformer) learning rate")
    padaln_lr: float | None = Field(None, gt=0)
    motion_decoder_lr: float | None = Field(None, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int = Field(
        0, ge=0, description="the last optimizer steps of the run, over which the learning rates fall linearly to 0; "
        "0: constant after warm-up. The schedule depends only on the step, so a run extended before its decay "
        "starts (max_steps raised, rerun to resume) follows it as a longer run would",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 turns it off")


class PadaLNSettings(_Strict):
    enabled: bool = False
    mlp_dim: int = Field(256, gt=0)


class ValidationSettings(_Strict):
    """Generation on the held-out rows every `every_steps` steps, split over the workers: an MP4 per row,
    L1/PSNR/SSIM to its latents, rows past `max_seconds` skipped (pipelines/training/validation.py)."""

    every_steps: int | None = Field(None, gt=0, description="None turns validation off")
    num_inference_steps: int = Field(25, gt=0)
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance against the empty prompt")
    gamma: float = Field(0.5, ge=0.0, le=1.0, description="articulated-noise degradation")
    seed: int = 0
    fps: float = Field(8.0, gt=0, description="frame rate of the MP4s")
    max_seconds: float = Field(
        VALIDATION_MAX_SECONDS, gt=0, description="after this many seconds (the slowest worker's) no new round of "
        "rows starts: the rest are skipped and recorded as skipped; a started round finishes",
    )


class MlflowSettings(_Strict):
    tracking_uri: str
    experiment: str = "humanim"


class WandbSettings(_Strict):
    project: str
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"


class LoggingSettings(_Strict):
    """Metric sinks on rank 0: metrics.jsonl always, TensorBoard by default, MLflow or W&B when configured."""

    every_steps: int = Field(1, gt=0, description="steps between sink writes")
    report_every_steps: int | None = Field(
        1, gt=0, description="steps between ray.train.report calls besides checkpoints (None: with checkpoints only); "
        "each is a barrier, and Ray Train V2 consumes at most one about every 2 s",
    )
    tensorboard: bool = True
    mlflow: MlflowSettings | None = None
    wandb: WandbSettings | None = None


class WorkerResources(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int = Field(1, ge=1, description="intra-op threads per CPU worker")
    max_start_failures: int = Field(
        2,
        ge=-1,
        description="failed worker-group starts tolerated before the job fails (a broken environment, workers not "
        "placed within Ray Train's start timeout); -1: no limit (Ray Train's default, which retries a worker group "
        "that can never start forever), e.g. while an autoscaler adds GPU nodes",
    )


class FailureInjection(_Strict):
    """Testing aid: one worker exits once after a step, so FailureConfig restarts the run from its checkpoint."""

    after_step: int = Field(gt=0)
    rank: int = Field(0, ge=0)


class TrainJobConfig(_Strict):
    """The fine-tuning job; see configs/train/."""

    backbone: dict[str, Any] = Field(description="a backbone YAML path, a name under configs/backbones/, or a mapping")
    data: DataSettings
    output_dir: ProjectPath = Field(description="run folders go here (<output_dir>/<run_name>); every worker must reach it")
    run_name: str = Field("train", pattern=r"^[A-Za-z0-9._-]+$")
    deepspeed: ProjectPath = Field(description="DeepSpeed JSON (configs/deepspeed/); 'auto' values come from this config")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA on the transformer, or all its weights")
    transformer_init: Literal["pretrained", "random"] = Field(
        "pretrained", description="start from the backbone's transformer weights, or from fresh ones of its "
        "architecture drawn with `seed` (a toy trained from scratch: the folder may already hold a trained one); "
        "random needs finetune: full"
    )
    lora: LoraSettings | None = Field(None, description="overrides the backbone config's lora (rank, alpha, targets)")
    padaln: PadaLNSettings = PadaLNSettings()
    loss: LossConfig = LossConfig()
    motion_decoder_channels: int = Field(64, ge=2)
    gradient_checkpointing: bool = True
    batch_size: int = Field(gt=0, description="rows per optimizer step over all workers")
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_steps: int = Field(gt=0, description="optimizer steps")
    checkpoint_every_steps: int = Field(gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the latest checkpoint; -1: no limit")
    seed: int = Field(0, ge=0)
    optimizer: OptimizerSettings = OptimizerSettings()
    validation: ValidationSettings = ValidationSettings()
    logging: LoggingSettings = LoggingSettings()
    resources: WorkerResources = WorkerResources()
    inject_failure: FailureInjection | None = None

    @field_validator("backbone", mode="before")
    @classmethod
    def _backbone(cls, value: Any) -> dict[str, Any]:
        return resolve_backbone(value)

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_file(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"DeepSpeed config {str(value)!r} not found; see configs/deepspeed/zero2.json")
        try:
            settings = json.loads(value.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config {str(value)!r} is not valid JSON: {err}") from None
        if not isinstance(settings, dict) or "zero_optimization" not in settings:
            raise ValueError(f"DeepSpeed config {str(value)!r} needs a zero_optimization section")
        return value

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> TrainJobConfig:
        share = self.resources.num_workers * self.gradient_accumulation_steps
        if self.batch_size % share:
            raise ValueError(
                f"batch_size: {self.batch_size} rows per step cannot be split evenly across "
                f"{self.resources.num_workers} workers x {self.gradient_accumulation_steps} accumulation steps"
            )
        if self.transformer_init == "random" and self.finetune != "full":
            raise ValueError("transformer_init: random trains every weight, so it needs finetune: full")
        if self.inject_failure is not None and self.inject_failure.rank >= self.resources.num_workers:
            raise ValueError(f"inject_failure.rank: {self.inject_failure.rank} but there are "
                             f"{self.resources.num_workers} workers")
        if self.lora is not None:
            self.backbone = {**self.backbone, "lora": self.lora.model_dump(mode="json")}
            self.lora = None
        return self

    def backbone_config(self) -> BackboneConfig:
        """The backbone with its generation options at their defaults: the step cache's hooks on the transformer
        would also catch training's forwards, validation should show the model, not the cache, and compiled blocks
        or another attention implementation would hold for validation only."""
        defaults = {name: BackboneConfig.model_fields[name].get_default(call_default_factory=True)
                    for name in GenerationOptions.model_fields}
        return BackboneConfig.model_validate({**self.backbone, **defaults})

    @property
    def micro_batch_size(self) -> int:
        """Rows per worker per forward pass."""
        return self.batch_size // (self.resources.num_workers * self.gradient_accumulation_steps)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name

    @property
    def uses_lora(self) -> bool:
        return self.finetune == "lora"
