"""Long videos on the trained toy model (issue 12, item 6): per-frame silhouette IoU at 97 and 161 frames with
blended windows, each later window conditioned on the reference image ("reference", the old behaviour) or on the
current estimate of the video where it starts ("estimate"); prints one JSON line.

For every held-out clip (161 frames, `humanim synth --split test --frames 161`) and length, the shipped variant
(or `--variant`) generates the video with the same seed under both conditionings. Reported per setting: the mean
IoU, the per-frame IoU averaged over clips, and the seam jump: the mean IoU of the 4 frames before each later
window's first frame minus that of the 4 frames from it (positive: the video falls back toward the reference pose
at seams).

    python benchmarks/long_video.py [--clips-dir data/synth/test] [--count 8] [--steps 20] [--variant humandiff]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.backbones import load_backbone_config
from models.body_model import load_body_model
from pipelines.evaluation.heldout import load_heldout_clips, score_video, variant_pipeline
from pipelines.generation.long_video import plan_windows
from pipelines.training.ship import default_variant

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (97, 161)
SPAN = 4  # frames on each side of a seam


def seam_jump(per_frame: np.ndarray, starts: list[int]) -> float:
    """Mean over later windows' first frames s of IoU[s-SPAN:s] minus IoU[s:s+SPAN]."""
    jumps = [per_frame[s - SPAN : s].mean() - per_frame[s : s + SPAN].mean() for s in starts if s >= SPAN]
    return float(np.mean(jumps)) if jumps else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "data" / "synth" / "test")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gamma", type=float, help="inference gamma (default: the backbone config's)")
    parser.add_argument("--variant", help="a variant shipped in the backbone folder (default: the shipped one)")
    args = parser.parse_args()

    config = load_backbone_config(args.backbone)
    clips = load_heldout_clips(args.clips_dir, config.resolution, max(LENGTHS), args.count)
    variant = args.variant or default_variant(config.path)
    gamma = config.gamma if args.gamma is None else args.gamma
    pipeline, info = variant_pipeline(args.backbone, variant, load_body_model())
    adapter = pipeline.adapter
    report = {"variant": variant, "clips": len(clips), "steps": args.steps, "gamma": gamma}
    for frames in LENGTHS:
        windows = plan_windows(adapter.latent_num_frames(frames), adapter.latent_num_frames(adapter.num_frames))
        starts = [window.start * adapter.temporal_factor for window in windows[1:]]
        for mode in ("reference", "estimate"):
            per_frame = np.mean([
                score_video(pipeline(clip.image, clip.caption, clip.motion, num_frames=frames,
                                     num_inference_steps=args.steps, guidance_scale=1.0, gamma=gamma,
                                     seed=index, articulated_noise=info.articulated_noise,
                                     window_condition=mode).frames, clip)["silhouette_iou_frames"]
                for index, clip in enumerate(clips)
            ], axis=0)
            report[f"{mode}_{frames}"] = {
                "silhouette_iou": round(float(per_frame.mean()), 4), "seam_jump": round(seam_jump(per_frame, starts), 4),
                "window_starts": starts, "per_frame": [round(float(x), 3) for x in per_frame],
            }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
