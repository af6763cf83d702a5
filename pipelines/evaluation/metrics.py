"""Video quality metrics (no Ray): the pixel metrics and the Frechet distance that FID, FID-VID and FVD use.

The feature networks are in `feature_networks`, the evaluation job's per-pair flow and report in `job`.

Pixel metrics, computed here on uint8 RGB frames `[T, H, W, 3]` of a generated and a ground-truth video:

- L1: mean absolute difference of pixel values scaled to [0, 1], over all frames, pixels and channels.
- PSNR: `10 log10(255^2 / MSE)`, MSE over all frames, pixels and channels of the video; inf when they are equal.
- SSIM (Wang et al. 2004): on luminance `Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601, on [0, 255], not
  rounded); 11x11 Gaussian window with sigma 1.5 normalised to sum 1; K1 = 0.01, K2 = 0.03, L = 255; population
  (co)variances; only windows that lie inside the frame ("valid"; frames need H, W >= 11); no downsampling. The
  mean of the SSIM map of each frame, averaged over frames.
- Silhouette IoU (motion following): where the clip's static background is known (`<stem>.background.png` beside
  the ground truth, as the synthetic people have it), foreground = pixels whose largest channel difference from it
  exceeds 24 levels, in the generated and in the true frame; per frame their IoU, averaged over frames.

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

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PIXEL_MAX = 255.0
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SILHOUETTE_THRESHOLD = 24


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


# Motion following


def silhouettes(frames: np.ndarray, background: np.ndarray, threshold: int = SILHOUETTE_THRESHOLD) -> np.ndarray:
    """Foreground masks bool `[T, H, W]`: pixels whose largest channel difference from the clip's known static
    background `[H, W, 3]` exceeds `threshold` (8-bit levels; video coding noise stays well below it)."""
    if background.shape != frames.shape[1:]:
        raise ValueError(f"background: shape {list(background.shape)} differs from the frames' "
                         f"{list(frames.shape[1:])}")
    return np.abs(frames.astype(np.int16) - background.astype(np.int16)).max(axis=-1) > threshold


def silhouette_iou_per_frame(generated: np.ndarray, reference: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per frame, the intersection over union of the generated and ground-truth foregrounds (1 where both are
    empty): how well the generated person follows the true silhouette, whatever their colours."""
    ours, truth = silhouettes(generated, background), silhouettes(reference, background)
    union = (ours | truth).sum(axis=(1, 2))
    inter = (ours & truth).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
