"""Video quality metrics, their feature networks, and the per-pair evaluation flow (no Ray).

Pixel metrics, computed here on uint8 RGB frames `[T, H, W, 3]` of a generated and a ground-truth video:

- L1: mean absolute difference of pixel values scaled to [0, 1], over all frames, pixels and channels.
- PSNR: `10 log10(255^2 / MSE)`, MSE over all frames, pixels and channels of the video; inf when they are equal.
- SSIM (Wang et al. 2004): on luminance `Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601, on [0, 255], not
  rounded); 11x11 Gaussian window with sigma 1.5 normalised to sum 1; K1 = 0.01, K2 = 0.03, L = 255; population
  (co)variances; only windows that lie inside the frame ("valid"; frames need H, W >= 11); no downsampling. The
  mean of the SSIM map of each frame, averaged over frames.

Feature metrics, only when the config points at local weights (nothing is downloaded):

- LPIPS (v0.1, Zhang et al. 2018): AlexNet or VGG-16 features, unit-normalised per channel, squared differences
  weighted by the LPIPS linear layers, averaged over space and summed over layers; inputs in [-1, 1]. Per frame,
  averaged over frames. Weights: two safetensors files, `backbone_weights` with torchvision's key names
  (`features.<i>.weight` / `.bias`) and `linear_weights` with the lpips package's (`lin<k>.model.1.weight`,
  `[1, C, 1, 1]`); e.g. `safetensors.torch.save_file(torch.load("alex.pth"), "lpips_alex.safetensors")`.
- FID: Frechet distance between Gaussian fits of Inception-v3 pool features of every frame of the generated and
  of the ground-truth videos. FID-VID: the same over one feature per video, the mean of its frames' features.
- FVD: Frechet distance between Gaussian fits of I3D features, one per video (its first `num_frames` frames).
  Inception and I3D are TorchScript modules (`torch.jit.load`) with a documented call: see `FeatureNetworkConfig`.

Videos are paired by file stem; the ground truth is cut to the generated length (a shorter one fails the pair)
and resized (bicubic) to the generated size when they differ. Aggregates are means over videos, as in the papers'
tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file

from pipelines.io.arrow_arrays import pack_state, unpack_state
from pipelines.preprocess.clips import decode_frames, probe_video
from pipelines.io.config import StageResources
from pipelines.io.failures import describe_error
from pipelines.io.manifest import VIDEO_SUFFIXES

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PIXEL_MAX = 255.0
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
TABLE_COLUMNS = (("l1", "L1↓"), ("psnr", "PSNR↑"), ("ssim", "SSIM↑"), ("lpips", "LPIPS↓"), ("fid", "FID↓"),
                 ("fid_vid", "FID-VID↓"), ("fvd", "FVD↓"))
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
    ]
)
FEATURES_COLUMN = "features"  # .npz of the pair's feature arrays; dropped from the written table


# Pixel metrics


def _pair(generated: np.ndarray, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if generated.shape != reference.shape or generated.ndim != 4 or generated.shape[-1] != 3:
        raise ValueError(f"videos must both be [T, H, W, 3] of one shape, got {generated.shape} and {reference.shape}")
    return torch.from_numpy(np.asarray(generated)).double(), torch.from_numpy(np.asarray(reference)).double()


def l1_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of pixel values scaled to [0, 1]."""
    a, b = _pair(generated, reference)
    return float((a - b).abs().mean() / PIXEL_MAX)


def psnr(generated: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB from the MSE over the whole video; inf for equal videos."""
    a, b = _pair(generated, reference)
    mse = float((a - b).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(PIXEL_MAX**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The 1-D Gaussian taps `[size]`, float64, summing to 1 (the 2-D window is their outer product)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` RGB on [0, 255] -> `[...]` BT.601 luma on [0, 255]."""
    return frames @ torch.tensor(LUMA_WEIGHTS, dtype=frames.dtype, device=frames.device)


def _blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """`[N, H, W]` filtered with the separable window, valid part only: `[N, H-10, W-10]`."""
    x = images[:, None]
    x = F.conv2d(x, taps.view(1, 1, -1, 1))
    return F.conv2d(x, taps.view(1, 1, 1, -1))[:, 0]


def ssim_per_frame(generated: np.ndarray, reference: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Mean SSIM of each frame's luminance, `[T]` (see the module docstring for the definition)."""
    a, b = (luminance(x.to(device)) for x in _pair(generated, reference))
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(a.shape[1:])}")
    taps = gaussian_window().to(device)
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    mu_a, mu_b = _blur(a, taps), _blur(b, taps)
    var_a = _blur(a * a, taps) - mu_a**2
    var_b = _blur(b * b, taps) - mu_b**2
    cov = _blur(a * b, taps) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2)).cpu().numpy()


def ssim(generated: np.ndarray, reference: np.ndarray, device: str | torch.device = "cpu") -> float:
    """SSIM of a video: the mean over frames of `ssim_per_frame`."""
    return float(ssim_per_frame(generated, reference, device).mean())


# Frechet distance


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and covariance `[D, D]` (unbiased, as FID's reference code) of features `[N, D]`, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"a Gaussian fit needs features [N >= 2, D], got shape {list(features.shape)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """`|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` between two Gaussians.

    `tr((S1 S2)^(1/2))` is computed as `tr((S1^(1/2) S2 S1^(1/2))^(1/2))` (same eigenvalues, but a symmetric
    PSD matrix), which stays real and stable for the singular covariances of few samples."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Gaussians of different dimensions: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    root = _psd_sqrt(sigma1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma2 @ root), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def feature_frechet_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets `[N, D]`."""
    return frechet_distance(*gaussian_fit(generated), *gaussian_fit(reference))


# Feature networks


def require_file(path: Path, field: str, what: str) -> Path:
    """`path`, or a FileNotFoundError naming the config field, the path and what belongs there."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{field}: {path} not found; put {what} there (nothing is downloaded)")
    return Path(path)


LPIPS_BACKBONE_WHAT = (
    "the {net} convolution weights as safetensors with torchvision's key names (features.<i>.weight/bias), "
    "converted from torchvision's ImageNet checkpoint"
)
LPIPS_LINEAR_WHAT = (
    "the LPIPS v0.1 linear layers for {net} as safetensors (keys lin0.model.1.weight .. lin4.model.1.weight), "
    "converted from the lpips package's weights/v0.1/{net}.pth"
)
# torchvision's `features` layers: ("C", in, out, kernel, stride, padding), ("M",) max-pool 3/2 (AlexNet) or
# 2/2 (VGG); LPIPS reads the ReLU after each tapped convolution.
_ALEX = [("C", 3, 64, 11, 4, 2), ("M",), ("C", 64, 192, 5, 1, 2), ("M",), ("C", 192, 384, 3, 1, 1),
         ("C", 384, 256, 3, 1, 1), ("C", 256, 256, 3, 1, 1)]
_VGG16 = [("C", 3, 64, 3, 1, 1), ("C", 64, 64, 3, 1, 1), ("M",), ("C", 64, 128, 3, 1, 1), ("C", 128, 128, 3, 1, 1),
          ("M",), *[("C", c, 256, 3, 1, 1) for c in (128, 256, 256)], ("M",),
          *[("C", c, 512, 3, 1, 1) for c in (256, 512, 512)], ("M",), *[("C", 512, 512, 3, 1, 1)] * 3]
LPIPS_NETS: dict[str, tuple[list[tuple], tuple[int, ...], int]] = {
    # layers, indices (in torchvision's `features`) of the tapped ReLUs, max-pool kernel
    "alex": (_ALEX, (1, 4, 7, 9, 11), 3),
    "vgg": (_VGG16, (3, 8, 15, 22, 29), 2),
}
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LpipsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    net: Literal["alex", "vgg"] = "alex"
    backbone_weights: Path = Field(description="AlexNet/VGG-16 `features` weights (.safetensors, torchvision names)")
    linear_weights: Path = Field(description="LPIPS v0.1 linear layers (.safetensors, lpips names)")


class Lpips(torch.nn.Module):
    """LPIPS v0.1 on AlexNet or VGG-16 features (torchvision's `features` layout, so its weights load as is)."""

    def __init__(self, net: Literal["alex", "vgg"]) -> None:
        super().__init__()
        layers, self.taps, pool = LPIPS_NETS[net]
        modules: list[torch.nn.Module] = []
        for spec in layers:
            if spec[0] == "M":
                modules.append(torch.nn.MaxPool2d(pool, 2))
            else:
                modules += [torch.nn.Conv2d(*spec[1:4], stride=spec[4], padding=spec[5]), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*modules)
        widths = [self.features[index - 1].out_channels for index in self.taps]
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(width, 1, 1, bias=False) for width in widths)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    @classmethod
    def load(cls, config: LpipsConfig, device: str | torch.device = "cpu") -> Lpips:
        """LPIPS with the weights of `config`; a clear error when a file is missing or holds other keys."""
        model = cls(config.net)
        name = {"alex": "AlexNet", "vgg": "VGG-16"}[config.net]
        backbone = load_file(require_file(config.backbone_weights, "lpips.backbone_weights",
                                          LPIPS_BACKBONE_WHAT.format(net=name)))
        linear = load_file(require_file(config.linear_weights, "lpips.linear_weights",
                                        LPIPS_LINEAR_WHAT.format(net=config.net)))
        state = {key: value for key, value in backbone.items() if key.startswith("features.")}
        state.update({f"lins.{key[3]}.weight": value for key, value in linear.items()
                      if key.startswith("lin") and key.endswith(".model.1.weight")})
        expected = set(model.state_dict()) - {"shift", "scale"}
        if set(state) != expected:
            raise ValueError(
                f"lpips weights: {config.backbone_weights} and {config.linear_weights} do not fit LPIPS-{config.net}: "
                f"missing {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
            )
        model.load_state_dict(state, strict=False)
        return model.eval().to(device)

    def _layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The tapped ReLU outputs (the last layer is the last tap), unit-normalised over channels."""
        x, outputs = (images - self.shift) / self.scale, []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return outputs

    @torch.no_grad()
    def forward(self, generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Distances `[N]` between images `[N, 3, H, W]` in [-1, 1]."""
        pairs = zip(self._layers(generated), self._layers(reference))
        return sum(lin((a - b).square()).mean(dim=(1, 2, 3)) for lin, (a, b) in zip(self.lins, pairs))


class FeatureNetworkConfig(BaseModel):
    """A TorchScript feature network: `features = module(inputs, **kwargs)`, flattened to `[N, D]`.

    Inception (FID, FID-VID): inputs are frames `[N, 3, H, W]`; I3D (FVD): inputs are videos `[N, 3, T, H, W]`.
    Pixels are float32 mapped linearly from [0, 255] to `input_range`, resized (bilinear) to `resize` (H, W) if
    set, else passed at the video's size for the module to resize.
    """

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="TorchScript file (torch.jit.save)")
    input_range: tuple[float, float] = (0.0, 255.0)
    resize: tuple[int, int] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the call")
    batch_size: int = Field(32, ge=1, description="frames (Inception) or videos (I3D) per call")
    num_frames: int | None = Field(None, ge=1, description="I3D: the first frames of each video (None: all)")


INCEPTION_WHAT = "a TorchScript Inception-v3 (the FID weights) that maps frames [N, 3, H, W] to pool features [N, 2048]"
I3D_WHAT = "a TorchScript I3D (Kinetics-400) that maps videos [N, 3, T, H, W] to features [N, 400]"


class FeatureNetwork:
    """A loaded TorchScript feature network with its input convention."""

    def __init__(self, config: FeatureNetworkConfig, field: str, what: str, device: str | torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        self.module = torch.jit.load(str(require_file(config.path, field, what)), map_location=self.device).eval()

    def _inputs(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `[..., H, W, 3]` -> float `[..., 3, H, W]` in `input_range`, resized."""
        low, high = self.config.input_range
        x = torch.from_numpy(np.asarray(frames)).to(self.device).movedim(-1, -3).float() * ((high - low) / 255) + low
        if self.config.resize is not None:
            x = F.interpolate(x.flatten(0, -4), size=self.config.resize, mode="bilinear", align_corners=False)
            x = x.view(*frames.shape[:-3], 3, *self.config.resize)
        return x

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """`[T, D]` for frames `[T, H, W, 3]`."""
        step = self.config.batch_size
        chunks = [self.module(self._inputs(frames[i : i + step]), **self.config.kwargs)
                  for i in range(0, len(frames), step)]
        return torch.cat([chunk.flatten(1) for chunk in chunks]).double().cpu().numpy()

    @torch.no_grad()
    def video_features(self, frames: np.ndarray) -> np.ndarray:
        """`[D]` for one video `[T, H, W, 3]` (its first `num_frames` frames)."""
        count = self.config.num_frames or len(frames)
        if len(frames) < count:
            raise ValueError(f"i3d.num_frames: {count} frames needed, the video has {len(frames)}")
        video = self._inputs(frames[:count]).movedim(0, 1)[None]  # [1, 3, T, H, W]
        return self.module(video, **self.config.kwargs).flatten().double().cpu().numpy()


# The evaluation job's configuration and per-pair flow


class EvaluateJobConfig(BaseModel):
    """Generated videos vs ground truth, paired by file stem."""

    model_config = ConfigDict(extra="forbid")

    generated: Path = Field(description="folder of generated videos")
    reference: Path = Field(description="folder of ground-truth videos with the same file stems")
    output_dir: Path
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


def _videos(folder: Path, field: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{field}: folder not found: {folder} (expected a folder of videos)")
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in VIDEO_SUFFIXES}


def pair_videos(generated: Path, reference: Path) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Pairs `{id, generated_path, reference_path}` by file stem, and the stems found on one side only."""
    ours, truth = _videos(generated, "generated"), _videos(reference, "reference")
    pairs = [{"id": stem, "generated_path": str(ours[stem]), "reference_path": str(truth[stem])}
             for stem in sorted(set(ours) & set(truth))]
    return pairs, {"generated_only": sorted(set(ours) - set(truth)), "reference_only": sorted(set(truth) - set(ours))}


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video, uint8 `[T, H, W, 3]`."""
    return decode_frames(path, np.arange(probe_video(path).num_frames))


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

    def evaluate(self, pair: dict[str, str]) -> dict[str, Any]:
        """The pair's row (`PER_VIDEO_SCHEMA` plus its packed features)."""
        row: dict[str, Any] = {**pair, "status": "ok"}
        try:
            generated = read_video(pair["generated_path"])
            reference = aligned(generated, read_video(pair["reference_path"]))
            row.update(frames=len(generated), l1=l1_distance(generated, reference), psnr=psnr(generated, reference),
                       ssim=ssim(generated, reference, self.device))
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


def aggregate(table: pa.Table) -> dict[str, float | None]:
    """The table's metrics over its "ok" pairs: means of the per-video ones, Frechet distances of the features."""
    rows = [row for row in table.to_pylist() if row["status"] == "ok"]
    result: dict[str, float | None] = {}
    for key in ("l1", "psnr", "ssim", "lpips"):
        values = [row[key] for row in rows if row[key] is not None]
        result[key] = float(np.mean(values)) if values else None
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


def markdown_table(name: str, metrics: dict[str, float | None]) -> str:
    """The aggregate in the papers' layout; "—" where a metric was not computed."""
    header = "| Method | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(TABLE_COLUMNS)
    row = f"| {name} | " + " | ".join(_cell(key, metrics.get(key)) for key, _ in TABLE_COLUMNS) + " |"
    return f"{header}\n{rule}\n{row}\n"


def write_report(config: EvaluateJobConfig, table: pa.Table, unpaired: dict[str, list[str]]) -> dict[str, Any]:
    """per_video.parquet/.csv, metrics.md and summary.json under `output_dir`; returns the summary."""
    output = config.output_dir
    output.mkdir(parents=True, exist_ok=True)
    metrics = aggregate(table)
    per_video = table.select(PER_VIDEO_SCHEMA.names)
    pq.write_table(per_video, output / "per_video.parquet")
    pyarrow.csv.write_csv(per_video, output / "per_video.csv")
    (output / "metrics.md").write_text(markdown_table(config.name, metrics))
    statuses = per_video.column("status").to_pylist()
    summary = {
        "pairs": len(statuses),
        "evaluated": statuses.count("ok"),
        "failed": statuses.count("failed"),
        **unpaired,
        "metrics": {key: (None if value is None or math.isinf(value) else value) for key, value in metrics.items()},
        "infinite": sorted(key for key, value in metrics.items() if value is not None and math.isinf(value)),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
