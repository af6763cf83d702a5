"""The render job's output folder: metadata parts appear whole or not at all, a damaged one is skipped and reported
instead of failing every later run, and every file goes through the store's pyarrow filesystem (so the driver and
encoders on other nodes see the same folder)."""

from __future__ import annotations

import logging
import shutil
import uuid

import numpy as np
import pyarrow.fs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipelines.generation.render_store import (
    METADATA_NAME,
    PARTIAL_DIR,
    PARTS_DIR,
    UNREADABLE_DIR,
    RenderStore,
    metadata_table,
)
from pipelines.io.video import read_video


def test_a_truncated_part_is_skipped_reported_and_set_aside(tmp_path, caplog):
    store = RenderStore(tmp_path)
    store.append(metadata_table([{"id": "a", "status": "ok"}]))
    store.append(metadata_table([{"id": "b", "status": "ok"}]))
    parts = sorted((tmp_path / PARTS_DIR).iterdir())
    assert [part.suffix for part in parts] == [".parquet", ".parquet"]  # no temporary file left behind
    parts[1].write_bytes(parts[1].read_bytes()[:40])  # a crash (or disk fault) mid-write
    with caplog.at_level(logging.WARNING):
        records = RenderStore(tmp_path).records()
    assert list(records) == ["a"] and "skipping unreadable render metadata" in caplog.text
    rerun = RenderStore(tmp_path)
    table = rerun.finish(["a", "b"])
    assert table.column("id").to_pylist() == ["a"] and list(rerun.unreadable) == [str(parts[1])]
    assert pq.read_table(tmp_path / METADATA_NAME).num_rows == 1 and not (tmp_path / PARTS_DIR).exists()
    assert (tmp_path / UNREADABLE_DIR / parts[1].name).is_file()


@pytest.fixture()
def memory():
    """A pyarrow filesystem with no local folder behind it (fsspec's in-memory one), and a fresh root on it."""
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(MemoryFileSystem()))
    root = f"/render-{uuid.uuid4().hex}"
    yield filesystem, root
    filesystem.delete_dir(root)


def frames(count: int = 5) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def test_videos_metadata_and_resume_need_only_the_filesystem(memory, tmp_path, monkeypatch):
    filesystem, root = memory
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (or any local output folder)
    encoder = RenderStore(root, filesystem)  # an encode actor's store; the driver below has its own
    assert encoder.write_video("a", frames(), 8.0) == f"{root}/videos/a.mp4"
    video, fps = read_video(f"{root}/videos/a.mp4", "video", filesystem)
    assert video.shape == (5, 16, 16, 3) and fps == pytest.approx(8.0)

    driver = RenderStore(root, filesystem)
    driver.append(metadata_table([{"id": "a", "status": "ok", "output_path": encoder.video_uri("a")}]))
    driver.append(metadata_table([{"id": "b", "status": "ok"}, {"id": "c", "status": "failed", "stage": "prepare"}]))
    assert RenderStore(root, filesystem).done() == {"a"}  # b's MP4 is missing, c failed: both render again
    table = driver.finish(["c", "b", "a"])
    assert table.column("id").to_pylist() == ["c", "b", "a"]
    listing = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    names = {info.path.removeprefix(root) for info in listing}
    assert names == {"/videos", "/videos/a.mp4", f"/{METADATA_NAME}"}
    rerun = RenderStore(root, filesystem)
    assert rerun.done() == {"a"} and rerun.records()["a"]["output_path"] == f"{root}/videos/a.mp4"
    assert list(tmp_path.iterdir()) == []


def test_a_torn_upload_is_never_taken_as_done(memory, monkeypatch):
    filesystem, root = memory
    store = RenderStore(root, filesystem)

    def crash(source, target, length=0):  # the node dies after the first bytes reached the filesystem
        target.write(source.read(100))
        raise OSError("connection reset")

    monkeypatch.setattr(shutil, "copyfileobj", crash)
    with pytest.raises(OSError, match="connection reset"):
        store.write_video("a", frames(), 8.0)
    store.append(metadata_table([{"id": "a", "status": "ok"}]))  # even with metadata saying "ok"
    assert store.done() == frozenset()
    assert filesystem.get_file_info(f"{root}/videos/a.mp4").type == pyarrow.fs.FileType.NotFound
    monkeypatch.undo()
    store.finish(["a"])  # no encoder runs now: the torn upload is cleared away
    assert filesystem.get_file_info(f"{root}/{PARTIAL_DIR}").type == pyarrow.fs.FileType.NotFound


def test_a_relative_or_uri_output_dir_names_videos_any_node_can_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = RenderStore("out")
    assert relative.uri == str(tmp_path / "out")
    assert relative.video_uri("a") == str(tmp_path / "out" / "videos" / "a.mp4")
    uri = RenderStore(f"file://{tmp_path}/shared/")
    path = uri.write_video("a", frames(), 8.0)
    assert path == f"file://{tmp_path}/shared/videos/a.mp4" and (tmp_path / "shared" / "videos" / "a.mp4").is_file()
    assert not (tmp_path / "file:").exists()
