"""Offline dataset rendering, per item: a manifest row -> checked inputs -> generated frames -> MP4 + metadata.

No Ray here: ray_jobs/render.py runs each stage as a Ray Data step on pyarrow batches.

    prepare   (CPU)  the row's settings checked and merged with the config's defaults, the reference image
                     decoded and resized, the motion loaded and validated, the pose video decoded, the frame count
                     checked against the backbone's rule and the driving input; for articulated noise, the
                     motion's warp operator (body rendering and rasterization stay off the GPU workers)
    generate  (GPU)  the animation pipeline, built once per worker, samples the noise, denoises and decodes
    encode    (CPU)  the frames as videos/<id>.mp4 (written under a temporary name, then moved into place)

Manifest (Parquet, JSONL or CSV), one row per video; relative paths are relative to the manifest's folder:

    id          required, unique, a file stem (letters, digits, '.', '_', '-'): the video is videos/<id>.mp4
    image       required: the reference image (RGB or grayscale)
    motion      a motion file (.npz/.json) and/or
    pose_video  a skeleton video (drives the video through PadaLN, so it needs `padaln` unless a motion is given)
    prompt, negative_prompt
    num_frames, steps, guidance, gamma, seed    optional per row; an empty cell takes the config's default

Rows with a motion start from its articulated noise (when `defaults.articulated_noise`); pose-only rows from
i.i.d. noise. A row that breaks a rule fails alone, with its stage and reason in the metadata; a manifest that
cannot be read, lacks the `id`/`image` columns, has unknown columns, or repeats an id is refused as a whole.

Output folder (a path every node can reach, e.g. a shared file system):

    videos/<id>.mp4     the videos
    metadata.parquet    one row per item (`METADATA_SCHEMA`): the latest outcome of every id ever rendered here
    metadata.parts/     outcomes of a run in progress, merged into metadata.parquet when it ends (or when the next
                        run starts, after a crash)
    summary.json, config.resolved.yaml

A rerun skips the rows whose MP4 exists and whose metadata says "ok", and retries the others (delete an MP4, or
use a new output folder, to render a row again with other settings).

diffusers (models.backbones, pipelines.generation.animation) is imported only where a stage needs it, so the encode actors
start without it (it takes seconds to import).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.body_model import load_body_model
from models.motion import motion_from_arrays
from models.noise_warp import WarpOperator
from pipelines.io.arrow_arrays import pack_state, unpack_state
from pipelines.articulated_noise import video_noise_operator
from pipelines.io.config import StageResources, validate_config
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
from pipelines.demo.reference import render_reference_image
from pipelines.io.failures import describe_error
from pipelines.generation.frames import image_pixels, pose_video_pixels, read_image
from pipelines.io.manifest import ManifestError, manifest_rows
from pipelines.io.motion import load_motion, save_motion
from pipelines.preprocess.motion_folder import BodyConfig
from models.pose_video import read_pose_video
from pipelines.io.video import write_video

if TYPE_CHECKING:
    from models.backbones import BackboneConfig

VIDEOS_DIR = "videos"
PARTIAL_DIR = ".partial"
METADATA_NAME = "metadata.parquet"
PARTS_DIR = "metadata.parts"
SUMMARY_NAME = "summary.json"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
PATH_FIELDS = ("image", "motion", "pose_video")

STREAM_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("stage", pa.string()),  # where a failed item failed
        ("error", pa.string()),
        ("settings", pa.string()),  # JSON: the row's resolved generation settings
        ("state", pa.large_binary()),  # .npz of the arrays the stages so far produced (never a pickle)
        ("generation_seconds", pa.float64()),
    ]
)
METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("stage", pa.string()),  # prepare, generate or encode: where a failed item failed
        ("error", pa.string()),
        ("output_path", pa.string()),
        ("frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("fps", pa.float64()),
        ("seconds", pa.float64()),  # length of the video: frames / fps
        ("generation_seconds", pa.float64()),  # wall time of denoising and decoding
    ]
)


# Configuration


class RenderDefaults(BaseModel):
    """Generation settings for rows that leave them empty."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, ge=1, description="None: the longest count the driving input allows")
    steps: int = Field(50, ge=1, description="denoising steps")
    guidance: float = Field(6.0, ge=1, description="classifier-free guidance scale (1 = off)")
    gamma: float = Field(0.5, ge=0, le=1, description="articulated-noise degradation")
    seed: int = 0
    negative_prompt: str = ""
    articulated_noise: bool = Field(True, description="rows with a motion start from its articulated noise")
    long_video: Literal["blend", "chain"] = "blend"
    window_overlap: int | None = Field(None, ge=1, description="latent frames shared by windows (blend)")


class RenderResources(BaseModel):
    """The actor pool of each stage."""

    model_config = ConfigDict(extra="forbid")

    prepare: StageResources = StageResources()
    generate: StageResources = Field(StageResources(), description="num_gpus > 0 generates on CUDA")
    encode: StageResources = Field(StageResources(), description="CPU actors: no process churn per video")


class RenderJobConfig(BaseModel):
    """The render job: every row of `manifest` -> `output_dir/videos/<id>.mp4` and a metadata row."""

    model_config = ConfigDict(extra="forbid")

    manifest: Path = Field(description="a .parquet, .jsonl or .csv manifest (see the module docstring)")
    output_dir: Path
    backbone: Path = Field(description="a backbone YAML (configs/backbones/)")
    lora: Path | None = Field(None, description="folder with pytorch_lora_weights.safetensors")
    padaln: Path | None = Field(None, description="folder with PadaLN weights: pose control")
    body: BodyConfig = BodyConfig()
    noise: dict[str, Any] = Field(default_factory=dict, description="NoiseConfig options (texture_size, ...)")
    defaults: RenderDefaults = RenderDefaults()
    resources: RenderResources = RenderResources()
    progress_interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _backbone_loads(self) -> RenderJobConfig:
        if not self.backbone.is_file():
            raise ValueError(f"backbone: {self.backbone} is not a file; name a backbone YAML (configs/backbones/)")
        self.backbone_config()
        return self

    def backbone_config(self) -> BackboneConfig:
        from models.backbones import load_backbone_config

        return load_backbone_config(self.backbone)

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
    prompt: str = ""
    negative_prompt: str | None = None
    num_frames: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    guidance: float | None = Field(None, ge=1)
    gamma: float | None = Field(None, ge=0, le=1)
    seed: int | None = None


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


def write_demo_manifest(manifest: str | Path, size: tuple[int, int], num_frames: int) -> Path:
    """The demo's inputs next to `manifest` (a .jsonl): motions/, images/ (the posed template body, first frame),
    reference/ (that body rendered for every frame, with motion and caption sidecars: ground truth for `evaluate`
    and a video folder for the preprocessing job) and the manifest itself, one row per demo motion with a few
    per-row settings."""
    manifest = Path(manifest)
    if manifest.suffix.lower() != ".jsonl":
        raise ValueError(f"manifest: the demo manifest is written as JSONL; name a .jsonl file, got {manifest}")
    root = manifest.parent
    body = load_body_model()
    per_row = {"walk": {}, "arm_swings": {"gamma": 0.2, "seed": 1}, "turn": {"guidance": 1.0}}
    rows = []
    for name in sorted(DEMO_MOTIONS):
        motion = make_demo_motion(name, num_frames)
        prompt = f"a person in a red shirt and blue trousers, {name.replace('_', ' ')}"
        for folder in ("motions", "images", "reference"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        save_motion(root / "motions" / f"{name}.npz", motion)
        PIL.Image.fromarray(render_reference_image(motion, body, size)).save(root / "images" / f"{name}.png")
        truth = np.stack([render_reference_image(motion, body, size, frame) for frame in range(num_frames)])
        write_video(root / "reference" / f"{name}.mp4", truth, motion.fps)
        # Its motion and caption as sidecars: reference/ is also a video folder the preprocessing job takes.
        save_motion(root / "reference" / f"{name}.npz", motion)
        (root / "reference" / f"{name}.txt").write_text(prompt)
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "motion": f"motions/{name}.npz",
                "prompt": prompt,
                "num_frames": num_frames,
                **per_row.get(name, {}),
            }
        )
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


# Items between stages


@dataclass
class RenderItem:
    """One row between stages: its id, status, resolved settings and state (numpy arrays by name)."""

    id: str
    status: str = "ok"
    stage: str | None = None
    error: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    generation_seconds: float | None = None

    def fail(self, stage: str, error: BaseException) -> None:
        self.status, self.stage, self.error, self.state = "failed", stage, describe_error(error), {}


def items_to_table(items: list[RenderItem]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "id": [item.id for item in items],
            "status": [item.status for item in items],
            "stage": [item.stage for item in items],
            "error": [item.error for item in items],
            "settings": [json.dumps(item.settings) for item in items],
            "state": [pack_state(item.state) if item.status == "ok" else None for item in items],
            "generation_seconds": [item.generation_seconds for item in items],
        },
        schema=STREAM_SCHEMA,
    )


def items_from_table(table: pa.Table) -> list[RenderItem]:
    items = []
    for row in table.to_pylist():
        payload = row.pop("state")
        settings = json.loads(row.pop("settings"))
        items.append(RenderItem(**row, settings=settings, state={} if payload is None else unpack_state(payload)))
    return items


def input_items(rows: list[dict[str, Any]]) -> list[pa.Table]:
    """Manifest rows as the job's input, one single-row table each: `settings` holds the raw row until `prepare`
    checks it."""
    return [items_to_table([RenderItem(id=row["id"], settings=row)]) for row in rows]


def prefixed(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays stored under `prefix` in an item's state, by their own names."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


class _Stage:
    """A stage that updates each "ok" item in place; an error fails that item alone."""

    name: str

    def process(self, item: RenderItem) -> None:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = items_from_table(batch)
        for item in items:
            if item.status == "ok":
                try:
                    self.process(item)
                except Exception as err:  # noqa: BLE001 - a failure row, never a lost item or a stopped job
                    item.fail(self.name, err)
        return items_to_table(items)


# Stages


class PrepareStage(_Stage):
    """CPU: the row checked and merged with the defaults; image, motion and pose video decoded at the output size."""

    name = "prepare"

    def __init__(self, config: RenderJobConfig) -> None:
        self.config = config
        self.spec = config.backbone_config().spec
        self.size = config.resolution()
        self.body = load_body_model(config.body.model_path, config.body.uv_path)

    def settings(self, row: RenderRow) -> dict[str, Any]:
        defaults = self.config.defaults
        if row.motion is None and row.pose_video is None:
            raise ValueError("motion/pose_video: give a motion file, a pose video, or both")
        if row.motion is None and self.config.padaln is None:
            raise ValueError(
                "pose_video: without a motion the pose video drives the video only through PadaLN; "
                "set padaln in the config or give the row a motion"
            )
        num_frames = row.num_frames if row.num_frames is not None else defaults.num_frames
        if num_frames is not None:
            try:
                self.spec.check_num_frames(num_frames)
            except ValueError as err:
                raise ValueError(f"num_frames: {err}") from None

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return {
            "prompt": row.prompt,
            "negative_prompt": pick(row.negative_prompt, defaults.negative_prompt),
            "num_frames": num_frames,
            "steps": pick(row.steps, defaults.steps),
            "guidance": pick(row.guidance, defaults.guidance),
            "gamma": pick(row.gamma, defaults.gamma),
            "seed": pick(row.seed, defaults.seed),
            "articulated_noise": defaults.articulated_noise and row.motion is not None,
        }

    def process(self, item: RenderItem) -> None:
        row = validate_config(RenderRow, item.settings, source=f"manifest row {item.id!r}")
        settings = self.settings(row)
        state = {"image": image_pixels(read_image(row.image), self.size)}
        available = []
        motion = None
        if row.motion is not None:
            motion = load_motion(row.motion)
            state.update({f"motion.{key}": value for key, value in motion.to_arrays().items()})
            available.append(motion.num_frames)
            settings["fps"] = motion.fps
        if row.pose_video is not None:
            frames, fps = read_pose_video(row.pose_video)
            state["pose_video"] = pose_video_pixels(frames, self.size)
            available.append(len(frames))
            settings.setdefault("fps", fps or None)
        if settings["num_frames"] is None:
            settings["num_frames"] = self.spec.longest_num_frames(min(available))
        elif settings["num_frames"] > min(available):
            raise ValueError(
                f"num_frames: {settings['num_frames']} requested but the driving input has only {min(available)} frames"
            )
        if settings["articulated_noise"]:
            operator = video_noise_operator(motion, self.body, self.config.noise, settings["num_frames"], self.size)
            state.update({f"operator.{key}": value for key, value in operator.to_arrays().items()})
        item.settings, item.state = settings, state


class GenerateStage(_Stage):
    """GPU (or CPU): the animation pipeline, built once per worker, turns prepared inputs into frames."""

    name = "generate"

    def __init__(self, config: RenderJobConfig, device: str) -> None:
        from pipelines.generation.animation import AnimationPipeline

        self.config = config
        body = load_body_model(config.body.model_path, config.body.uv_path)
        self.pipeline = AnimationPipeline.from_config(
            config.backbone, lora=config.lora, padaln=config.padaln, device=device, body=body,
            noise_options=config.noise,
        )

    def process(self, item: RenderItem) -> None:
        settings, state = item.settings, item.state
        motion_arrays = prefixed(state, "motion.")
        operator_arrays = prefixed(state, "operator.")
        defaults = self.config.defaults
        started = time.perf_counter()
        output = self.pipeline(
            state["image"],
            settings["prompt"],
            motion=motion_from_arrays(motion_arrays) if motion_arrays else None,
            pose_video=state.get("pose_video"),
            negative_prompt=settings["negative_prompt"],
            num_frames=settings["num_frames"],
            num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance"],
            gamma=settings["gamma"],
            seed=settings["seed"],
            articulated_noise=settings["articulated_noise"],
            long_video=defaults.long_video,
            window_overlap=defaults.window_overlap,
            fps=settings.get("fps"),
            warp_operator=WarpOperator.from_arrays(operator_arrays) if operator_arrays else None,
        )
        item.generation_seconds = time.perf_counter() - started
        item.settings["fps"] = output.fps
        item.state = {"frames": output.frames}


class EncodeStage:
    """CPU: each generated item's frames as videos/<id>.mp4; returns the batch's metadata rows."""

    name = "encode"

    def __init__(self, config: RenderJobConfig) -> None:
        self.store = RenderStore(config.output_dir)

    def metadata(self, item: RenderItem) -> dict[str, Any]:
        row = {"id": item.id, "status": item.status, "stage": item.stage, "error": item.error}
        if item.status != "ok":
            return row
        try:
            frames, fps = item.state["frames"], float(item.settings["fps"])
            path = self.store.write_video(item.id, frames, fps)
        except Exception as err:  # noqa: BLE001 - a failure row, never a lost item
            return {**row, "status": "failed", "stage": self.name, "error": describe_error(err)}
        count, height, width = (int(side) for side in frames.shape[:3])
        return {
            **row,
            "output_path": str(path),
            "frames": count,
            "height": height,
            "width": width,
            "fps": fps,
            "seconds": count / fps,
            "generation_seconds": item.generation_seconds,
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        return metadata_table([self.metadata(item) for item in items_from_table(batch)])


def metadata_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a `METADATA_SCHEMA` table; missing fields are null."""
    return pa.Table.from_pylist([{name: row.get(name) for name in METADATA_SCHEMA.names} for row in rows],
                                schema=METADATA_SCHEMA)


# The output folder


class RenderStore:
    """The job's output folder: videos, the metadata of every item, and the parts of a run in progress."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)

    def video_path(self, item_id: str) -> Path:
        return self.root / VIDEOS_DIR / f"{item_id}.mp4"

    def write_video(self, item_id: str, frames: np.ndarray, fps: float) -> Path:
        """videos/<id>.mp4, written under a temporary name first: an MP4 in videos/ is always complete."""
        partial = self.root / PARTIAL_DIR / f"{item_id}.mp4"
        write_video(partial, frames, fps)
        final = self.video_path(item_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        return final

    def _parts(self) -> list[Path]:
        folder = self.root / PARTS_DIR
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest metadata row of every id: metadata.parquet, then the parts in the order they were written."""
        files = [path for path in [self.root / METADATA_NAME, *self._parts()] if path.is_file()]
        records: dict[str, dict[str, Any]] = {}
        for path in files:
            for row in pq.read_table(path, schema=METADATA_SCHEMA).to_pylist():
                records[row["id"]] = row
        return records

    def done(self) -> frozenset[str]:
        """Ids whose metadata says "ok" and whose MP4 exists."""
        return frozenset(
            item_id for item_id, row in self.records().items()
            if row["status"] == "ok" and self.video_path(item_id).is_file()
        )

    def append(self, table: pa.Table) -> None:
        """Outcomes of this run as they arrive (a crash keeps them for the next run)."""
        folder = self.root / PARTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(METADATA_SCHEMA), folder / f"{time.time_ns():020d}.parquet")

    def finish(self, ids: list[str]) -> pa.Table:
        """Merge everything into metadata.parquet (manifest order first, then ids of earlier manifests); called when
        the run's stream has ended."""
        records = self.records()
        order = [item_id for item_id in ids if item_id in records]
        order += sorted(set(records) - set(order))
        table = metadata_table([records[item_id] for item_id in order])
        temporary = self.root / f".{METADATA_NAME}"
        self.root.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, temporary)
        os.replace(temporary, self.root / METADATA_NAME)
        for part in self._parts():
            part.unlink()
        if (self.root / PARTS_DIR).is_dir():
            (self.root / PARTS_DIR).rmdir()
        shutil.rmtree(self.root / PARTIAL_DIR, ignore_errors=True)  # no encoder runs now: leftovers of a crash
        return table
