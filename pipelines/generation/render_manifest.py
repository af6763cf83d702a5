"""The offline render job's configuration and its manifest, read and checked as a whole.

Manifest (Parquet, JSONL or CSV), one row per video; relative paths are relative to the manifest's folder:

    id          required, unique, a file stem (letters, digits, '.', '_', '-'): the video is videos/<id>.mp4
    image       required: the reference photo (any size, mode and EXIF orientation; see pipelines/generation/photo.py)
    fit, background    optional per row: how the photo is fitted (crop, centre, pad) and its background colour
                       ([r, g, b], "r,g,b" or "#rrggbb"); an empty cell takes the config's `photo:`
    retarget, lead_in  optional per row: retarget the motion onto the photo's person (pipelines/generation/retarget.py)
                       and its lead-in frames; an empty cell takes the config's `defaults:`
    motion      a motion file (.npz/.json) and/or
    pose_video  a skeleton video (drives the video through PadaLN, so it needs `padaln` unless a motion is given)
    mask        optional: a grayscale region mask for the image (DynamiCtrl's region control: the image is kept
                where it is white, blanked elsewhere, and the prompt describes the blanked region)
    prompt, negative_prompt
    num_frames, steps, guidance, gamma, seed    optional per row; an empty cell takes the config's default

Rows with a motion start from its articulated noise (when `defaults.articulated_noise`); pose-only rows from
i.i.d. noise. A row that breaks a rule fails alone, with its stage and reason in the metadata; a manifest that
cannot be read, lacks the `id`/`image` columns, has unknown columns, or repeats an id is refused as a whole.
"""


from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.backbones.config import GenerationOptions
from models.paths import ProjectPath, ProjectUri
from pipelines.articulated_noise import BodyConfig
from pipelines.generation.photo import Fit, PhotoOptions
from pipelines.io.config import StageResources
from pipelines.io.manifest import ManifestError, manifest_rows

if TYPE_CHECKING:
    from models.backbones import BackboneConfig

ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
PATH_FIELDS = ("image", "motion", "pose_video", "mask")


# Configuration


class RenderDefaults(BaseModel):
    """Generation settings for rows that leave them empty."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, ge=1, description="None: the longest count the driving input allows")
    steps: int | None = Field(None, ge=1, description="denoising steps; None: the backbone config's, else its family's")
    guidance: float | None = Field(
        None, ge=1, description="classifier-free guidance scale (1 = off); None: the backbone config's, else its family's"
    )
    gamma: float | None = Field(
        None, ge=0, le=1, description="articulated-noise degradation; None: the backbone config's"
    )
    seed: int = 0
    negative_prompt: str = ""
    articulated_noise: bool | None = Field(
        None, description="rows with a motion start from its articulated noise; None: as the backbone config says"
    )
    long_video: Literal["blend", "chain"] = "blend"
    window_overlap: int | None = Field(None, ge=1, description="latent frames shared by windows (blend)")
    retarget: bool = Field(
        True, description="retarget each row's motion onto its photo's person (needs a keypoint estimator: "
        "photo.detector, else MediaPipe in the prepare stage's runtime_env); false: the motion as it is"
    )
    lead_in: int = Field(0, ge=0, description="retargeting: frames that blend from the photo's pose into the motion's")


class RenderResources(BaseModel):
    """The actor pool of each stage."""

    model_config = ConfigDict(extra="forbid")

    prepare: StageResources = StageResources()
    generate: StageResources = Field(StageResources(), description="num_gpus > 0 generates on CUDA")
    encode: StageResources = Field(StageResources(), description="CPU actors: no process churn per video")


class RenderJobConfig(GenerationOptions):
    """The render job: every row of `manifest` -> `output_dir/videos/<id>.mp4` and a metadata row."""

    model_config = ConfigDict(extra="forbid")

    manifest: ProjectPath = Field(description="a .parquet, .jsonl or .csv manifest (see the module docstring)")
    output_dir: ProjectUri = Field(
        description="a local path or a pyarrow filesystem URI (file://, s3://bucket/prefix, ...) that every node reaches"
    )
    backbone: ProjectPath = Field(description="a backbone YAML (configs/backbones/)")
    lora: ProjectPath | None = Field(None, description="folder with pytorch_lora_weights.safetensors")
    padaln: ProjectPath | None = Field(None, description="folder with PadaLN weights: pose control")
    body: BodyConfig = BodyConfig()
    noise: dict[str, Any] = Field(
        default_factory=dict, description="NoiseConfig fields (texture_size, ...) over the backbone config's `noise`, "
        "which its model was trained with; leave empty unless measured"
    )
    defaults: RenderDefaults = RenderDefaults()
    photo: PhotoOptions = Field(PhotoOptions(), description="how reference photos are fitted (rows may override)")
    resources: RenderResources = RenderResources()
    progress_interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _backbone_loads(self) -> RenderJobConfig:
        if not self.backbone.is_file():
            raise ValueError(f"backbone: {self.backbone} is not a file; name a backbone YAML (configs/backbones/)")
        self.backbone_config()
        return self

    def backbone_config(self) -> BackboneConfig:
        """The backbone YAML's config, with the generation options this job sets."""
        from models.backbones import load_backbone_config

        return self.applied_to(load_backbone_config(self.backbone))

    def resolution(self) -> tuple[int, int]:
        """(H, W) of the generated videos, from the backbone config alone (no weights loaded)."""
        backbone = self.backbone_config()
        return tuple(backbone.resolution or backbone.spec.default_resolution)


class RenderRow(BaseModel):
    """One manifest row; None takes the config's default."""

    model_config = ConfigDict(extra="forbid")

    id: str
    image: str
    motion: str | None = None
    pose_video: str | None = None
    mask: str | None = None
    prompt: str = ""
    negative_prompt: str | None = None
    num_frames: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    guidance: float | None = Field(None, ge=1)
    gamma: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    fit: Fit | None = None
    background: tuple[int, int, int] | str | None = None
    retarget: bool | None = None
    lead_in: int | None = Field(None, ge=0)


# The manifest


def read_render_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts, in file order, with paths resolved; row values are checked later, per row."""
    path = Path(path)
    columns, table_rows = manifest_rows(path)
    known = set(RenderRow.model_fields)
    unknown = sorted(set(columns) - known)
    if unknown or not {"id", "image"} <= set(columns):
        raise ManifestError(
            f"manifest {path}: needs 'id' and 'image' columns and may have {sorted(known - {'id', 'image'})}; "
            f"got columns {columns}"
        )
    rows, seen = [], set()
    for index, row in enumerate(table_rows):
        item_id = None if row["id"] is None else str(row["id"])
        if item_id is None or not ID_PATTERN.fullmatch(item_id):
            raise ManifestError(
                f"manifest {path}: row {index} has id {row['id']!r}; ids are file stems of letters, digits, '.', '_' "
                "and '-' (not starting with '.')"
            )
        if item_id in seen:
            raise ManifestError(f"manifest {path}: id {item_id!r} is used by more than one row")
        seen.add(item_id)
        paths = {key: str(path.parent / str(row[key])) for key in PATH_FIELDS if row.get(key) is not None}
        cells = {key: value for key, value in row.items() if value is not None}  # empty cells take the defaults
        rows.append({**cells, **paths, "id": item_id})
    return rows
