"""The evaluation job's configuration and flow (no Ray): pair generated and ground-truth videos by file stem, score
each pair, aggregate per-video rows into the papers' table and write the report."""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.csv
import pyarrow.fs
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.paths import ProjectPath, ProjectUri
from pipelines.evaluation.feature_networks import (
    I3D_WHAT,
    INCEPTION_WHAT,
    LPIPS_BACKBONE_WHAT,
    LPIPS_LINEAR_WHAT,
    FeatureNetwork,
    FeatureNetworkConfig,
    Lpips,
    LpipsConfig,
    require_file,
)
from pipelines.evaluation.metrics import feature_frechet_distance, l1_distance, psnr, silhouette_iou_per_frame, ssim
from pipelines.io.arrow_arrays import pack_state, unpack_state
from pipelines.io.config import StageResources
from pipelines.io.failures import describe_error
from pipelines.io.filesystem import child_uri, resolve_uri
from pipelines.io.manifest import VIDEO_SUFFIXES
from pipelines.io.video import read_video

TABLE_COLUMNS = (("silhouette_iou", "Sil. IoU↑"), ("l1", "L1↓"), ("psnr", "PSNR↑"), ("ssim", "SSIM↑"),
                 ("lpips", "LPIPS↓"), ("fid", "FID↓"), ("fid_vid", "FID-VID↓"), ("fvd", "FVD↓"))
PER_VIDEO_METRICS = ("silhouette_iou", "l1", "psnr", "ssim", "lpips")
# The baseline every table shows: the reference image (the ground truth's first frame) repeated, scored the same way.
STATIC = "static"
STATIC_METRICS = ("silhouette_iou", "l1", "psnr", "ssim")
BACKGROUND_SUFFIX = ".background.png"
PER_VIDEO_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("generated_path", pa.string()),
        ("reference_path", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),
        ("frames", pa.int32()),  # frames compared
        ("l1", pa.float64()),
        ("psnr", pa.float64()),
        ("ssim", pa.float64()),
        ("lpips", pa.float64()),
        ("silhouette_iou", pa.float64()),  # null without a known background
        ("silhouette_iou_frames", pa.list_(pa.float64())),
        *((f"{STATIC}_{key}", pa.float64()) for key in STATIC_METRICS),
    ]
)
FEATURES_COLUMN = "features"  # .npz of the pair's feature arrays; dropped from the written table


# The evaluation job's configuration and per-pair flow


class EvaluateJobConfig(BaseModel):
    """Generated videos vs ground truth, paired by file stem."""

    model_config = ConfigDict(extra="forbid")

    generated: ProjectUri = Field(description="folder of generated videos: a local path or a pyarrow filesystem URI (e.g. "
                           "the render job's <output_dir>/videos)")
    reference: ProjectUri = Field(description="folder of ground-truth videos with the same file stems (a path or URI)")
    output_dir: ProjectPath
    name: str = Field("humanim", description="the method's name in the Markdown table")
    lpips: LpipsConfig | None = None
    inception: FeatureNetworkConfig | None = Field(None, description="FID and FID-VID")
    i3d: FeatureNetworkConfig | None = Field(None, description="FVD")
    resources: StageResources = StageResources()

    def check_weights(self) -> None:
        """Every configured weights file exists (FileNotFoundError naming it otherwise), before any work starts."""
        if self.lpips is not None:
            require_file(self.lpips.backbone_weights, "lpips.backbone_weights",
                         LPIPS_BACKBONE_WHAT.format(net={"alex": "AlexNet", "vgg": "VGG-16"}[self.lpips.net]))
            require_file(self.lpips.linear_weights, "lpips.linear_weights",
                         LPIPS_LINEAR_WHAT.format(net=self.lpips.net))
        if self.inception is not None:
            require_file(self.inception.path, "inception.path", INCEPTION_WHAT)
        if self.i3d is not None:
            require_file(self.i3d.path, "i3d.path", I3D_WHAT)


def _videos(folder: str, field: str) -> dict[str, str]:
    """The folder's videos by file stem, each as a path or URI under `folder` (see `child_uri`)."""
    filesystem, root = resolve_uri(folder)
    if filesystem.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(f"{field}: folder not found: {folder} (expected a folder of videos)")
    names = sorted(PurePosixPath(info.path).name for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root))
                   if info.type == pyarrow.fs.FileType.File)
    return {PurePosixPath(name).stem: child_uri(folder, name) for name in names
            if PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES}


def pair_videos(generated: str | Path, reference: str | Path) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Pairs `{id, generated_path, reference_path}` by file stem (paths or URIs, as the folders were given), and the
    stems found on one side only."""
    ours, truth = _videos(str(generated), "generated"), _videos(str(reference), "reference")
    pairs = [{"id": stem, "generated_path": ours[stem], "reference_path": truth[stem]}
             for stem in sorted(set(ours) & set(truth))]
    return pairs, {"generated_only": sorted(set(ours) - set(truth)), "reference_only": sorted(set(truth) - set(ours))}


def _read_video(uri: str, field: str) -> np.ndarray:
    filesystem, path = resolve_uri(uri)
    return read_video(path, field, filesystem)[0]


def _background(reference_path: str, size: tuple[int, int]) -> np.ndarray | None:
    """The clip's static background (`<stem>.background.png` beside the ground truth) at `size`, if there is one."""
    filesystem, path = resolve_uri(reference_path)
    path = str(PurePosixPath(path).with_suffix(BACKGROUND_SUFFIX))
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_file(path) as file, PIL.Image.open(file) as image:
        image = image.convert("RGB")
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), PIL.Image.Resampling.BICUBIC)
        return np.asarray(image)


def aligned(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The ground truth cut to the generated length and resized (bicubic) to the generated size."""
    if len(reference) < len(generated):
        raise ValueError(f"the ground truth has {len(reference)} frames, fewer than the {len(generated)} generated")
    reference = reference[: len(generated)]
    height, width = generated.shape[1:3]
    if reference.shape[1:3] == (height, width):
        return reference
    return np.stack([np.asarray(PIL.Image.fromarray(f).resize((width, height), PIL.Image.Resampling.BICUBIC))
                     for f in reference])


class PairEvaluator:
    """Scores one video pair; holds the feature networks, so they are loaded once per worker."""

    def __init__(self, config: EvaluateJobConfig, device: str = "cpu") -> None:
        self.device = device
        self.lpips = None if config.lpips is None else Lpips.load(config.lpips, device)
        self.inception = None if config.inception is None else FeatureNetwork(
            config.inception, "inception.path", INCEPTION_WHAT, device)
        self.i3d = None if config.i3d is None else FeatureNetwork(config.i3d, "i3d.path", I3D_WHAT, device)

    def _lpips(self, generated: np.ndarray, reference: np.ndarray) -> float:
        pixels = [torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
                  for x in (generated, reference)]
        return float(torch.cat([self.lpips(a, b) for a, b in zip(pixels[0].split(16), pixels[1].split(16))]).mean())

    def _pixel_metrics(self, generated: np.ndarray, reference: np.ndarray, background: np.ndarray | None) -> dict:
        metrics = {"l1": l1_distance(generated, reference), "psnr": psnr(generated, reference),
                   "ssim": ssim(generated, reference, self.device)}
        if background is not None:
            per_frame = silhouette_iou_per_frame(generated, reference, background)
            metrics.update(silhouette_iou=float(per_frame.mean()), silhouette_iou_frames=per_frame.tolist())
        return metrics

    def evaluate(self, pair: dict[str, str]) -> dict[str, Any]:
        """The pair's row (`PER_VIDEO_SCHEMA` plus its packed features)."""
        row: dict[str, Any] = {**pair, "status": "ok"}
        try:
            generated = _read_video(pair["generated_path"], "generated")
            reference = aligned(generated, _read_video(pair["reference_path"], "reference"))
            background = _background(pair["reference_path"], generated.shape[1:3])
            row.update(frames=len(generated), **self._pixel_metrics(generated, reference, background))
            static = np.repeat(reference[:1], len(reference), axis=0)
            baseline = self._pixel_metrics(static, reference, background)
            row.update({f"{STATIC}_{key}": baseline.get(key) for key in STATIC_METRICS})
            features: dict[str, np.ndarray] = {}
            if self.lpips is not None:
                row["lpips"] = self._lpips(generated, reference)
            if self.inception is not None:
                features["inception_generated"] = self.inception.frame_features(generated)
                features["inception_reference"] = self.inception.frame_features(reference)
            if self.i3d is not None:
                features["i3d_generated"] = self.i3d.video_features(generated)
                features["i3d_reference"] = self.i3d.video_features(reference)
            row[FEATURES_COLUMN] = pack_state(features)
        except Exception as err:  # noqa: BLE001 - a failed pair is recorded, never lost
            row.update(status="failed", error=describe_error(err))
        return row

    def __call__(self, batch: pa.Table) -> pa.Table:
        return per_video_table([self.evaluate(pair) for pair in batch.to_pylist()], with_features=True)


def per_video_table(rows: list[dict[str, Any]], with_features: bool = False) -> pa.Table:
    schema = PER_VIDEO_SCHEMA
    if with_features:
        schema = schema.append(pa.field(FEATURES_COLUMN, pa.large_binary()))
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


# Aggregation and the report


def _fid_or_none(generated: list[np.ndarray], reference: list[np.ndarray]) -> float | None:
    """Frechet distance of the stacked features; None with fewer than 2 samples a side (no covariance)."""
    if len(generated) < 2 or len(reference) < 2:
        return None
    return feature_frechet_distance(np.stack(generated), np.stack(reference))


def _means(rows: list[dict[str, Any]], keys: tuple[str, ...], prefix: str = "") -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for key in keys:
        values = [row[prefix + key] for row in rows if row[prefix + key] is not None]
        result[key] = float(np.mean(values)) if values else None
    return result


def aggregate_static(table: pa.Table) -> dict[str, float | None]:
    """The static baseline's per-video metrics, averaged over the "ok" pairs."""
    return _means([row for row in table.to_pylist() if row["status"] == "ok"], STATIC_METRICS, f"{STATIC}_")


def aggregate(table: pa.Table) -> dict[str, float | None]:
    """The table's metrics over its "ok" pairs: means of the per-video ones, Frechet distances of the features."""
    rows = [row for row in table.to_pylist() if row["status"] == "ok"]
    result = _means(rows, PER_VIDEO_METRICS)
    features = [unpack_state(row[FEATURES_COLUMN]) for row in rows]
    frames = [f for f in features if "inception_generated" in f]
    result["fid"] = _fid_or_none([x for f in frames for x in f["inception_generated"]],
                                 [x for f in frames for x in f["inception_reference"]])
    result["fid_vid"] = _fid_or_none([f["inception_generated"].mean(0) for f in frames],
                                     [f["inception_reference"].mean(0) for f in frames])
    videos = [f for f in features if "i3d_generated" in f]
    result["fvd"] = _fid_or_none([f["i3d_generated"] for f in videos], [f["i3d_reference"] for f in videos])
    return result


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key == "l1":
        return f"{value:.2E}"
    if key in ("ssim", "lpips"):
        return f"{value:.4f}"
    return f"{value:.2f}"


def markdown_table(methods: dict[str, dict[str, float | None]]) -> str:
    """The aggregates in the papers' layout, a row per method; "—" where a metric was not computed."""
    header = "| Method | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
    rows = [f"| {name} | " + " | ".join(_cell(key, metrics.get(key)) for key, _ in TABLE_COLUMNS) + " |"
            for name, metrics in methods.items()]
    return "\n".join([header, rule, *rows]) + "\n"


def _finite(metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {key: (None if value is None or math.isinf(value) else value) for key, value in metrics.items()}


def write_report(config: EvaluateJobConfig, table: pa.Table, unpaired: dict[str, list[str]]) -> dict[str, Any]:
    """per_video.parquet/.csv, metrics.md and summary.json under `output_dir`; returns the summary."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    metrics = aggregate(table)
    per_video = table.select(PER_VIDEO_SCHEMA.names)
    pq.write_table(per_video, output / "per_video.parquet")
    pyarrow.csv.write_csv(per_video.drop_columns(["silhouette_iou_frames"]), output / "per_video.csv")  # no lists
    static = aggregate_static(table)
    table_rows = {config.name: metrics, f"{STATIC} (reference repeated)": static}
    (output / "metrics.md").write_text(markdown_table(table_rows))
    statuses = per_video.column("status").to_pylist()
    summary = {
        "pairs": len(statuses),
        "evaluated": statuses.count("ok"),
        "failed": statuses.count("failed"),
        **unpaired,
        "metrics": _finite(metrics),
        "infinite": sorted(key for key, value in metrics.items() if value is not None and math.isinf(value)),
        "static_metrics": _finite(static),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
