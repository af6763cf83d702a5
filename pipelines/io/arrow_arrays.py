"""Numpy arrays in Arrow: list and tensor columns, and a dict of arrays packed as one binary cell."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa


def list_column(cells: list[np.ndarray | None], list_type: pa.DataType) -> pa.Array:
    """Numpy arrays as one Arrow list column without a per-element Python loop (None -> null)."""
    value_type = list_type.value_type.to_pandas_dtype()
    flat = [np.asarray(cell, dtype=value_type).reshape(-1) for cell in cells if cell is not None]
    lengths = [0 if cell is None else np.asarray(cell).size for cell in cells]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), type=pa.int64())
    values = pa.array(np.concatenate(flat) if flat else np.zeros(0, value_type))
    nulls = pa.array([cell is None for cell in cells])
    array_class = pa.LargeListArray if pa.types.is_large_list(list_type) else pa.ListArray
    offsets = offsets if pa.types.is_large_list(list_type) else offsets.cast(pa.int32())
    return array_class.from_arrays(offsets, values, type=list_type, mask=nulls)


def tensor_column(arrays: list[np.ndarray]) -> pa.FixedSizeListArray:
    """Same-size arrays as one fixed-size float32 list column (their shapes are stored beside it)."""
    flat = np.stack([np.asarray(array, dtype=np.float32) for array in arrays]).reshape(len(arrays), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def pack_state(state: dict[str, np.ndarray]) -> bytes:
    """Arrays by name as an uncompressed .npz (never a pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    return buffer.getvalue()


def unpack_state(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}
