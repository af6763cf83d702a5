"""The training-row contract, what the preprocessing job writes and the fine-tuning job reads: the rows' Parquet
schema, building them from encoded clips, collating rows into a `TrainingBatch` (read back by key with
`pipelines.io.row_reader`, kept free of torch so read tasks start fast), and the preprocessing job's output folder (a local path or any pyarrow filesystem URI, e.g. s3://bucket/prefix): `rows/`,
`failures/failures.parquet` (the failures of the latest run only: a rerun retries every clip without a row),
`config.resolved.yaml` and `summary.json`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import BaseModel

from models.backbones.base import Conditioning
from models.noise_warp import WarpOperator
from pipelines.io.arrow_arrays import list_column, tensor_column
from pipelines.io.config import RESOLVED_CONFIG_NAME
from pipelines.io.filesystem import exists, resolve_uri, write_text
from pipelines.io.operator_columns import OPERATOR_FIELDS, row_operator

if TYPE_CHECKING:
    from models.backbones import BackboneAdapter

ROWS_DIR = "rows"
FAILURES_DIR = "failures"
SUMMARY_NAME = "summary.json"
# Config sections that change what a row holds: a rerun into the same output must not change them.
ROW_SECTIONS = ("backbone", "clips", "noise", "body", "pose", "text")

# Stored as `<name>` (fixed-size list of float32) plus `<name>_shape` (its shape, list of int32).
TENSOR_COLUMNS = (
    "video_latents",  # [F_lat, C, h, w]
    "image_latents",  # the adapter's image conditioning, e.g. [F_lat, C_img, h, w]
    "image_embeds",  # image-encoder tokens [N, D] (Wan only)
    "text_embeds",  # caption embedding [L, D] (absent when text: caption, to embed on the fly)
    "pose_latents",  # skeleton video latents [F_lat, C, h, w]
    "motion_targets",  # motion-decoder targets [F_lat, 3, 4h, 4w]: u, v, body fraction
)
ROW_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source_path", pa.string()),
        ("frame_indices", pa.list_(pa.int32())),  # source frames of the clip
        ("fps", pa.float64()),  # frame rate of the clip
        ("caption", pa.string()),
        ("crop_box", pa.list_(pa.int32())),  # x0, y0, width, height in source pixels
        ("crop_source", pa.string()),  # mask, keypoints or centre
        *OPERATOR_FIELDS,
    ]
)

# Rows


class EncodedClip(Protocol):
    """What a row is built from: a clip's keys and its state, arrays by name (the preprocessing job's `Clip`)."""

    clip_id: str
    video_id: str
    source_path: str
    state: dict[str, Any]


@dataclass
class TrainingBatch:
    """B preprocessed rows, batched."""

    latents: torch.Tensor  # [B, F_lat, C, h, w] clean video latents
    conditioning: Conditioning
    operators: list[WarpOperator]  # one per row, for latent grid (F_lat, h, w)
    motion_targets: torch.Tensor  # [B, F_lat, 3, H_m, W_m] (u, v, mask) for the motion decoder
    pose_latents: torch.Tensor | None = None  # [B, F_lat, C, h, w] driving pose video, for PadaLN

    def __post_init__(self) -> None:
        batch, frames, _, height, width = self.latents.shape
        if len(self.operators) != batch:
            raise ValueError(f"operators: need one per row ({batch}), got {len(self.operators)}")
        for index, operator in enumerate(self.operators):
            if operator.latent_shape != (frames, height, width):
                raise ValueError(
                    f"operators[{index}]: latent_shape {operator.latent_shape} differs from the latents' "
                    f"{(frames, height, width)}"
                )
        if tuple(self.motion_targets.shape[:3]) != (batch, frames, 3):
            raise ValueError(
                f"motion_targets: expected [{batch}, {frames}, 3, H, W], got {list(self.motion_targets.shape)}"
            )
        if self.pose_latents is not None and self.pose_latents.shape != self.latents.shape:
            raise ValueError(
                f"pose_latents: shape {list(self.pose_latents.shape)} differs from the latents' "
                f"{list(self.latents.shape)}"
            )



def rows_table(clips: Sequence[EncodedClip]) -> pa.Table:
    """Training rows of encoded clips: `ROW_SCHEMA`, then each tensor of `TENSOR_COLUMNS` the clips have."""
    states = [clip.state for clip in clips]
    keys = {"clip_id": [c.clip_id for c in clips], "video_id": [c.video_id for c in clips]}
    keys["source_path"] = [c.source_path for c in clips]
    arrays = []
    for field_ in ROW_SCHEMA:
        if field_.name in keys:
            arrays.append(pa.array(keys[field_.name], field_.type))
        elif pa.types.is_list(field_.type) or pa.types.is_large_list(field_.type):
            arrays.append(list_column([state[field_.name] for state in states], field_.type))
        else:
            values = [state[field_.name].item() for state in states]
            arrays.append(pa.array(values, field_.type))
    fields = list(ROW_SCHEMA)
    for name in TENSOR_COLUMNS:
        if name in states[0]:
            column = tensor_column([state[name] for state in states])
            shapes = list_column([np.array(state[name].shape) for state in states], pa.list_(pa.int32()))
            arrays += [column, shapes]
            fields += [pa.field(name, column.type), pa.field(f"{name}_shape", pa.list_(pa.int32()))]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def row_tensor(table: pa.Table, name: str) -> np.ndarray:
    """A tensor column of training rows as one float32 array `[rows, *shape]`."""
    shapes = {tuple(shape) for shape in table.column(f"{name}_shape").to_pylist()}
    if len(shapes) != 1:
        raise ValueError(f"{name}: rows of different shapes {sorted(shapes)} cannot be batched")
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(table), *shapes.pop())


def training_batch(
    table: pa.Table,
    adapter: BackboneAdapter | None = None,
    device: torch.device | str = "cpu",
    operator_device: torch.device | str | None = None,
) -> TrainingBatch:
    """A `TrainingBatch` from training rows read back from Parquet, its tensors on `device` and its warp operators
    on `operator_device` (default `device`; the CPU lets a CPU generator draw noise for GPU latents). Rows stored
    without text embeddings (`text: caption`) have their captions embedded now, which needs the `adapter`."""
    names = set(table.column_names)

    def tensor(name: str) -> torch.Tensor | None:
        return torch.tensor(row_tensor(table, name), device=device) if name in names else None

    prompt_embeds = tensor("text_embeds")
    if prompt_embeds is None:
        if adapter is None:
            raise ValueError("text_embeds: the rows hold captions only; pass the backbone adapter to embed them")
        prompt_embeds = adapter.encode_prompt(table.column("caption").to_pylist())[0].to(device)
    return TrainingBatch(
        latents=tensor("video_latents"),
        conditioning=Conditioning(
            image_latents=tensor("image_latents"), prompt_embeds=prompt_embeds, image_embeds=tensor("image_embeds")
        ),
        operators=[row_operator(table, index, operator_device or device) for index in range(len(table))],
        motion_targets=tensor("motion_targets"),
        pose_latents=tensor("pose_latents"),
    )


# Output


class RowStore:
    """The job's output folder on any pyarrow filesystem: training rows, failures, config and summary."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.filesystem, self.root = resolve_uri(uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def read_text(self, name: str) -> str | None:
        if not exists(self.filesystem, self.path(name)):
            return None
        with self.filesystem.open_input_stream(self.path(name)) as stream:
            return stream.read().decode()

    def write_text(self, name: str, text: str) -> None:
        write_text(self.filesystem, self.path(name), text)

    def written_clip_ids(self) -> frozenset[str]:
        """Clip ids of every row written so far (files whose names start with '_' or '.' are unfinished)."""
        if not exists(self.filesystem, self.path(ROWS_DIR)):
            return frozenset()
        dataset = pyarrow.dataset.dataset(self.path(ROWS_DIR), filesystem=self.filesystem, format="parquet")
        return frozenset(dataset.to_table(columns=["clip_id"]).column("clip_id").to_pylist())

    def write_rows(self, table: pa.Table) -> str:
        """One Parquet file of rows, written under a temporary name and then moved into place."""
        self.filesystem.create_dir(self.path(ROWS_DIR), recursive=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        temporary = self.path(ROWS_DIR, f"_{name}")
        # One row per row group: a training step reads single rows (pipelines/io/row_reader.py), not whole files.
        pq.write_table(table, temporary, filesystem=self.filesystem, row_group_size=1)
        self.filesystem.move(temporary, self.path(ROWS_DIR, name))
        return self.path(ROWS_DIR, name)

    def write_failures(self, table: pa.Table) -> None:
        """This run's failures replace the previous run's."""
        self.filesystem.create_dir(self.path(FAILURES_DIR), recursive=True)
        self.filesystem.delete_dir_contents(self.path(FAILURES_DIR))
        pq.write_table(table, self.path(FAILURES_DIR, "failures.parquet"), filesystem=self.filesystem)

    def start_run(self, config: BaseModel) -> frozenset[str]:
        """Check a rerun keeps what rows hold, write the resolved config, and return the clips already written."""
        resolved = config.model_dump(mode="json")
        previous = yaml.safe_load(self.read_text(RESOLVED_CONFIG_NAME) or "null")
        written = self.written_clip_ids()
        if previous and written:
            changed = [key for key in ROW_SECTIONS if previous.get(key) != resolved[key]]
            if changed:
                raise ValueError(
                    f"output_dir {self.uri} holds rows made with a different config ({', '.join(changed)} changed); "
                    "use a new output_dir, or restore those settings to resume"
                )
        self.write_text(RESOLVED_CONFIG_NAME, yaml.safe_dump(resolved, sort_keys=False))
        return written
