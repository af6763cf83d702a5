"""The toy ablation (issue 12): every variant shipped in the toy backbone folder, and the static baseline, on the
held-out synthetic split; prints one JSON line.

Each variant generates every held-out clip from the clip's first frame, caption and motion, with the same seed per
clip, and is scored against the clip's ground truth: silhouette IoU (motion following), PSNR, SSIM and L1. The
variant's inference settings follow its training (articulated noise or not, PadaLN or not). Also reported: the
variant's training steps and seconds (from its `variant.json`), its silhouette IoU when every clip is driven by
the next clip's motion instead (`swapped_silhouette_iou`: a model that follows the motion loses IoU against the
clip's own truth; one that ignores it does not), for variants trained with articulated noise their silhouette IoU
when sampled from i.i.d. noise instead (`iid_noise_silhouette_iou`: what the warped noise adds), and with
`--gamma-sweep` variant (d) `humandiff` over inference gamma (the paper's Table 3). `--strip` writes a picture
strip (reference | each variant | truth, at a few frames) of the first clip.

    humanim synth --out data/synth/test --clips 32 --split test --frames 161
    python benchmarks/ablation.py [--clips-dir data/synth/test] [--count 16] [--steps 20] [--variants iid ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image

from models.backbones import load_backbone_config
from models.body_model import load_body_model
from pipelines.demo.preview import side_by_side
from pipelines.evaluation.heldout import load_heldout_clips, mean_scores, score_video, static_video, variant_pipeline
from pipelines.training.ship import default_variant, shipped_variants

ROOT = Path(__file__).resolve().parents[1]
GAMMAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
# The paper's names for the variants, as the JSON reports them.
ORDER = ("iid", "articulated", "articulated+jaml", "humandiff", "padaln", "padaln+articulated")
SWEPT = "humandiff"  # the variant the paper sweeps gamma on


def generate_all(pipeline, clips, articulated: bool, steps: int, gamma: float, num_frames: int,
                 motion_shift: int = 0) -> list[np.ndarray]:
    """Each clip from its first frame and caption, driven by the motion of the clip `motion_shift` places on."""
    return [
        pipeline(clip.image, clip.caption, clips[(index + motion_shift) % len(clips)].motion, num_frames=num_frames,
                 num_inference_steps=steps, guidance_scale=1.0, gamma=gamma, seed=index,
                 articulated_noise=articulated).frames
        for index, clip in enumerate(clips)
    ]


def scored(videos: list[np.ndarray], clips) -> dict[str, float]:
    return mean_scores([score_video(video, clip) for video, clip in zip(videos, clips)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--clips-dir", type=Path, default=ROOT / "data" / "synth" / "test")
    parser.add_argument("--count", type=int, default=16, help="held-out clips (the first, in stem order)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--gamma", type=float, help="inference gamma (default: the backbone config's)")
    parser.add_argument("--variants", nargs="+", help="only these shipped variants (default: every one); the same "
                        "clips and seeds, so a newly trained variant's row joins an earlier run's table")
    parser.add_argument("--gamma-sweep", action="store_true", help="also sweep gamma on variant (d), humandiff")
    parser.add_argument("--strip", type=Path, help="write a picture strip of the first clip (PNG)")
    args = parser.parse_args()

    config = load_backbone_config(args.backbone)
    variants = shipped_variants(config.path)
    unknown = sorted(set(args.variants or ()) - set(variants))
    if unknown:
        raise SystemExit(f"--variants: {unknown} not shipped in {config.path / 'variants'} "
                         f"(shipped: {sorted(variants)})")
    if args.gamma_sweep and SWEPT not in variants:
        raise SystemExit(f"--gamma-sweep: variant {SWEPT!r} is not in {config.path / 'variants'}; train and ship it "
                         f"first (configs/train/toy-humandiff.yaml)")
    num_frames = config.num_frames
    clips = load_heldout_clips(args.clips_dir, config.resolution, num_frames, args.count)
    gamma = config.gamma if args.gamma is None else args.gamma
    body = load_body_model()
    shipped = default_variant(config.path)
    static = [static_video(clip, num_frames) for clip in clips]
    results = {"static": scored(static, clips)}
    first_videos = {"static": static[0]}
    for name in sorted(args.variants or variants, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        pipeline, info = variant_pipeline(args.backbone, name, body)
        started = time.perf_counter()
        videos = generate_all(pipeline, clips, info.articulated_noise, args.steps, gamma, num_frames)
        seconds = time.perf_counter() - started
        swapped = generate_all(pipeline, clips, info.articulated_noise, args.steps, gamma, num_frames, motion_shift=1)
        results[name] = {**scored(videos, clips), "swapped_silhouette_iou": scored(swapped, clips)["silhouette_iou"],
                         "steps": info.steps, "train_s": round(info.train_s, 1),
                         "generate_s_per_clip": round(seconds / len(clips), 3)}
        if info.articulated_noise:
            iid = generate_all(pipeline, clips, False, args.steps, gamma, num_frames)
            results[name]["iid_noise_silhouette_iou"] = scored(iid, clips)["silhouette_iou"]
        first_videos[name] = videos[0]
    report = {"variants": results, "shipped": shipped, "not_trained": [name for name in ORDER if name not in variants],
              "clips": len(clips), "num_frames": num_frames,
              "resolution": list(config.resolution), "steps": args.steps, "gamma": gamma, "guidance_scale": 1.0}
    if args.gamma_sweep:
        pipeline, info = variant_pipeline(args.backbone, SWEPT, body)
        report["gamma_sweep"] = {"variant": SWEPT, **{
            str(value): scored(generate_all(pipeline, clips, info.articulated_noise, args.steps, value, num_frames),
                               clips)
            for value in GAMMAS
        }}
    if args.strip:
        write_strip(args.strip, clips[0], first_videos)
    print(json.dumps(report))


def write_strip(path: Path, clip, videos: dict[str, np.ndarray], frames: tuple[int, ...] = (0, 8, 16, 24)) -> None:
    """Rows: reference | each variant | truth; columns: a few frames."""
    panels = [np.stack([clip.image] * len(frames))]
    panels += [video[list(frames)] for video in videos.values()]
    panels.append(clip.truth[list(frames)])
    rows = side_by_side(panels, scale=2)  # [frames, H, W_all, 3]: one row per frame
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.concatenate(list(rows), axis=0)).save(path)
    (path.with_suffix(".json")).write_text(json.dumps({"columns": ["reference", *videos, "truth"],
                                                       "frames": list(frames), "clip": clip.stem}))


if __name__ == "__main__":
    main()
