"""Training rows read back by key with pyarrow alone: what the fine-tuning job's workers read with.

A row key names a row's clip id, its Parquet file (a path on the row folder's filesystem) and its index in that
file. This module needs pyarrow alone (no torch, no models).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

KEY_COLUMNS = ("clip_id", "path", "row")


@dataclass(frozen=True)
class RowKey:
    """Where one training row lives: its clip id, its Parquet file (a path on the store's filesystem), its row."""

    clip_id: str
    path: str
    row: int


def keys_table(keys: list[RowKey]) -> pa.Table:
    return pa.Table.from_pylist([asdict(key) for key in keys])


def read_rows(filesystem: pyarrow.fs.FileSystem, keys: pa.Table) -> pa.Table:
    """The rows of `keys` (a table of `KEY_COLUMNS`), in that order; each file is read once."""
    wanted = keys.select(list(KEY_COLUMNS)).to_pylist()
    by_file: dict[str, list[int]] = defaultdict(list)
    for key in wanted:
        by_file[key["path"]].append(key["row"])
    tables = {path: _file_rows(filesystem, path, rows) for path, rows in by_file.items()}
    offsets = {(path, row): offset for path, rows in by_file.items() for offset, row in enumerate(rows)}
    table = pa.concat_tables([tables[key["path"]].slice(offsets[key["path"], key["row"]], 1) for key in wanted])
    ids = table.column("clip_id").to_pylist()
    if ids != [key["clip_id"] for key in wanted]:
        raise RuntimeError(f"rows changed on disk since the run was planned: expected {[k['clip_id'] for k in wanted]}, "
                           f"read {ids}")
    return table


def _file_rows(filesystem: pyarrow.fs.FileSystem, path: str, rows: list[int]) -> pa.Table:
    """`rows` of one Parquet file, in that order. Row stores write one row per row group, so only those groups
    are read; a file laid out otherwise is read whole."""
    file = pq.ParquetFile(filesystem.open_input_file(path))
    if file.metadata.num_row_groups != file.metadata.num_rows:
        return file.read().take(rows)
    groups = sorted(set(rows))
    return file.read_row_groups(groups).take([groups.index(row) for row in rows])
