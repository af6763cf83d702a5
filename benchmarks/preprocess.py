"""Throughput of the video preprocessing job on this machine; prints one JSON line.

Synthetic MP4s of the template body (the demo motions, with motion-file and caption sidecars) go through the
job end to end (streaming, every stage at once), then through each stage alone (its input materialized first)
on the same resources. `pipeline_efficiency` = end-to-end clips/s over the slowest stage's clips/s alone. Both
include starting the stages' actors, as a real run does. On a machine with fewer cores than stages, streaming
cannot reach the slowest stage's rate (the stages share the cores), so the core-bound ceiling and the
efficiency against it are printed too.

    python benchmarks/preprocess.py [--videos 24] [--clips-per-video 3] [--config configs/preprocess/videos-tiny.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from smpl_fit import measure as measure_smpl_fit  # benchmarks/smpl_fit.py, next to this script

from models.body_model import load_body_model
from models.rasterizer import scale_intrinsics
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
from pipelines.demo.reference import render_reference_image
from pipelines.io.config import load_config
from pipelines.io.manifest import list_videos
from pipelines.io.motion import save_motion
from pipelines.io.video import write_video
from pipelines.preprocess.config import VideoJobConfig

VIDEO_SIZE = (120, 180)  # the demo camera at a quarter of its size
VIDEO_FPS = 12.0


def write_synthetic_videos(folder: Path, videos: int, frames: int) -> None:
    """`videos` MP4s of the template body performing the demo motions (each rendered once, then copied), each
    with a motion and a caption sidecar."""
    body = load_body_model(detail=12)  # coarse, to render quickly; the job poses the full template
    names = sorted(DEMO_MOTIONS)
    for name in names[:videos]:
        motion = make_demo_motion(name, frames, fps=VIDEO_FPS)
        K = scale_intrinsics(torch.from_numpy(motion.K), VIDEO_SIZE[1] / 720, VIDEO_SIZE[0] / 480).numpy()
        motion = dataclasses.replace(motion, K=K, image_size=VIDEO_SIZE)
        pixels = np.stack([render_reference_image(motion, body, VIDEO_SIZE, frame) for frame in range(frames)])
        write_video(folder / f"{name}.mp4", pixels, VIDEO_FPS)
        save_motion(folder / f"{name}.npz", motion)
        (folder / f"{name}.txt").write_text(f"a person, {name.replace('_', ' ')}")
    for index in range(len(names), videos):
        source = names[index % len(names)]
        for suffix in (".mp4", ".npz", ".txt"):
            shutil.copyfile(folder / f"{source}{suffix}", folder / f"{source}_{index:03d}{suffix}")


def smpl_fit_error(frames: int) -> float:
    """Mean 2D joint error (px) of the SMPL fit on `frames`-frame clips of the demo motions (480x720, keypoints
    with 2 px noise and 10% dropped), measured by benchmarks/smpl_fit.py; the pose stage fits each clip alike."""
    body = load_body_model()
    settings = argparse.Namespace(frames=frames, noise_px=2.0, drop=0.1, seed=0)
    errors = [measure_smpl_fit(name, body, settings, "cpu")["mean_joint_error_px"] for name in DEMO_MOTIONS]
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--clips-per-video", type=int, default=3)
    parser.add_argument("--config", type=Path, default=Path("configs/preprocess/videos-tiny.yaml"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from ray_jobs.preprocess import run_videos, video_items, video_stages

    work = Path(tempfile.mkdtemp(prefix="humanim-preprocess-bench-"))
    (work / "videos").mkdir()
    probe = load_config(VideoJobConfig, args.config, {"videos": work / "videos", "output_dir": str(work / "probe")})
    write_synthetic_videos(work / "videos", args.videos, probe.num_frames * args.clips_per_video)
    ray.init(include_dashboard=False, log_to_driver=False)

    def config(name: str) -> VideoJobConfig:
        return probe.model_copy(update={"output_dir": str(work / name)})

    # Each stage alone, then the whole job streaming; probing once first warms up the fresh local cluster.
    items = [item.as_dict() for item in list_videos(work / "videos")]
    video_stages(config("warm_up"), frozenset())[0][1](video_items(items)).materialize()
    data = video_items(items).materialize()
    alone = {}
    for name, stage in video_stages(config("stages"), frozenset()):
        start = time.perf_counter()
        data = stage(data).materialize()
        alone[name] = data.count() / (time.perf_counter() - start)
    summary = run_videos(config("end_to_end"))
    end_to_end = summary["clips_written"] / summary["seconds"]
    slowest = min(alone, key=alone.get)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    in_series = 1 / sum(1 / rate for rate in alone.values())
    ceiling = min(alone[slowest], cpus * in_series)
    fit_error = smpl_fit_error(probe.num_frames)
    result = {
        "benchmark": "preprocess",
        "config": str(args.config),
        "cpus": cpus,
        "gpus": int(ray.cluster_resources().get("GPU", 0)),
        "videos": args.videos,
        "clips": summary["clips_planned"],
        "clips_failed": summary["clips_failed"],
        "frames_per_clip": probe.num_frames,
        "resolution": list(probe.size),
        "end_to_end_clips_per_s": round(end_to_end, 4),
        "stage_clips_per_s": {name: round(rate, 4) for name, rate in alone.items()},
        "slowest_stage": slowest,
        "pipeline_efficiency": round(end_to_end / alone[slowest], 3),
        # one stage after another: the ceiling when every stage competes for the same cores
        "stages_in_series_clips_per_s": round(in_series, 4),
        # What streaming can reach when the stages share the machine's cores (each stage alone keeps about one
        # core busy: one actor, one torch thread): the slowest stage's rate, or all cores working through every
        # stage's work per clip, whichever is lower. On a cluster with cores to spare it is the slowest stage.
        "core_bound_ceiling_clips_per_s": round(ceiling, 4),
        "efficiency_vs_core_ceiling": round(end_to_end / ceiling, 3),
        "smpl_fit_mean_joint_error_px": round(fit_error, 3),
        "smpl_fit_setting": f"{probe.num_frames}-frame demo clips at 480x720, 2 px keypoint noise, 10% dropped",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
