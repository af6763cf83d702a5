"""What the video preprocessing job reads: a folder of videos, or a manifest (Parquet, JSONL or CSV).

Each video may come with sidecars: a motion source (a motion file, or EasyMocap output), 2D keypoints, a caption
and a person mask. In a folder they sit next to the video under the same stem:

    clip.mp4            the video (also .mov .avi .mkv .webm)
    clip.npz            motion (also clip.motion.npz, clip.motion.json, clip.easymocap.json, clip.easymocap/)
    clip.keypoints.npy  2D keypoints (also .npz, .json)
    clip.txt            caption
    clip.mask.png       person mask (also .npy, .mp4)

A manifest has a `video` column and optional `id`, `motion`, `keypoints`, `caption` (the text itself) and `mask`
columns; relative paths are relative to the manifest's folder. Missing files are not checked here: the stage that
needs one records its absence as that clip's failure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MANIFEST_READERS = {
    ".parquet": pq.read_table,
    ".jsonl": pyarrow.json.read_json,
    ".csv": pyarrow.csv.read_csv,
}
SIDECAR_NAMES = {
    "motion": (".npz", ".motion.npz", ".motion.json", ".easymocap.json", ".easymocap"),
    "keypoints": (".keypoints.npy", ".keypoints.npz", ".keypoints.json"),
    "caption": (".txt",),
    "mask": (".mask.png", ".mask.npy", ".mask.mp4"),
}
PATH_COLUMNS = ("video", "motion", "keypoints", "mask")
MANIFEST_COLUMNS = ("id", *PATH_COLUMNS, "caption")


class ManifestError(ValueError):
    """An input listing that cannot be read; the message names the file and the column or value."""


@dataclass(frozen=True)
class VideoItem:
    """One input video and its optional sidecars (paths as strings; caption as text)."""

    video_id: str
    video: str
    motion: str | None = None
    keypoints: str | None = None
    caption: str | None = None
    mask: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_sidecar(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in SIDECAR_NAMES["mask"])


def _sidecar(video: Path, kind: str) -> Path | None:
    for suffix in SIDECAR_NAMES[kind]:
        candidate = video.with_name(video.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def _folder_item(video: Path) -> VideoItem:
    sidecars = {kind: _sidecar(video, kind) for kind in ("motion", "keypoints", "mask")}
    caption_file = _sidecar(video, "caption")
    caption = caption_file.read_text(encoding="utf-8").strip() if caption_file else None
    return VideoItem(
        video_id=video.stem,
        video=str(video),
        caption=caption or None,
        **{kind: None if path is None else str(path) for kind, path in sidecars.items()},
    )


def list_folder(folder: Path) -> list[VideoItem]:
    """The videos directly in `folder` (sorted by name) with their sidecars."""
    videos = sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not _is_sidecar(path)
    )
    return _unique([_folder_item(video) for video in videos], str(folder))


def manifest_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A Parquet, JSONL or CSV manifest's column names and rows, in file order; empty cells are None."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (expected a .parquet, .jsonl or .csv file)")
    reader = MANIFEST_READERS.get(path.suffix.lower())
    if reader is None:
        raise ManifestError(f"manifest {path}: unknown format; use one of {sorted(MANIFEST_READERS)}")
    try:
        table: pa.Table = reader(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"manifest {path} cannot be read: {err}") from None
    rows = [{key: _blank_to_none(value) for key, value in row.items()} for row in table.to_pylist()]
    return table.column_names, rows


def _blank_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def read_manifest(path: Path) -> list[VideoItem]:
    """The rows of a Parquet, JSONL or CSV manifest as video items, in file order."""
    columns, rows = manifest_rows(path)
    unknown = sorted(set(columns) - set(MANIFEST_COLUMNS))
    if unknown or "video" not in columns:
        raise ManifestError(
            f"manifest {path}: needs a 'video' column and may have {list(MANIFEST_COLUMNS[1:])} and 'id'; "
            f"got columns {columns}"
        )
    items = []
    for index, row in enumerate(rows):
        if row["video"] is None:
            raise ManifestError(f"manifest {path}: row {index} has no 'video'")
        paths = {key: str(path.parent / str(row[key])) for key in PATH_COLUMNS if row.get(key) is not None}
        video_id = str(row.get("id") or Path(str(row["video"])).stem)
        caption = None if row.get("caption") is None else str(row["caption"])
        items.append(VideoItem(video_id=video_id, caption=caption, **paths))
    return _unique(items, str(path))


def _unique(items: list[VideoItem], source: str) -> list[VideoItem]:
    seen: dict[str, str] = {}
    for item in items:
        if item.video_id in seen:
            raise ManifestError(
                f"{source}: video id {item.video_id!r} is used by both {seen[item.video_id]} and {item.video}; "
                "clip ids must be unique (give the manifest an 'id' column)"
            )
        seen[item.video_id] = item.video
    return items


def list_videos(source: str | Path) -> list[VideoItem]:
    """The job's input: a folder of videos or a manifest file."""
    source = Path(source)
    if source.is_dir():
        return list_folder(source)
    if source.is_file():
        return read_manifest(source)
    raise FileNotFoundError(
        f"videos not found: {source} (expected a folder of videos or a .parquet/.jsonl/.csv manifest)"
    )
