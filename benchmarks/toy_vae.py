"""How much of a person the toy backbone's VAE keeps: held-out clips encoded and decoded at the model's size and
scored like generated videos (silhouette IoU, PSNR, SSIM, L1) next to the static baseline; prints one JSON line.

A generated video can follow the motion no better than its VAE can draw it, so this is the ceiling of every
variant's silhouette IoU in `benchmarks/ablation.py`.

    python benchmarks/toy_vae.py [--clips-dir data/synth/test] [--count 16] [--vae out/toy-vae/vae]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.backbones import build_adapter, load_backbone_config
from models.backbones.base import BackboneAdapter
from pipelines.evaluation.heldout import HeldOutClip, load_heldout_clips, mean_scores, score_video, static_video
from pipelines.generation.frames import to_model_pixels, to_uint8

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def reconstruct(adapter: BackboneAdapter, clip: HeldOutClip) -> np.ndarray:
    """The clip's ground truth through the VAE (posterior sample, fixed seed) and back, uint8 `[T, H, W, 3]`."""
    latents = adapter.encode_video(to_model_pixels(clip.truth[None], adapter.device), torch.Generator().manual_seed(0))
    return to_uint8(adapter.decode_latents(latents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "data" / "synth" / "test")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--vae", type=Path, default=None, help="a diffusers vae/ folder instead of the backbone's")
    args = parser.parse_args()

    config = load_backbone_config(args.backbone)
    adapter = build_adapter(config)
    if args.vae is not None:
        adapter.pipeline.vae = type(adapter.vae).from_pretrained(args.vae, local_files_only=True).eval()
    clips = load_heldout_clips(args.clips_dir, config.resolution, config.num_frames, args.count)
    reconstructed = [score_video(reconstruct(adapter, clip), clip) for clip in clips]
    static = [score_video(static_video(clip, config.num_frames), clip) for clip in clips]
    print(json.dumps({"clips": len(clips), "size": [*config.resolution, config.num_frames],
                      "reconstruction": mean_scores(reconstructed), "static": mean_scores(static),
                      "reconstruction_silhouette_iou_per_clip": [round(row["silhouette_iou"], 3) for row in reconstructed]}))


if __name__ == "__main__":
    main()
