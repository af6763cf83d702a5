"""The render job's output folder: metadata parts appear whole or not at all, and a damaged one is skipped and
reported instead of failing every later run."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from pipelines.generation.render_store import METADATA_NAME, PARTS_DIR, UNREADABLE_DIR, RenderStore, metadata_table


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
    assert table.column("id").to_pylist() == ["a"] and list(rerun.unreadable) == [parts[1]]
    assert pq.read_table(tmp_path / METADATA_NAME).num_rows == 1 and not (tmp_path / PARTS_DIR).exists()
    assert (tmp_path / UNREADABLE_DIR / parts[1].name).is_file()
