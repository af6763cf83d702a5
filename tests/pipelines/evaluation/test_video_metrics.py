"""Video metrics: PSNR/L1/SSIM against hand-computed values, Frechet distance closed forms, feature-network
loading, and the evaluate job on a local Ray."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from pipelines.evaluation.feature_networks import FeatureNetwork, FeatureNetworkConfig, Lpips, LpipsConfig
from pipelines.evaluation.job import EvaluateJobConfig, PairEvaluator, pair_videos
from pipelines.evaluation.metrics import (
    frechet_distance,
    gaussian_window,
    l1_distance,
    psnr,
    silhouette_iou_per_frame,
    ssim,
)
from pipelines.io.video import write_video
from ray_jobs.cli import main

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def gray(values: np.ndarray) -> np.ndarray:
    """uint8 `[T, H, W, 3]` with R = G = B (so the luminance is the value itself)."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def test_psnr_and_l1_match_their_definitions() -> None:
    video = np.random.default_rng(0).integers(10, 240, (3, 16, 16, 3), dtype=np.uint8)
    assert psnr(video, video) == math.inf and l1_distance(video, video) == 0
    shifted = video + np.uint8(5)  # MSE 25 everywhere
    assert psnr(shifted, video) == pytest.approx(10 * math.log10(255**2 / 25))
    assert l1_distance(shifted, video) == pytest.approx(5 / 255)
    half = video.copy()
    half[:, :8] += 10  # half the pixels off by 10: MSE 50
    assert psnr(half, video) == pytest.approx(10 * math.log10(255**2 / 50))


def test_ssim_hand_computed_cases_and_properties() -> None:
    # constant frames: no variance, so SSIM is the luminance term alone
    assert ssim(gray(np.full((1, 11, 11), 110)), gray(np.full((1, 11, 11), 100))) == pytest.approx(
        (2 * 100 * 110 + C1) / (100**2 + 110**2 + C1), abs=1e-12
    )
    # one 11x11 window: the weighted statistics written out
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (11, 11)).astype(np.float64)
    y = np.clip(0.6 * x + rng.normal(0, 20, x.shape) + 30, 0, 255).round()
    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(taps, taps) / np.outer(taps, taps).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    expected = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    assert ssim(gray(x[None]), gray(y[None])) == pytest.approx(expected, abs=1e-12)
    assert gaussian_window().sum().item() == pytest.approx(1.0) and gaussian_window().shape == (11,)

    video = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(np.clip(video + rng.normal(0, sigma, video.shape), 0, 255).astype(np.uint8), video)
              for sigma in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(video[:, :8, :8], video[:, :8, :8])


def test_frechet_distance_closed_forms() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    sigma, mu = a @ a.T + np.eye(6), rng.normal(size=6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    s1, s2, m1, m2 = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6), rng.normal(size=6), rng.normal(size=6)
    closed = np.square(m1 - m2).sum() + np.square(np.sqrt(s1) - np.sqrt(s2)).sum()
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(closed, rel=1e-10)
    b = rng.normal(size=(6, 6))
    other = b @ b.T + 0.1 * np.eye(6)
    reference = np.square(mu - m2).sum() + np.trace(sigma + other - 2 * scipy.linalg.sqrtm(sigma @ other).real)
    assert frechet_distance(mu, sigma, m2, other) == pytest.approx(reference, rel=1e-8)


def lpips_weights(tmp_path, net: str = "alex") -> LpipsConfig:
    """Random weights in the documented files (torchvision and lpips key names)."""
    model = Lpips(net)
    torch.manual_seed(0)
    features = {f"features.{k}": torch.randn_like(v) * 0.1 for k, v in model.features.state_dict().items()}
    lins = {f"lin{k[0]}.model.1.weight": torch.rand_like(v) for k, v in model.lins.state_dict().items()}
    save_file(features, tmp_path / f"{net}.safetensors")
    save_file(lins, tmp_path / f"lpips_{net}.safetensors")
    return LpipsConfig(net=net, backbone_weights=tmp_path / f"{net}.safetensors",
                       linear_weights=tmp_path / f"lpips_{net}.safetensors")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_documented_weights(tmp_path, net) -> None:
    lpips = Lpips.load(lpips_weights(tmp_path, net))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2))
    assert (lpips(x, x.flip(0)) > 0).all()


def test_missing_or_wrong_weights_are_clear_errors(tmp_path) -> None:
    config = LpipsConfig(backbone_weights=tmp_path / "nope.safetensors", linear_weights=tmp_path / "lin.safetensors")
    with pytest.raises(FileNotFoundError, match=r"lpips.backbone_weights: .*nope.safetensors not found; put the Alex"):
        Lpips.load(config)
    with pytest.raises(FileNotFoundError, match=r"inception.path: .*incep.pt not found; put a TorchScript Inception"):
        EvaluateJobConfig(generated=tmp_path, reference=tmp_path, output_dir=tmp_path,
                          inception={"path": tmp_path / "incep.pt"}).check_weights()
    with pytest.raises(FileNotFoundError, match=r"i3d.path: .*i3d.pt not found; put a TorchScript I3D"):
        FeatureNetwork(FeatureNetworkConfig(path=tmp_path / "i3d.pt"), "i3d.path", "a TorchScript I3D", "cpu")
    good = lpips_weights(tmp_path)
    with pytest.raises(ValueError, match="do not fit LPIPS-vgg"):
        Lpips.load(good.model_copy(update={"net": "vgg"}))


class ColourStats(torch.nn.Module):
    """A stand-in feature network: per-channel mean and std over the last two axes, flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(-2, -1)), x.std(dim=(-2, -1))], dim=1).flatten(1)


def test_feature_network_conventions(tmp_path) -> None:
    torch.jit.script(ColourStats()).save(str(tmp_path / "stats.pt"))
    frames = np.random.default_rng(3).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    config = FeatureNetworkConfig(path=tmp_path / "stats.pt", input_range=(-1, 1), resize=(16, 16), batch_size=2,
                                  num_frames=4)
    network = FeatureNetwork(config, "i3d.path", "x", "cpu")
    assert network.frame_features(frames).shape == (5, 6)
    video = network.video_features(frames)  # [1, 3, 4, 16, 16] -> mean/std over H, W per channel and frame
    assert video.shape == (24,) and -1 <= video[:12].min() and video[:12].max() <= 1


def test_silhouette_iou_per_frame_by_hand() -> None:
    background = np.zeros((1, 4, 4, 3), np.uint8)[0]
    truth, ours = np.zeros((3, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8)
    truth[0, :2, :2], ours[0, :2, :1] = 255, 255  # 2 of 4 shared
    truth[1, 0, 0], ours[1, 3, 3] = 255, 255  # disjoint
    ours[2, 1, 1] = 20  # below the threshold: both empty
    assert np.allclose(silhouette_iou_per_frame(ours, truth, background), [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="background"):
        silhouette_iou_per_frame(ours, truth, np.zeros((2, 2, 3), np.uint8))


def test_evaluate_job(ray_local, tmp_path) -> None:
    rng = np.random.default_rng(4)
    generated, reference = tmp_path / "generated", tmp_path / "reference"
    truth = {name: rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for name in ("same", "noisy", "short")}
    for name, frames in truth.items():
        write_video(reference / f"{name}.mp4", frames if name != "short" else frames[:5], 8)
    # A byte copy: two x264 encodes of the same frames are not guaranteed to be identical (CI saw 47 dB).
    generated.mkdir()
    shutil.copyfile(reference / "same.mp4", generated / "same.mp4")
    noisy = np.clip(truth["noisy"] + rng.normal(0, 20, truth["noisy"].shape), 0, 255).astype(np.uint8)
    write_video(generated / "noisy.mp4", noisy, 8)
    write_video(generated / "short.mp4", truth["short"], 8)
    write_video(generated / "extra.mp4", truth["same"], 8)
    # A white square crossing a known grey background: silhouette IoU 1 for the same video, low for the static one.
    background = np.full((32, 32, 3), 90, np.uint8)
    moving = np.repeat(background[None], 9, axis=0)
    for frame in range(9):
        moving[frame, 10:20, 2 * frame : 2 * frame + 10] = 255
    write_video(reference / "moving.mp4", moving, 8)
    shutil.copyfile(reference / "moving.mp4", generated / "moving.mp4")
    PIL.Image.fromarray(background).save(reference / "moving.background.png")
    torch.jit.script(ColourStats()).save(str(tmp_path / "stats.pt"))
    config = EvaluateJobConfig(generated=generated, reference=reference, output_dir=tmp_path / "out", name="test",
                               lpips=lpips_weights(tmp_path), inception={"path": tmp_path / "stats.pt"},
                               resources={"workers": 1, "num_cpus": 0.5})
    (tmp_path / "evaluate.yaml").write_text(json.dumps(config.model_dump(mode="json")))
    main(["evaluate", "--config", str(tmp_path / "evaluate.yaml")])

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs"], summary["evaluated"], summary["failed"]) == (4, 3, 1)
    assert summary["generated_only"] == ["extra"] and summary["reference_only"] == []
    rows = {row["id"]: row for row in pq.read_table(out / "per_video.parquet").to_pylist()}
    assert rows["same"]["psnr"] == math.inf and rows["same"]["ssim"] == pytest.approx(1) and rows["same"]["l1"] == 0
    assert rows["same"]["lpips"] == pytest.approx(0, abs=1e-6) and rows["noisy"]["lpips"] > 0
    assert 0 < rows["noisy"]["ssim"] < 1 and 10 < rows["noisy"]["psnr"] < 40 and rows["noisy"]["frames"] == 9
    assert rows["short"]["status"] == "failed" and "fewer than the 9 generated" in rows["short"]["error"]
    assert rows["moving"]["silhouette_iou"] == 1 and rows["moving"]["silhouette_iou_frames"] == [1.0] * 9
    assert rows["moving"]["static_silhouette_iou"] < 0.5 and rows["same"]["silhouette_iou"] is None
    assert rows["same"]["static_psnr"] < rows["same"]["psnr"]
    assert (out / "per_video.csv").read_text().startswith('"id","generated_path"')
    table = (out / "metrics.md").read_text().splitlines()
    assert table[0] == "| Method | Sil. IoU↑ | L1↓ | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ | FID-VID↓ | FVD↓ |"
    cells = [cell.strip() for cell in table[2].split("|")[1:-1]]
    assert cells[0] == "test" and cells[3] == "inf" and cells[-1] == "—" and all(c != "—" for c in cells[1:-1])
    static = [cell.strip() for cell in table[3].split("|")[1:-1]]
    assert static[0].startswith("static") and float(static[1]) < 0.5 and static[-1] == "—"
    assert summary["static_metrics"]["silhouette_iou"] < 0.5
    assert summary["metrics"]["fid"] > 0 and summary["metrics"]["fvd"] is None and summary["infinite"] == ["psnr"]


def test_pairs_are_read_through_filesystem_uris(tmp_path, monkeypatch) -> None:
    """The render job's videos folder given as a URI (its output_dir on s3:// or a shared file system): pairs are
    listed and read, backgrounds included, through the URI, not the working directory."""
    moving = np.repeat(np.full((1, 32, 32, 3), 90, np.uint8), 9, axis=0)
    for frame in range(9):
        moving[frame, 10:20, 2 * frame : 2 * frame + 10] = 255
    write_video(tmp_path / "render" / "videos" / "moving.mp4", moving, 8)
    write_video(tmp_path / "render" / "videos" / "extra.mp4", moving, 8)
    (tmp_path / "truth").mkdir()
    shutil.copyfile(tmp_path / "render" / "videos" / "moving.mp4", tmp_path / "truth" / "moving.mp4")
    PIL.Image.fromarray(moving[0, :1, :1].repeat(32, 0).repeat(32, 1)).save(tmp_path / "truth" / "moving.background.png")
    monkeypatch.chdir(tmp_path / "truth")  # a relative "file:" folder would resolve here and hold nothing
    generated, reference = f"file://{tmp_path}/render/videos", f"file://{tmp_path}/truth/"
    config = EvaluateJobConfig(generated=generated, reference=reference, output_dir=tmp_path / "out")
    pairs, unpaired = pair_videos(config.generated, config.reference)
    assert pairs == [{"id": "moving", "generated_path": f"{generated}/moving.mp4",
                      "reference_path": f"{reference.rstrip('/')}/moving.mp4"}]
    assert unpaired == {"generated_only": ["extra"], "reference_only": []}
    row = PairEvaluator(config).evaluate(pairs[0])
    assert row["status"] == "ok", row["error"]
    assert row["frames"] == 9 and row["psnr"] == math.inf and row["silhouette_iou"] == 1
    with pytest.raises(FileNotFoundError, match="generated: folder not found"):
        pair_videos(f"file://{tmp_path}/none", reference)
