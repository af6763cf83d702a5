"""Retargeting accuracy on synthetic truth; prints one JSON line.

Cross pairs from the synthetic generator's test split: person A (clip i's shape, first-frame pose, placement and
camera) is the photo, motion B (clip i + pairs) the driving motion. The truth is B retargeted onto A's true
parameters; the estimate is B retargeted onto the SMPL fit of A's COCO-17 keypoints (projected, plus Gaussian pixel
noise; a crop drops the keypoints it cuts off: full body, waist up, head and shoulders). Reported per crop type:
`joint_err_px`, the mean 2D distance of the 17 COCO keypoints of estimate and truth, on frame 0 (after the lead-in
from the photo's pose) and over all frames, at the toy resolution (64x96) and scaled to 480x720.
`iou_retargeted` / `iou_raw` (silhouette IoU of generated videos with and without retargeting) need a trained
model, and none ships yet: not measured.

    python benchmarks/retarget.py [--pairs 8] [--frames 49] [--lead-in 8] [--noise-px 0.5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from models.body_model import load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from pipelines.demo.synth import draw_clip, synth_motion
from pipelines.generation.retarget import PhotoFit, fit_photo, retarget

TOY_SIZE = (64, 96)
FULL_SIZE = (480, 720)
CROPS = {"full": [], "waist_up": [13, 14, 15, 16], "head_and_shoulders": list(range(7, 17))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--lead-in", type=int, default=8)
    parser.add_argument("--noise-px", type=float, default=0.5, help="keypoint noise at the toy resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    body = load_body_model()
    scale = FULL_SIZE[1] / TOY_SIZE[1]
    errors = {crop: {"frame0": [], "all": []} for crop in CROPS}
    started = time.perf_counter()
    for pair in range(args.pairs):
        person = synth_motion(draw_clip(args.seed, "test", pair, 1, TOY_SIZE))
        motion = synth_motion(draw_clip(args.seed, "test", args.pairs + pair, args.frames, TOY_SIZE))
        truth = retarget(motion, PhotoFit(person, np.ones(23, dtype=bool), 0.0), body, args.lead_in)
        true_points = motion_keypoints2d(body, truth, COCO17)
        clean = motion_keypoints2d(body, person, COCO17)[0]
        for crop, dropped in CROPS.items():
            keypoints = np.concatenate([clean + rng.normal(0, args.noise_px, clean.shape), np.ones((17, 1))], axis=1)
            keypoints[dropped, 2] = 0.0
            estimate = retarget(motion, fit_photo(keypoints, TOY_SIZE, body), body, args.lead_in)
            distance = np.linalg.norm(motion_keypoints2d(body, estimate, COCO17) - true_points, axis=-1)
            errors[crop]["frame0"].append(float(distance[0].mean()))
            errors[crop]["all"].append(float(distance.mean()))
    result = {
        crop: {
            "joint_err_px_frame0": round(float(np.mean(values["frame0"])), 3),
            "joint_err_px": round(float(np.mean(values["all"])), 3),
            "joint_err_px_frame0_480x720": round(float(np.mean(values["frame0"])) * scale, 2),
            "joint_err_px_480x720": round(float(np.mean(values["all"])) * scale, 2),
        }
        for crop, values in errors.items()
    }
    print(json.dumps({
        "benchmark": "retarget", "pairs": args.pairs, "frames": args.frames, "lead_in": args.lead_in,
        "noise_px": args.noise_px, "size": list(TOY_SIZE), "joint_err_px": result,
        "iou_retargeted": None, "iou_raw": None, "iou_note": "no trained model ships yet",
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
