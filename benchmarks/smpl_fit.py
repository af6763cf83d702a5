"""SMPL fit accuracy and speed on synthetic keypoints of the demo motions; prints one JSON line.

Each demo motion (49 frames at 480x720) is posed on the template, its COCO-17 keypoints are
projected, perturbed with Gaussian pixel noise and ~10% of them dropped (confidence 0), and the
clip is fitted. Reported: the mean 2D error of the fitted keypoints against the noise-free ones
(px), the 3D MPJPE of the 12 SMPL joints COCO-17 observes after aligning the pelvis (mm), and the
fit time, per motion and overall.

    python benchmarks/smpl_fit.py [--device cuda] [--detail 59] [--noise-px 2] [--drop 0.1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from models.body_model import NUM_JOINTS, BodyModel, load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from models.motion import Motion
from models.smpl_template import SMPL_SIZE_DETAIL
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
from pipelines.preprocess.smpl_fit import FitConfig, fit_smpl


def _pelvis_aligned_joints(body: BodyModel, motion: Motion) -> torch.Tensor:
    observed = [source for source in COCO17.sources if source < NUM_JOINTS]
    with torch.no_grad():
        joints = body(motion.global_orient, motion.body_pose, motion.betas, motion.transl).joints
    return (joints - joints[:, :1])[:, observed]


def measure(name: str, body: BodyModel, args: argparse.Namespace, device: str) -> dict[str, float]:
    truth = make_demo_motion(name, args.frames)
    clean = motion_keypoints2d(body, truth, COCO17)
    rng = np.random.default_rng(args.seed)
    confidence = (rng.random(clean.shape[:2]) >= args.drop).astype(np.float64)
    keypoints = np.concatenate([clean + rng.normal(0.0, args.noise_px, clean.shape), confidence[..., None]], -1)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fit_smpl(keypoints, truth.K, truth.image_size, body, "coco17", FitConfig(), device, fps=truth.fps)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    error_px = np.linalg.norm(motion_keypoints2d(body, result.motion, COCO17) - clean, axis=-1).mean()
    mpjpe = (_pelvis_aligned_joints(body, truth) - _pelvis_aligned_joints(body, result.motion)).norm(dim=-1).mean()
    return {
        "mean_joint_error_px": round(float(error_px), 3),
        "mpjpe_mm": round(float(mpjpe) * 1000, 2),
        "initial_error_px": round(float(np.nanmean(result.initial_error_px)), 2),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detail", type=int, default=SMPL_SIZE_DETAIL, help="template tessellation (59: SMPL-size)")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--noise-px", type=float, default=2.0)
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the fit's ops are small)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    body = load_body_model(detail=args.detail).to(args.device)
    motions = {name: measure(name, body, args, args.device) for name in DEMO_MOTIONS}
    config = FitConfig()
    print(
        json.dumps(
            {
                "benchmark": "smpl_fit",
                "mean_joint_error_px": round(float(np.mean([m["mean_joint_error_px"] for m in motions.values()])), 3),
                "mpjpe_mm": round(float(np.mean([m["mpjpe_mm"] for m in motions.values()])), 2),
                "frames": args.frames * len(motions),
                "seconds": round(sum(m["seconds"] for m in motions.values()), 2),
                "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} threads)",
                "vertices": body.num_vertices,
                "noise_px": args.noise_px,
                "dropped": args.drop,
                "iterations": [config.orient_iterations, config.iterations, config.lbfgs_iterations],
                "motions": motions,
            }
        )
    )


if __name__ == "__main__":
    main()
