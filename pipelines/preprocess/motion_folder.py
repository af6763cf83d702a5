"""Per-item flow of the motion-folder job: motion file -> warp operator row (+ preview MP4).

No Ray here: the Ray Data job calls `MotionNoiseWorker` once per item and `rows_to_table` to
give Arrow its fixed schema, so failed items and built items share one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.body_model import load_body_model
from models.paths import ProjectPath
from pipelines.articulated_noise import BodyConfig, NoiseConfig, build_motion_operator, preview_frames
from pipelines.io.arrow_arrays import list_column
from pipelines.io.failures import describe_error
from pipelines.io.motion import load_motion
from pipelines.io.operator_columns import OPERATOR_FIELDS
from pipelines.io.video import write_video

MOTION_SUFFIXES = (".npz", ".json")

OPERATOR_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("source_path", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("stage", pa.string()),  # where a failed item failed
        ("error", pa.string()),
        ("num_frames", pa.int32()),
        *OPERATOR_FIELDS,
        ("preview_path", pa.string()),
    ]
)


class MotionNoiseJobConfig(BaseModel):
    """The motion-folder job: every motion file under `input_dir` -> one operator row."""

    model_config = ConfigDict(extra="forbid")

    input_dir: ProjectPath
    output_dir: ProjectPath
    noise: NoiseConfig = NoiseConfig()
    body: BodyConfig = BodyConfig()
    previews: bool = True
    preview_seed: int = 0
    cpus_per_worker: float = Field(1.0, gt=0)
    num_workers: int = Field(2, ge=1)


def list_motion_files(input_dir: Path) -> list[Path]:
    """Motion files directly under `input_dir`, sorted (the item id is the file stem)."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input_dir not found: {input_dir} (expected a folder of .npz/.json motion files)")
    return sorted(p for p in input_dir.iterdir() if p.suffix.lower() in MOTION_SUFFIXES)


def failure_row(path: str, stage: str, error: BaseException) -> dict[str, Any]:
    """A row that records why an item failed; every failed item gets one."""
    return {
        "item_id": Path(path).stem, "source_path": path, "status": "failed", "stage": stage,
        "error": describe_error(error),
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (built or failed) as a table with `OPERATOR_SCHEMA`; missing fields are null."""
    columns = []
    for field in OPERATOR_SCHEMA:
        cells = [row.get(field.name) for row in rows]
        is_list = pa.types.is_list(field.type) or pa.types.is_large_list(field.type)
        columns.append(list_column(cells, field.type) if is_list else pa.array(cells, type=field.type))
    return pa.Table.from_arrays(columns, schema=OPERATOR_SCHEMA)


class MotionNoiseWorker:
    """Builds operator rows; holds the body model so it is loaded once per worker."""

    def __init__(self, config: MotionNoiseJobConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.body = load_body_model(config.body.model_path, config.body.uv_path)

    def __call__(self, path: str) -> dict[str, Any]:
        stage = "load_motion"
        try:
            motion = load_motion(path)
            stage = "build_operator"
            operator, render = build_motion_operator(motion, self.body, self.config.noise, self.device)
            arrays = operator.to_arrays()
            row = {
                "item_id": Path(path).stem,
                "source_path": path,
                "status": "ok",
                "num_frames": self.config.noise.num_frames,
                "num_background": int(arrays.pop("num_background")),
                **arrays,
            }
            if self.config.previews:
                stage = "preview"
                generator = torch.Generator(operator.device).manual_seed(self.config.preview_seed)
                noise = operator.sample(generator, self.config.noise.channels)
                preview_path = self.config.output_dir / "previews" / f"{Path(path).stem}.mp4"
                video_size = (self.config.noise.height, self.config.noise.width)
                write_video(preview_path, preview_frames(render, noise, video_size), motion.fps / 4)
                row["preview_path"] = str(preview_path)
            return row
        except Exception as err:  # noqa: BLE001 - every failure becomes a recorded row, never a lost item
            return failure_row(path, stage, err)
