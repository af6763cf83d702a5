"""The offline render job's output folder, a local path or a pyarrow filesystem URI (file://, s3://bucket/prefix,
...) that every node reaches (a local path on several nodes must be a shared file system):

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
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from pipelines.io.filesystem import child_uri, exists, resolve_uri, write_text
from pipelines.io.video import write_video

log = logging.getLogger(__name__)

VIDEOS_DIR = "videos"
PARTIAL_DIR = ".partial"
METADATA_NAME = "metadata.parquet"
PARTS_DIR = "metadata.parts"
UNREADABLE_DIR = "metadata.unreadable"
SUMMARY_NAME = "summary.json"
COPY_CHUNK = 1 << 22
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
        # retargeting of the row's motion onto the photo's person (photo_retarget.py, RetargetSummary)
        ("retarget_applied", pa.bool_()),
        ("retarget_reason", pa.string()),  # why not, when not applied
        ("retarget_lead_in", pa.int32()),
        ("retarget_fit_error_px", pa.float64()),  # the photo fit's mean keypoint error
        ("retarget_observed_joints", pa.int32()),  # SMPL joints whose rotation the photo shows (of 23)
        ("retarget_transl", pa.list_(pa.float64())),  # the photo person's fitted SMPL translation, camera frame (m)
        ("retarget_scale", pa.float64()),  # the motion's root trajectory scaled by this (leg-length ratio)
        ("retarget_betas", pa.list_(pa.float64())),  # the photo person's fitted shape
    ]
)


def metadata_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a `METADATA_SCHEMA` table; missing fields are null."""
    return pa.Table.from_pylist([{name: row.get(name) for name in METADATA_SCHEMA.names} for row in rows],
                                schema=METADATA_SCHEMA)


# The output folder


class RenderStore:
    """The job's output folder on any pyarrow filesystem: videos, the metadata of every item, and the parts of a run
    in progress. Every read and write goes through `filesystem`, so the driver and encoders on other nodes see the
    same files."""

    def __init__(self, output_dir: str | Path, filesystem: pyarrow.fs.FileSystem | None = None) -> None:
        """`output_dir`: a local path or a pyarrow filesystem URI; or, with `filesystem` (one already configured,
        e.g. an S3FileSystem with its own endpoint), the folder's path on it."""
        if filesystem is None:
            self.uri = child_uri(str(output_dir))  # a relative local path resolved here, once
            self.filesystem, self.root = resolve_uri(self.uri)
        else:
            self.filesystem, self.root = filesystem, str(output_dir).rstrip("/")
            self.uri = self.root
        self._named_by_uri = filesystem is None
        self.unreadable: dict[str, str] = {}  # metadata files `records` could not read: the reason

    def path(self, *parts: str) -> str:
        """`parts` under the folder, as a path on `filesystem`."""
        return "/".join([self.root, *parts])

    def video_path(self, item_id: str) -> str:
        return self.path(VIDEOS_DIR, f"{item_id}.mp4")

    def video_uri(self, item_id: str) -> str:
        """Where a user reads videos/<id>.mp4 from any node: the URI, or the absolute path of a local folder (the
        path on `filesystem` when the store was given one)."""
        return child_uri(self.uri, VIDEOS_DIR, f"{item_id}.mp4") if self._named_by_uri else self.video_path(item_id)

    def write_video(self, item_id: str, frames: np.ndarray, fps: float) -> str:
        """videos/<id>.mp4, encoded to a local temporary file, copied into .partial/ and then moved into place: an
        MP4 in videos/ is always complete. Returns its `video_uri`."""
        with tempfile.TemporaryDirectory(prefix="humanim-encode-") as local:
            encoded = Path(local) / f"{item_id}.mp4"
            write_video(encoded, frames, fps)
            partial = self.path(PARTIAL_DIR, f"{item_id}.mp4")
            self.filesystem.create_dir(self.path(PARTIAL_DIR), recursive=True)
            with encoded.open("rb") as source, self.filesystem.open_output_stream(partial) as target:
                shutil.copyfileobj(source, target, COPY_CHUNK)
        self.filesystem.create_dir(self.path(VIDEOS_DIR), recursive=True)
        self.filesystem.move(partial, self.video_path(item_id))
        return self.video_uri(item_id)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.filesystem, self.path(name), text)

    def _parts(self) -> list[str]:
        selector = pyarrow.fs.FileSelector(self.path(PARTS_DIR), allow_not_found=True)
        return sorted(info.path for info in self.filesystem.get_file_info(selector)
                      if info.type == pyarrow.fs.FileType.File and info.path.endswith(".parquet"))

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest metadata row of every id: metadata.parquet, then the parts in the order they were written."""
        metadata = self.path(METADATA_NAME)
        files = ([metadata] if exists(self.filesystem, metadata) else []) + self._parts()
        records: dict[str, dict[str, Any]] = {}
        for path in files:
            for row in self._read(path):
                records[row["id"]] = row
        return records

    def _read(self, path: str) -> list[dict[str, Any]]:
        """A metadata file's rows; none (recorded in `unreadable` and logged) when it cannot be read."""
        try:
            return pq.read_table(path, schema=METADATA_SCHEMA, filesystem=self.filesystem).to_pylist()
        except (OSError, pa.ArrowException) as err:
            if path not in self.unreadable:
                log.warning("skipping unreadable render metadata %s (its rows will be rendered again): %s", path, err)
            self.unreadable[path] = str(err)
            return []

    def done(self) -> frozenset[str]:
        """Ids whose metadata says "ok" and whose MP4 exists."""
        selector = pyarrow.fs.FileSelector(self.path(VIDEOS_DIR), allow_not_found=True)
        # one listing, not a request per id (an object store answers each in milliseconds)
        videos = {info.path.rsplit("/", 1)[-1] for info in self.filesystem.get_file_info(selector)
                  if info.type == pyarrow.fs.FileType.File}
        return frozenset(
            item_id for item_id, row in self.records().items() if row["status"] == "ok" and f"{item_id}.mp4" in videos
        )

    def append(self, table: pa.Table) -> None:
        """Outcomes of this run as they arrive (a crash keeps them for the next run)."""
        self.filesystem.create_dir(self.path(PARTS_DIR), recursive=True)
        name = f"{time.time_ns():020d}"
        temporary = self.path(PARTS_DIR, f"{name}.tmp")  # not a part until complete: a crash leaves no torn part
        pq.write_table(table.cast(METADATA_SCHEMA), temporary, filesystem=self.filesystem)
        self.filesystem.move(temporary, self.path(PARTS_DIR, f"{name}.parquet"))

    def finish(self, ids: list[str]) -> pa.Table:
        """Merge everything into metadata.parquet (manifest order first, then ids of earlier manifests); called when
        the run's stream has ended."""
        records = self.records()
        order = [item_id for item_id in ids if item_id in records]
        order += sorted(set(records) - set(order))
        table = metadata_table([records[item_id] for item_id in order])
        temporary = self.path(f".{METADATA_NAME}")
        self.filesystem.create_dir(self.root, recursive=True)
        pq.write_table(table, temporary, filesystem=self.filesystem)
        self._set_aside_unreadable()
        self.filesystem.move(temporary, self.path(METADATA_NAME))
        # merged parts and temporary files of a crash; no encoder runs now, so .partial/ holds leftovers of a crash
        for folder in (PARTS_DIR, PARTIAL_DIR):
            if exists(self.filesystem, self.path(folder)):
                self.filesystem.delete_dir(self.path(folder))
        return table

    def _set_aside_unreadable(self) -> None:
        """Move the unreadable metadata files into metadata.unreadable/ (kept for inspection, never read again)."""
        for path in self.unreadable:
            if exists(self.filesystem, path):
                self.filesystem.create_dir(self.path(UNREADABLE_DIR), recursive=True)
                self.filesystem.move(path, self.path(UNREADABLE_DIR, path.rsplit("/", 1)[-1]))
