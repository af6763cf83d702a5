"""A warp operator as Arrow columns (`models.noise_warp.WarpOperator.to_arrays`): the fields that the motion-folder
job's operator rows and the training rows share, and the operator read back from one row."""

from __future__ import annotations

import pyarrow as pa
import torch

from models.noise_warp import WarpOperator

OPERATOR_FIELDS = pa.schema(
    [
        ("latent_shape", pa.list_(pa.int32())),  # F_lat, h, w
        ("texture_size", pa.list_(pa.int32())),  # Hq, Wq
        ("num_background", pa.int32()),
        ("indptr", pa.large_list(pa.int64())),
        ("indices", pa.large_list(pa.int32())),
        ("values", pa.large_list(pa.float32())),
    ]
)


def row_operator(table: pa.Table, index: int, device: torch.device | str = "cpu") -> WarpOperator:
    """The warp operator of row `index`."""
    arrays = {}
    for name in OPERATOR_FIELDS.names:
        cell = table.column(name)[index]
        is_list = name != "num_background"
        arrays[name] = cell.values.to_numpy(zero_copy_only=False, writable=True) if is_list else cell.as_py()
    return WarpOperator.from_arrays(arrays, device)
