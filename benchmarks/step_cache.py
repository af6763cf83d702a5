"""Step caching against output quality on the trained toy model (issue 14); prints one JSON line.

Each held-out clip is generated with caching off and with First Block Cache at each threshold, same seed: seconds
per video, speed-up against off, PSNR of the cached video against the uncached one (same noise), and silhouette
IoU against the clip's ground truth. The recommended setting is the fastest whose PSNR against off is at least
30 dB and whose IoU is within 0.01 of off's (`cache_speedup`, `cache_psnr_db`; null when none qualifies). With
random weights a cache's error is invisible, hence the trained model: the toy backbone folder's own transformer
(and PadaLN), at its config's steps and guidance. `--compile` adds compiled blocks (inductor; each setting's first
video, which compiles, is run before the timed ones). `benchmarks/generation.py` runs the same measurement.

    python benchmarks/step_cache.py [--clips-dir data/synth/test] [--count 4] [--thresholds 0.05 0.1 0.2] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from models.backbones import BackboneConfig, load_backbone_config
from models.backbones.config import CompileSettings, StepCacheSettings
from models.body_model import load_body_model
from pipelines.evaluation.heldout import HeldOutClip, load_heldout_clips, score_video
from pipelines.evaluation.metrics import psnr as video_psnr
from pipelines.generation.animation import AnimationPipeline

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB, 100 for identical videos (JSON has no infinity)."""
    return min(100.0, video_psnr(a, b))


def counted_pipeline(config: BackboneConfig, options: dict, body) -> tuple[AnimationPipeline, list[int]]:
    """The pipeline with generation `options` (cache, compile) and a list that grows by one each time its last DiT
    block runs (a cached step skips it)."""
    pipeline = AnimationPipeline.from_config(config.with_options(**options), body=body)
    runs: list[int] = []
    pipeline.adapter.blocks[-1].norm1.register_forward_hook(lambda *_: runs.append(1))
    return pipeline, runs


def settings_to_measure(thresholds: list[float], compile_blocks: bool) -> dict[str, dict]:
    """Each setting's name and generation options: off, First Block Cache at each threshold, compiled blocks."""
    settings: dict[str, dict] = {"off": {}}
    settings.update({f"first_block:{t}": {"cache": StepCacheSettings(threshold=t)} for t in thresholds})
    if compile_blocks:
        settings["compile:blocks"] = {"compile": CompileSettings(mode="blocks")}
    return settings


def measure(config: BackboneConfig, clips: list[HeldOutClip], body, thresholds: list[float],
            steps: int | None = None, compile_blocks: bool = False) -> dict:
    """Every setting on every clip (same seed per clip): seconds per video, speed-up against off, share of DiT block
    runs, PSNR against off's video and silhouette IoU against the truth; the recommended cache setting (the fastest
    that skips blocks, with >= 30 dB against off and IoU within 0.01 of off's) as `cache_speedup` /
    `cache_psnr_db` (None if none)."""
    options = settings_to_measure(thresholds, compile_blocks)
    pipelines = {name: counted_pipeline(config, option, body) for name, option in options.items()}
    warmup_s = {}
    for name, (pipeline, runs) in pipelines.items():  # compiles (compiled blocks) outside the timings
        start = time.perf_counter()
        pipeline(clips[0].image, clips[0].caption, clips[0].motion, num_frames=len(clips[0].truth),
                 num_inference_steps=steps, seed=0)
        warmup_s[name] = time.perf_counter() - start
        runs.clear()
    seconds: dict[str, list[float]] = {name: [] for name in options}
    videos: dict[str, list[np.ndarray]] = {name: [] for name in options}
    for index, clip in enumerate(clips):
        for name, (pipeline, _) in pipelines.items():  # interleaved, so a busy machine slows every setting alike
            start = time.perf_counter()
            videos[name].append(pipeline(clip.image, clip.caption, clip.motion, num_frames=len(clip.truth),
                                         num_inference_steps=steps, seed=index).frames)
            seconds[name].append(time.perf_counter() - start)
    off_seconds, off_runs = float(np.mean(seconds["off"])), len(pipelines["off"][1])
    settings = {}
    for name in options:
        settings[name] = {
            "s_per_video": round(float(np.mean(seconds[name])), 3),
            "speedup": round(off_seconds / float(np.mean(seconds[name])), 3),
            "first_video_s": round(warmup_s[name], 3),  # with compiled blocks: the compile
            # share of the uncached DiT block runs (the counting hook sits inside a compiled block: not seen there)
            "blocks_run": None if "compile" in options[name] else round(len(pipelines[name][1]) / off_runs, 3),
            "psnr_vs_off_db": round(float(np.mean([psnr(v, r) for v, r in zip(videos[name], videos["off"])])), 2),
            "silhouette_iou": round(float(np.mean([score_video(v, c)["silhouette_iou"]
                                                   for v, c in zip(videos[name], clips)])), 4),
        }
    off = settings["off"]
    good = [name for name in options if "cache" in options[name] and settings[name]["blocks_run"] < 1
            and settings[name]["psnr_vs_off_db"] >= 30
            and abs(settings[name]["silhouette_iou"] - off["silhouette_iou"]) <= 0.01]
    best = max(good, key=lambda name: settings[name]["speedup"], default=None)
    return {
        "model": str(config.path), "clips": len(clips), "settings": settings, "recommended": best,
        "cache_speedup": settings[best]["speedup"] if best else None,
        "cache_psnr_db": settings[best]["psnr_vs_off_db"] if best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "data" / "synth" / "test")
    parser.add_argument("--count", type=int, default=4, help="held-out clips (the first, in stem order)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the backbone config's)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--compile", action="store_true", help="also compiled blocks (inductor; compile excluded)")
    args = parser.parse_args()

    config = load_backbone_config(args.backbone)
    clips = load_heldout_clips(args.clips_dir, config.resolution, config.num_frames, args.count)
    print(json.dumps(measure(config, clips, load_body_model(), args.thresholds, args.steps, args.compile)))


if __name__ == "__main__":
    main()
