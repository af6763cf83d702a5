"""The video preprocessing job's config: inputs, clips, noise, body, pose, text, captions and per-stage resources."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.motion_decoder import UPSCALE
from models.paths import ProjectPath, ProjectUri
from pipelines.articulated_noise import BodyConfig, NoiseConfig
from pipelines.io.config import StageResources, TaskResources
from pipelines.preprocess.clips import ClipConfig
from pipelines.preprocess.pose_sources import PoseOptions

if TYPE_CHECKING:
    from models.backbones import BackboneConfig


class JobResources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probe: TaskResources = TaskResources()
    pose: StageResources = StageResources()
    decode: StageResources = StageResources()
    render: StageResources = StageResources()
    encode: StageResources = StageResources(batch_size=4)
    write: StageResources = StageResources(num_cpus=0.25, batch_size=8)


class CaptionConfig(BaseModel):
    """Captions of videos without a caption sidecar: a local captioning model, else `default`."""

    model_config = ConfigDict(extra="forbid")

    model_path: ProjectPath | None = Field(None, description="folder of a transformers image-text-to-text model")
    prompt: str = "Describe the person in this image and what they are doing, in one sentence."
    max_new_tokens: int = Field(48, ge=1)
    default: str = ""

    @field_validator("model_path")
    @classmethod
    def _model_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "config.json").is_file():
            raise ValueError(
                f"captioning model folder '{value}' is missing or incomplete (no config.json); put a transformers "
                "image-text-to-text model there (config, weights, processor), or unset captions.model_path"
            )
        return value


class VideoJobConfig(BaseModel):
    """The video job: a folder or manifest of videos -> training rows under `output_dir`."""

    model_config = ConfigDict(extra="forbid")

    videos: ProjectPath = Field(description="a folder of videos, or a .parquet/.jsonl/.csv manifest")
    output_dir: ProjectUri = Field(description="a local path or a pyarrow filesystem URI (file://, s3://, gs://, ...)")
    backbone: dict[str, Any] = Field(description="a backbone YAML path or the config itself (see backbone_config)")
    clips: ClipConfig = ClipConfig()
    noise: NoiseConfig = Field(NoiseConfig(), description="follows the backbone: its grid, and its `noise` settings "
                               "(generation samples the noise the rows were made with)")
    body: BodyConfig = BodyConfig()
    pose: PoseOptions = Field(default_factory=PoseOptions, description="how clips without a motion sidecar get one")
    text: Literal["embed", "caption"] = Field("embed", description="store caption embeddings, or only the caption")
    captions: CaptionConfig = CaptionConfig()
    seed: int = 0
    resources: JobResources = JobResources()
    progress_interval_s: float = Field(10.0, gt=0)

    @field_validator("backbone", mode="before")
    @classmethod
    def _backbone(cls, value: Any) -> dict[str, Any]:
        from models.backbones import BackboneConfig, load_backbone_config

        config = load_backbone_config(value) if isinstance(value, (str, Path)) else BackboneConfig.model_validate(value)
        return config.model_dump(mode="json")

    def backbone_config(self) -> BackboneConfig:
        """The validated backbone config. Kept as a mapping in this config (and diffusers imported only here and
        where a backbone is built) so that the actors of the CPU stages start without importing diffusers."""
        from models.backbones import BackboneConfig

        return BackboneConfig.model_validate(self.backbone)

    @model_validator(mode="after")
    def _noise_follows_backbone(self) -> VideoJobConfig:
        backbone = self.backbone_config()
        frames = backbone.num_frames or backbone.spec.default_num_frames
        height, width = backbone.resolution or backbone.spec.default_resolution
        wanted = {"num_frames": frames, "height": height, "width": width, "spatial_factor": backbone.spatial_factor,
                  **backbone.noise.model_dump()}
        given = {key: getattr(self.noise, key) for key in wanted if key in self.noise.model_fields_set}
        clash = {key: value for key, value in given.items() if value != wanted[key]}
        if clash:
            raise ValueError(f"noise: {clash} differ from the backbone's {wanted}; leave them out (set the noise "
                             "settings in the backbone config's `noise:`, which generation uses too)")
        self.noise = NoiseConfig.model_validate({**self.noise.model_dump(), **wanted})
        if self.noise.supersample % UPSCALE:
            raise ValueError(
                f"noise.supersample must be a multiple of {UPSCALE} for the motion-decoder targets, "
                f"got {self.noise.supersample}"
            )
        return self

    @property
    def num_frames(self) -> int:
        return self.noise.num_frames

    @property
    def size(self) -> tuple[int, int]:
        return self.noise.height, self.noise.width
