"""Step caching against output quality on the trained toy model (issue 14); prints one JSON line.

Each held-out clip is generated with caching off and with First Block Cache at each threshold, same seed: seconds
per video, speed-up against off, PSNR of the cached video against the uncached one (same noise), and silhouette
IoU against the clip's ground truth. The recommended setting is the fastest whose PSNR against off is at least
30 dB and whose IoU is within 0.01 of off's (`cache_speedup`, `cache_psnr_db`; null when none qualifies). With
random weights a cache's error is invisible, hence the trained model: the toy backbone folder's own transformer
(and PadaLN), at its config's steps and guidance.

    python benchmarks/step_cache.py [--clips-dir data/synth/test] [--count 4] [--thresholds 0.05 0.1 0.2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from models.backbones import load_backbone_config
from models.backbones.config import StepCacheSettings
from models.body_model import load_body_model
from pipelines.evaluation.heldout import load_heldout_clips, score_video
from pipelines.generation.animation import AnimationPipeline

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def run_setting(pipeline: AnimationPipeline, clips, steps: int | None) -> tuple[list[np.ndarray], float]:
    """Every clip's video and the mean seconds per video."""
    videos, seconds = [], []
    for index, clip in enumerate(clips):
        start = time.perf_counter()
        videos.append(pipeline(clip.image, clip.caption, clip.motion, num_frames=len(clip.truth),
                               num_inference_steps=steps, seed=index).frames)
        seconds.append(time.perf_counter() - start)
    return videos, float(np.mean(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "data" / "synth" / "test")
    parser.add_argument("--count", type=int, default=4, help="held-out clips (the first, in stem order)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the backbone config's)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    args = parser.parse_args()

    config = load_backbone_config(args.backbone)
    clips = load_heldout_clips(args.clips_dir, config.resolution, config.num_frames, args.count)
    body = load_body_model()
    settings: dict[str, dict[str, float]] = {}
    reference: list[np.ndarray] = []
    for threshold in [None, *args.thresholds]:
        cache = None if threshold is None else StepCacheSettings(threshold=threshold)
        pipeline = AnimationPipeline.from_config(config.model_copy(update={"cache": cache}), body=body)
        videos, seconds = run_setting(pipeline, clips, args.steps)
        reference = reference or videos
        name = "off" if threshold is None else f"first_block:{threshold}"
        settings[name] = {
            "s_per_video": round(seconds, 3),
            "speedup": round(settings["off"]["s_per_video"] / seconds, 3) if threshold else 1.0,
            "psnr_vs_off_db": None if threshold is None else
            round(float(np.mean([psnr(v, r) for v, r in zip(videos, reference)])), 2),
            "silhouette_iou": round(float(np.mean([score_video(v, c)["silhouette_iou"]
                                                   for v, c in zip(videos, clips)])), 4),
        }
    off = settings["off"]
    good = [name for name, row in settings.items() if name != "off" and row["psnr_vs_off_db"] >= 30
            and abs(row["silhouette_iou"] - off["silhouette_iou"]) <= 0.01]
    best = max(good, key=lambda name: settings[name]["speedup"], default=None)
    print(json.dumps({
        "model": str(config.path), "clips": len(clips), "settings": settings, "recommended": best,
        "cache_speedup": settings[best]["speedup"] if best else None,
        "cache_psnr_db": settings[best]["psnr_vs_off_db"] if best else None,
    }))


if __name__ == "__main__":
    main()
