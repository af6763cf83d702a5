"""Which training rows each worker reads at every step: a deterministic function of (seed, epoch, rank).

The driver lists the rows once (`plan_rows`: row keys sorted by clip id, validation rows held out by seed).
Every epoch the training rows are permuted by (seed, epoch); optimizer step s of the epoch takes the next
`batch_size` rows of that permutation, and micro-step a of worker r takes its slice of them (`step_rows`). So
where a run stands is just its step count: a resumed run starts its schedule at the next step and reads
exactly the rows an uninterrupted run would have read. Rows that do not fill a whole step at the end of an
epoch wait for the next epoch's permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet as pq
import yaml

from models.backbones.config import BackboneConfig
from pipelines.io.config import RESOLVED_CONFIG_NAME
from pipelines.io.row_reader import RowKey
from pipelines.io.training_rows import ROWS_DIR, RowStore
from pipelines.training.config import TrainJobConfig


@dataclass(frozen=True)
class RowPlan:
    """The row folder and its rows, split into training and held-out validation rows (each sorted by clip id)."""

    rows_uri: str
    train: tuple[RowKey, ...]
    validation: tuple[RowKey, ...]
    columns: frozenset[str] = frozenset()  # the columns every row file has (e.g. text_embeds unless `text: caption`)


def list_rows(store: RowStore) -> list[RowKey]:
    """Every row under `<store>/rows/`, sorted by clip id (files whose names start with '_' or '.' are unfinished)."""
    if store.filesystem.get_file_info(store.path(ROWS_DIR)).type == pyarrow.fs.FileType.NotFound:
        return []
    files = pyarrow.dataset.dataset(store.path(ROWS_DIR), filesystem=store.filesystem, format="parquet").files
    keys = []
    for path in files:
        ids = pq.read_table(path, columns=["clip_id"], filesystem=store.filesystem).column("clip_id").to_pylist()
        keys += [RowKey(clip_id, path, row) for row, clip_id in enumerate(ids)]
    return sorted(keys, key=lambda key: key.clip_id)


def _check_backbone(store: RowStore, config: TrainJobConfig) -> None:
    """The rows' latents must have the shapes the training backbone expects."""
    written = yaml.safe_load(store.read_text(RESOLVED_CONFIG_NAME) or "null") or {}
    if not isinstance(written.get("backbone"), dict):
        return
    rows, ours = BackboneConfig.model_validate(written["backbone"]), config.backbone_config()

    def shape(backbone: BackboneConfig) -> dict[str, Any]:
        return {
            "family": backbone.family,
            "variant": backbone.variant,
            "resolution": tuple(backbone.resolution or backbone.spec.default_resolution),
            "num_frames": backbone.num_frames or backbone.spec.default_num_frames,
        }

    if shape(rows) != shape(ours):
        raise ValueError(
            f"data.rows_dir: the rows were made for backbone {shape(rows)} but this run trains {shape(ours)}"
        )


def plan_rows(config: TrainJobConfig) -> RowPlan:
    """List and check the rows (present, made for this backbone, enough for a step after the hold-out)."""
    store = RowStore(config.data.rows_dir)
    keys = list_rows(store)
    if not keys:
        raise ValueError(
            f"data.rows_dir: no training rows under {store.uri}/{ROWS_DIR}; run the preprocessing job "
            "(humanim preprocess --config configs/preprocess/...) with that output_dir first"
        )
    _check_backbone(store, config)
    held = config.data.validation_rows
    if held >= len(keys):
        raise ValueError(f"data.validation_rows: {held} held out of {len(keys)} rows leaves none to train on")
    order = np.random.default_rng([config.seed]).permutation(len(keys))
    validation = sorted((keys[i] for i in order[:held]), key=lambda key: key.clip_id)
    train = sorted((keys[i] for i in order[held:]), key=lambda key: key.clip_id)
    if len(train) < config.batch_size:
        raise ValueError(
            f"batch_size: {config.batch_size} rows per step but only {len(train)} training rows "
            f"({len(keys)} rows, {held} held out for validation)"
        )
    return RowPlan(store.uri, tuple(train), tuple(validation), common_columns(store, keys))


def common_columns(store: RowStore, keys: list[RowKey]) -> frozenset[str]:
    """The columns that every row file of `keys` has, read from their Parquet schemas."""
    names = []
    for path in sorted({key.path for key in keys}):
        with store.filesystem.open_input_file(path) as file:
            names.append(set(pq.read_schema(file).names))
    return frozenset(set.intersection(*names)) if names else frozenset()


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    return num_rows // batch_size


@lru_cache(maxsize=2)
def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training rows in `epoch` (read-only; cached: consecutive steps share it)."""
    permutation = np.random.default_rng([seed, epoch]).permutation(num_rows)
    permutation.flags.writeable = False
    return permutation


def step_rows(
    rows: tuple[RowKey, ...], seed: int, step: int, rank: int, world_size: int, micro_batch: int, accumulation: int
) -> list[list[RowKey]]:
    """Worker `rank`'s micro-batches of optimizer step `step` (counted from 0 over the whole run)."""
    per_step = micro_batch * world_size * accumulation
    epoch, position = divmod(step, steps_per_epoch(len(rows), per_step))
    block = epoch_permutation(len(rows), seed, epoch)[position * per_step : (position + 1) * per_step]
    starts = [(micro * world_size + rank) * micro_batch for micro in range(accumulation)]
    return [[rows[i] for i in block[start : start + micro_batch]] for start in starts]
