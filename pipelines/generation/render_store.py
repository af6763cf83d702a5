"""The offline render job's output folder (a path every node can reach, e.g. a shared file system):

    videos/<id>.mp4     the videos
    metadata.parquet    one row per item (`METADATA_SCHEMA`): the latest outcome of every id ever rendered here
    metadata.parts/     outcomes of a run in progress, merged into metadata.parquet when it ends (or when the next
                        run starts, after a crash); each part is written under a temporary name and moved into place
    metadata.unreadable/  parts that could not be read (e.g. damaged by a disk fault), moved aside by the merge and
                        reported in the log and summary.json: their rows count as not done and are rendered again
    summary.json, config.resolved.yaml

A rerun skips the rows whose MP4 exists and whose metadata says "ok", and retries the others (delete an MP4, or
use a new output folder, to render a row again with other settings).
"""


from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.video import write_video

log = logging.getLogger(__name__)

VIDEOS_DIR = "videos"
PARTIAL_DIR = ".partial"
METADATA_NAME = "metadata.parquet"
PARTS_DIR = "metadata.parts"
UNREADABLE_DIR = "metadata.unreadable"
SUMMARY_NAME = "summary.json"
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
        # the reference photo's intake (pipelines/generation/photo.py, PhotoIntake): the box of source pixels
        # (after EXIF orientation) that became the video's first frame, and what placed it
        ("photo_fit", pa.string()),  # crop, centre or pad
        ("photo_method", pa.string()),  # keypoints, alpha, centre (no detector ran) or pad
        ("photo_x0", pa.int32()),
        ("photo_y0", pa.int32()),
        ("photo_width", pa.int32()),
        ("photo_height", pa.int32()),
        ("photo_source_height", pa.int32()),
        ("photo_source_width", pa.int32()),
        ("photo_orientation", pa.int32()),  # EXIF orientation applied (1: none)
        ("photo_flattened", pa.bool_()),  # transparency flattened onto the background
        ("photo_note", pa.string()),
    ]
)


def metadata_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a `METADATA_SCHEMA` table; missing fields are null."""
    return pa.Table.from_pylist([{name: row.get(name) for name in METADATA_SCHEMA.names} for row in rows],
                                schema=METADATA_SCHEMA)


# The output folder


class RenderStore:
    """The job's output folder: videos, the metadata of every item, and the parts of a run in progress."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        self.unreadable: dict[Path, str] = {}  # metadata files `records` could not read: the reason

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
            for row in self._read(path):
                records[row["id"]] = row
        return records

    def _read(self, path: Path) -> list[dict[str, Any]]:
        """A metadata file's rows; none (recorded in `unreadable` and logged) when it cannot be read."""
        try:
            return pq.read_table(path, schema=METADATA_SCHEMA).to_pylist()
        except (OSError, pa.ArrowException) as err:
            if path not in self.unreadable:
                log.warning("skipping unreadable render metadata %s (its rows will be rendered again): %s", path, err)
            self.unreadable[path] = str(err)
            return []

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
        part = folder / f"{time.time_ns():020d}.parquet"
        temporary = part.with_suffix(".tmp")  # not a part until complete: a crash mid-write leaves no torn part
        pq.write_table(table.cast(METADATA_SCHEMA), temporary)
        os.replace(temporary, part)

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
        self._set_aside_unreadable()
        os.replace(temporary, self.root / METADATA_NAME)
        shutil.rmtree(self.root / PARTS_DIR, ignore_errors=True)  # merged parts and temporary files of a crash
        shutil.rmtree(self.root / PARTIAL_DIR, ignore_errors=True)  # no encoder runs now: leftovers of a crash
        return table

    def _set_aside_unreadable(self) -> None:
        """Move the unreadable metadata files into metadata.unreadable/ (kept for inspection, never read again)."""
        for path in self.unreadable:
            if path.is_file():
                (self.root / UNREADABLE_DIR).mkdir(exist_ok=True)
                os.replace(path, self.root / UNREADABLE_DIR / path.name)
