"""Backbone configuration: what to load (a diffusers-format folder or a tiny random model) and how to adapt it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import torch
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from models.noise_settings import NoiseSettings
from models.noise_warp import DEFAULT_SPATIAL_FACTOR
from models.paths import ProjectPath


@dataclass(frozen=True)
class VariantSpec:
    """Static facts about one released model of a backbone family."""

    name: str
    source: str
    frame_period: int
    frame_rule: str
    default_num_frames: int
    default_resolution: tuple[int, int]
    temporal_factor: int = 4  # the VAE's: frame 0 alone, then groups of 4

    def check_num_frames(self, num_frames: int) -> None:
        """Raise a ValueError saying which frame counts are valid unless `num_frames` is one of them."""
        if num_frames < 1 or (num_frames - 1) % self.frame_period:
            raise ValueError(
                f"{self.name} needs {self.frame_rule}, e.g. {self.default_num_frames}; got {num_frames}"
            )

    def latent_num_frames(self, num_frames: int) -> int:
        """Latent frames of a `num_frames` video (the adapters' own count, without loading the VAE)."""
        return (num_frames - 1) // self.temporal_factor + 1

    def longest_num_frames(self, available: int) -> int:
        """The longest valid frame count that `available` driving frames cover."""
        if available < 1:
            raise ValueError(f"num_frames: the driving input has no frames ({available})")
        return available - (available - 1) % self.frame_period


def generated_num_frames(num_frames: int, fixed_num_frames: int | None) -> int:
    """Frames to generate for a video of `num_frames` on a model whose positional embeddings exist only at
    `fixed_num_frames` (None: any count): a shorter video is generated at the full window and trimmed, so the
    model never runs at a frame count its weights never saw; a longer one is already made of such windows."""
    return num_frames if fixed_num_frames is None else max(num_frames, fixed_num_frames)


VARIANTS: dict[str, dict[str, VariantSpec]] = {
    "cogvideox": {
        # Latent frames (F-1)//4+1 must be odd: F = 8m+1.
        "1.0": VariantSpec(
            name="CogVideoX 1.0",
            source="THUDM/CogVideoX-5b-I2V",
            frame_period=8,
            frame_rule="num_frames = 4k+1 with (num_frames-1)//4+1 odd",
            default_num_frames=49,
            default_resolution=(480, 720),
        ),
        "1.5": VariantSpec(
            name="CogVideoX 1.5",
            source="THUDM/CogVideoX1.5-5B-I2V",
            frame_period=16,
            frame_rule="num_frames = 16N+1",
            default_num_frames=81,
            default_resolution=(768, 1360),
        ),
    },
    "wan": {
        "2.1": VariantSpec(
            name="Wan 2.1",
            source="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            frame_period=4,
            frame_rule="num_frames = 4k+1",
            default_num_frames=81,
            default_resolution=(480, 832),
        ),
    },
}

SCHEDULERS: dict[str, tuple[str, ...]] = {"cogvideox": ("ddim", "dpm"), "wan": ("unipc", "flow_euler")}

# Height and width must survive the VAE (8x) and the 2x2 patch embedding.
RESOLUTION_MULTIPLE = 16
# Inference gamma when neither a request nor the backbone config sets it: the best of the toy HumANDiff variant's
# sweep (README, "A toy model trained here"; flat at or below 0.5, worse above; the paper chose 0.1).
DEFAULT_GAMMA = 0.25

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoraSettings(BaseModel):
    """LoRA on the transformer's attention projections."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(64, gt=0)
    alpha: float | None = Field(None, gt=0, description="None means alpha = rank")
    targets: list[str] | None = Field(None, min_length=1, description="module names; None means the family default")


def vae_spatial_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent cell side of a VAE from its config: CogVideoX's VAE halves the size in every block but
    the last, Wan's once per `temperal_downsample` entry; a config naming neither has the default's."""
    if "temperal_downsample" in vae_config:
        return 2 ** len(vae_config["temperal_downsample"])
    if "block_out_channels" in vae_config:
        return 2 ** (len(vae_config["block_out_channels"]) - 1)
    return DEFAULT_SPATIAL_FACTOR


class TinySettings(BaseModel):
    """A random-weight model small enough for CPU tests; dicts override the family's tiny component configs."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    transformer: dict[str, Any] = Field(default_factory=dict)
    vae: dict[str, Any] = Field(default_factory=dict)
    text_encoder: dict[str, Any] = Field(default_factory=dict)
    image_encoder: dict[str, Any] = Field(default_factory=dict)
    tokenizer_corpus: ProjectPath | None = Field(
        None, description="captions (a text file, one per line, or a folder of .txt files) to train the tokenizer "
        "on; unset: T5's empty tokenizer, which maps every word to <unk>"
    )


class StepCacheSettings(BaseModel):
    """Step caching at generation (diffusers' First Block Cache, after ParaAttention's "first block cache"): each
    step runs the first DiT block, and when its output residual changed by less than `threshold` (mean absolute
    difference relative to the previous step's) the other blocks are skipped and their cached residual reused."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["first_block"] = "first_block"
    threshold: float = Field(gt=0, le=1, description="relative change of the first block's residual below which "
                             "a step reuses the cache; higher is faster and less exact")


class CompileSettings(BaseModel):
    """torch.compile at generation. `blocks`: regional compilation of the repeated DiT block (each block's forward
    through `torch.compile`; the blocks share one graph, so compile time is one block's, not the transformer's)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "blocks"] = "off"
    backend: Literal["inductor", "cudagraphs", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile's backend; the eager ones compile nothing (debugging)"
    )


# Attention implementations a generation may run: torch SDPA (`sdpa`: torch picks the kernel; `sdpa_<kernel>`: held
# to one kernel), which both families call, and the libraries of diffusers' attention dispatcher, which only Wan's
# attention goes through (CogVideoX's processor calls torch SDPA itself).
SdpaAttention = Literal["sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math"]
DispatcherAttention = Literal["flash", "flash_3", "sage", "xformers"]
AttentionBackend = Literal[SdpaAttention, DispatcherAttention]
SDPA_ATTENTION: tuple[str, ...] = get_args(SdpaAttention)
DISPATCHER_ATTENTION: tuple[str, ...] = get_args(DispatcherAttention)
ATTENTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "cogvideox": SDPA_ATTENTION, "wan": SDPA_ATTENTION + DISPATCHER_ATTENTION
}


def _no_hub_kernel(value: Any) -> Any:
    if isinstance(value, str) and value.endswith("_hub"):
        raise ValueError(f"{value!r} downloads its kernel from the Hugging Face Hub at run time, and nothing here "
                         f"downloads: install the library and choose one of {list(DISPATCHER_ATTENTION)}")
    return value


AttentionChoice = Annotated[AttentionBackend, BeforeValidator(_no_hub_kernel)]


class BackboneConfig(BaseModel):
    """Which backbone to build and how to run it."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["cogvideox", "wan"]
    variant: str
    path: ProjectPath | None = Field(None, description="diffusers-format folder with the released weights")
    tiny: TinySettings | None = None
    transformer: ProjectPath | None = Field(
        None, description="a transformer folder used in place of the backbone's own (e.g. one ablation variant "
        "beside a shared VAE and text encoder, or a full fine-tune's export/transformer)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    resolution: tuple[int, int] | None = Field(None, description="(height, width) in pixels; None means the default")
    num_frames: int | None = Field(None, description="training/sampling window; None means the default")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    scheduler: str | None = Field(None, description="sampling scheduler; None means the family default")
    num_inference_steps: int | None = Field(None, gt=0, description="sampling steps; None means the family default")
    guidance_scale: float | None = Field(
        None, ge=1.0, description="classifier-free guidance; None means the family default (1: a model trained "
        "without caption dropout has no unconditional prediction to guide against)"
    )
    gamma: float = Field(
        DEFAULT_GAMMA, ge=0.0, le=1.0, description="inference degradation of the articulated noise when a request "
        "leaves it out (0: warped noise only, 1: fresh noise only); measure it on your model (benchmarks/ablation.py "
        "--gamma-sweep)"
    )
    vae_tiling: bool | None = Field(
        None, description="tiled VAE encode/decode (diffusers' `enable_tiling`): activation memory bounded by the "
        "tile size, tiles blended at their seams; None: on for a model folder (`path`), off for `tiny`. Below the "
        "VAE's tile size (CogVideoX: half its sample size, 240x360; Wan: 256x256) nothing changes"
    )
    vae_slicing: bool | None = Field(
        None, description="VAE encode/decode one sample of a batch at a time (`enable_slicing`, exact); None: on for "
        "a model folder (`path`), off for `tiny`"
    )
    articulated_noise: bool = Field(
        True, description="generation starts from a motion's articulated noise unless told otherwise; false for a "
        "transformer trained on i.i.d. noise only (e.g. the toy's PadaLN variant)"
    )
    noise: NoiseSettings = Field(
        default_factory=NoiseSettings, description="how this model's articulated noise is built: the video "
        "preprocessing writes training rows with it and generation samples with it, so both match"
    )
    cache: StepCacheSettings | None = Field(None, description="step caching at generation; None: every step "
                                            "runs every block (the default until measured on your model)")
    compile: CompileSettings = Field(default_factory=CompileSettings, description="torch.compile at generation")
    attention: AttentionChoice = Field(
        "sdpa", description="attention implementation at generation (pipelines/generation/attention.py)"
    )

    @field_validator("variant", mode="before")
    @classmethod
    def _variant_of_family(cls, value: Any, info: ValidationInfo) -> str:
        value = str(value)
        family = info.data.get("family")
        if family is not None and value not in VARIANTS[family]:
            raise ValueError(f"variant {value!r} is not a {family} variant; choose one of {sorted(VARIANTS[family])}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _scheduler_of_family(cls, value: str | None, info: ValidationInfo) -> str | None:
        family = info.data.get("family")
        if value is not None and family is not None and value not in SCHEDULERS[family]:
            raise ValueError(f"scheduler {value!r} does not fit {family}; choose one of {list(SCHEDULERS[family])}")
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and any(side <= 0 or side % RESOLUTION_MULTIPLE for side in value):
            raise ValueError(f"resolution {value} must be positive multiples of {RESOLUTION_MULTIPLE} (height, width)")
        return value

    @field_validator("num_frames")
    @classmethod
    def _frame_rule(cls, value: int | None, info: ValidationInfo) -> int | None:
        spec = VARIANTS.get(info.data.get("family"), {}).get(info.data.get("variant"))
        if value is not None and spec is not None:
            try:
                spec.check_num_frames(value)
            except ValueError as err:
                raise ValueError(f"num_frames: {err}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("path/tiny: set exactly one of `path` (a diffusers-format folder) or `tiny`")
        if self.tiny is not None and self.tiny.image_encoder and self.family != "wan":
            raise ValueError(f"tiny.image_encoder: {self.family} has no image encoder")
        if self.attention not in ATTENTION_FAMILIES[self.family]:
            raise ValueError(f"attention: {self.attention!r} goes through diffusers' attention dispatcher, which "
                             f"{self.family}'s attention does not call (it calls torch SDPA): choose one of "
                             f"{list(ATTENTION_FAMILIES[self.family])}")
        return self

    def with_options(self, **options: Any) -> BackboneConfig:
        """This config with `options` (field values) set, validated again (`model_copy` would not)."""
        return self.model_validate({**dict(self), **options})

    def noise_options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `NoiseConfig` fields of this model's articulated noise, less the clip's grid: its `noise` settings
        under `overrides` (a render job's `noise`, Serve's `noise_options`), and its VAE's spatial factor."""
        return {**self.noise.model_dump(), **(overrides or {}), "spatial_factor": self.spatial_factor}

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.family][self.variant]

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def use_vae_tiling(self) -> bool:
        return self.path is not None if self.vae_tiling is None else self.vae_tiling

    @property
    def use_vae_slicing(self) -> bool:
        return self.path is not None if self.vae_slicing is None else self.vae_slicing

    @property
    def spatial_factor(self) -> int:
        """The VAE's downsampling, from the folder's `vae/config.json` (or the tiny settings) without building it:
        CPU stages that size latent grids (articulated noise) need it before any model is loaded."""
        if self.tiny is not None:
            return vae_spatial_factor(self.tiny.vae)
        path = Path(self.path) / "vae" / "config.json"
        return vae_spatial_factor(json.loads(path.read_text())) if path.is_file() else DEFAULT_SPATIAL_FACTOR


class GenerationOptions(BaseModel):
    """Generation settings that a render job, a Serve backbone entry or the CLI set over a backbone config's (unset:
    the config's). Training runs without them (`TrainJobConfig.backbone_config`)."""

    model_config = ConfigDict(extra="forbid")

    cache: StepCacheSettings | Literal["off"] | None = Field(
        None, description="step caching, e.g. {kind: first_block, threshold: 0.1}, or off (exact steps even where "
        "the backbone config caches); unset: the backbone config's"
    )
    compile: CompileSettings | None = Field(
        None, description="torch.compile, e.g. {mode: blocks} or {mode: off}; unset: the backbone config's"
    )
    attention: AttentionChoice | None = Field(
        None, description="attention implementation, e.g. sdpa_flash; unset: the backbone config's"
    )

    def applied_to(self, backbone: BackboneConfig) -> BackboneConfig:
        """`backbone` with the options set here."""
        options = {name: value for name in GenerationOptions.model_fields if (value := getattr(self, name)) is not None}
        if options.get("cache") == "off":
            options["cache"] = None
        return backbone.with_options(**options)


def load_backbone_config(path: str | Path) -> BackboneConfig:
    """Read and validate a backbone YAML file."""
    with open(path) as f:
        return BackboneConfig.model_validate(yaml.safe_load(f))
