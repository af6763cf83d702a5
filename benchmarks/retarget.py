"""Retargeting accuracy on synthetic truth; prints one JSON line.

Cross pairs from the synthetic generator's test split: person A (clip i's shape, first-frame pose, placement and
camera) is the photo, motion B (clip i + pairs) the driving motion. The truth is B retargeted onto A's true
parameters; the estimate is B retargeted onto the SMPL fit of A's COCO-17 keypoints (projected, plus Gaussian pixel
noise; a crop drops the keypoints it cuts off: full body, waist up, head and shoulders). Reported per crop type:
`joint_err_px`, the mean 2D distance of the 17 COCO keypoints of estimate and truth, on frame 0 (after the lead-in
from the photo's pose) and over all frames, at the toy resolution (64x96) and scaled to 480x720.

With the trained model (the variant shipped in the `--backbone` folder, with its noise and PadaLN and the config's
steps and guidance), for the first `--generate-pairs` pairs: the truth video is A (look, shape, background) performing
the truth motion, rendered at the model's size; its frame 0 is A's own first frame (the lead-in starts in the
photo's pose), which is the reference image. From that image and the caption (A's look, B's action) the model
generates the backbone's window twice with the same seed: driven by the full-body estimate (`iou_retargeted`) and by
motion B as given, with B's shape, placement and camera (`iou_raw`); each is the mean silhouette IoU against the
truth video over pairs and frames. Without a shipped model (or with `--no-generate`) both are null, with a note.

    python benchmarks/retarget.py [--pairs 8] [--frames 49] [--lead-in 8] [--noise-px 0.5]
        [--backbone configs/backbones/toy-cogvideox.yaml] [--generate-pairs 8] [--steps N] [--no-generate] [--strip PNG]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from models.backbones import BackboneConfig, load_backbone_config, sampling_defaults
from models.body_model import BodyModel, load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from models.motion import Motion
from pipelines.demo.preview import side_by_side
from pipelines.demo.synth import ClipSpec, cross_spec, draw_clip, synth_motion
from pipelines.evaluation.heldout import HeldOutClip, render_heldout_clip, score_video, variant_pipeline
from pipelines.evaluation.metrics import silhouettes
from pipelines.generation.retarget import PhotoFit, fit_photo, retarget
from pipelines.training.ship import default_variant

ROOT = Path(__file__).resolve().parents[1]
TOY_SIZE = (64, 96)
FULL_SIZE = (480, 720)
CROPS = {"full": [], "waist_up": [13, 14, 15, 16], "head_and_shoulders": list(range(7, 17))}


@dataclass
class CrossPair:
    """Person A (a one-frame clip: the photo) and motion B, with B retargeted onto A's true parameters."""

    person: ClipSpec
    driver: ClipSpec
    motion: Motion  # B as given
    truth: Motion


def cross_pair(seed: int, index: int, pairs: int, frames: int, lead_in: int, body: BodyModel) -> CrossPair:
    """Pair `index`: person A is test clip `index`, motion B test clip `index + pairs`."""
    person = draw_clip(seed, "test", index, 1, TOY_SIZE)
    driver = draw_clip(seed, "test", pairs + index, frames, TOY_SIZE)
    motion = synth_motion(driver)
    truth = retarget(motion, PhotoFit(synth_motion(person), np.ones(23, dtype=bool), 0.0), body, lead_in)
    return CrossPair(person, driver, motion, truth)


def crop_estimates(pair: CrossPair, body: BodyModel, rng: np.random.Generator, noise_px: float,
                   lead_in: int) -> dict[str, Motion]:
    """Per crop, B retargeted onto the SMPL fit of A's noisy keypoints without the ones the crop cuts off."""
    clean = motion_keypoints2d(body, synth_motion(pair.person), COCO17)[0]
    estimates = {}
    for crop, dropped in CROPS.items():
        keypoints = np.concatenate([clean + rng.normal(0, noise_px, clean.shape), np.ones((17, 1))], axis=1)
        keypoints[dropped, 2] = 0.0
        estimates[crop] = retarget(pair.motion, fit_photo(keypoints, TOY_SIZE, body), body, lead_in)
    return estimates


def joint_errors(estimate: Motion, truth: Motion, body: BodyModel) -> np.ndarray:
    """Per frame, the mean 2D distance [T] of the 17 COCO keypoints of estimate and truth."""
    distance = motion_keypoints2d(body, estimate, COCO17) - motion_keypoints2d(body, truth, COCO17)
    return np.linalg.norm(distance, axis=-1).mean(axis=-1)


def shipped_model_note(config: BackboneConfig) -> str | None:
    """Why the backbone has no shipped model to generate with, or None when it has one."""
    if config.path is None:
        return "the backbone builds a random model (`tiny:`); no trained model to generate with"
    try:
        default_variant(config.path)
    except FileNotFoundError as err:
        return f"no trained model ships yet: {err}"
    return None


def write_strip(path: Path, clip: HeldOutClip, given: np.ndarray, retargeted: np.ndarray, generated: np.ndarray,
                frames: tuple[int, ...] = (0, 8, 16, 24)) -> None:
    """Rows: a few frames; columns: the photo | motion B as given (A's look on B's body where B's camera puts it) |
    the retargeted body over the photo (half transparent) | the video generated from it | the truth."""
    picked = list(frames)
    body = silhouettes(retargeted, clip.background)[..., None]
    over = np.where(body, (retargeted.astype(np.uint16) + clip.image) // 2, clip.image).astype(np.uint8)
    panels = [clip.image, given[picked], over[picked], generated[picked], clip.truth[picked]]
    rows = side_by_side([panel if panel.ndim == 4 else np.stack([panel] * len(picked)) for panel in panels])
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.concatenate(list(rows), axis=0)).save(path)


def generated_ious(backbone: Path, pairs: list[CrossPair], estimates: list[Motion], body: BodyModel,
                   steps: int | None, strip: Path | None = None) -> dict[str, float | int | str | bool]:
    """Mean silhouette IoU of the shipped variant's videos against each pair's truth video, driven by the
    retargeted estimate and by B as given (same seed per pair; the module docstring says how), with the settings;
    `strip`: the first pair's picture strip (`write_strip`) written there."""
    config = load_backbone_config(backbone)
    variant = default_variant(config.path)
    pipeline, info = variant_pipeline(backbone, variant, body)
    defaults = sampling_defaults(config)
    steps, guidance = steps or defaults.steps, defaults.guidance
    num_frames = config.num_frames
    scores: dict[str, list[float]] = {"iou_retargeted": [], "iou_raw": []}
    for index, (pair, estimate) in enumerate(zip(pairs, estimates)):
        clip = render_heldout_clip(cross_spec(pair.person, pair.driver), body, config.resolution,
                                   pair.truth.slice(0, num_frames))
        videos = {}
        for key, motion in (("iou_retargeted", estimate), ("iou_raw", pair.motion)):
            videos[key] = pipeline(clip.image, clip.caption, motion, num_frames=num_frames, num_inference_steps=steps,
                                   guidance_scale=guidance, seed=index, articulated_noise=info.articulated_noise).frames
            scores[key].append(score_video(videos[key], clip)["silhouette_iou"])
        if strip is not None and index == 0:
            spec = cross_spec(pair.person, pair.driver)
            given, retargeted = (render_heldout_clip(spec, body, config.resolution, motion.slice(0, num_frames)).truth
                                 for motion in (pair.motion, estimate))
            write_strip(strip, clip, given, retargeted, videos["iou_retargeted"])
    return {**{key: round(float(np.mean(values)), 4) for key, values in scores.items()},
            "variant": variant, "articulated_noise": info.articulated_noise, "steps": steps,
            "guidance_scale": guidance, "num_frames": num_frames, "generate_pairs": len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--lead-in", type=int, default=8)
    parser.add_argument("--noise-px", type=float, default=0.5, help="keypoint noise at the toy resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbones" / "toy-cogvideox.yaml")
    parser.add_argument("--generate-pairs", type=int, default=8, help="pairs (the first) the IoU part generates")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the backbone config's)")
    parser.add_argument("--no-generate", action="store_true", help="skip the IoU part")
    parser.add_argument("--strip", type=Path, help="with the IoU part: the first pair's picture strip (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_backbone_config(args.backbone)
    generate = min(args.generate_pairs, args.pairs) if not args.no_generate else 0
    if generate and args.lead_in < 1:
        parser.error("--lead-in: the IoU part needs >= 1 frame, so that the truth's frame 0 is the photo's pose")
    if generate and args.frames < config.num_frames:
        parser.error(f"--frames: the IoU part generates {config.num_frames} frames of motion B; give at least that")
    rng = np.random.default_rng(args.seed)
    body = load_body_model()
    scale = FULL_SIZE[1] / TOY_SIZE[1]
    errors = {crop: {"frame0": [], "all": []} for crop in CROPS}
    pairs, full_estimates = [], []
    started = time.perf_counter()
    for index in range(args.pairs):
        pair = cross_pair(args.seed, index, args.pairs, args.frames, args.lead_in, body)
        estimates = crop_estimates(pair, body, rng, args.noise_px, args.lead_in)
        for crop, estimate in estimates.items():
            distance = joint_errors(estimate, pair.truth, body)
            errors[crop]["frame0"].append(float(distance[0]))
            errors[crop]["all"].append(float(distance.mean()))
        pairs.append(pair)
        full_estimates.append(estimates["full"])
    result = {
        crop: {
            "joint_err_px_frame0": round(float(np.mean(values["frame0"])), 3),
            "joint_err_px": round(float(np.mean(values["all"])), 3),
            "joint_err_px_frame0_480x720": round(float(np.mean(values["frame0"])) * scale, 2),
            "joint_err_px_480x720": round(float(np.mean(values["all"])) * scale, 2),
        }
        for crop, values in errors.items()
    }
    note = shipped_model_note(config) if generate else "not asked for (--no-generate or --generate-pairs 0)"
    if note is None:
        iou = generated_ious(args.backbone, pairs[:generate], full_estimates[:generate], body, args.steps, args.strip)
    else:
        iou = {"iou_retargeted": None, "iou_raw": None, "iou_note": note}
    print(json.dumps({
        "benchmark": "retarget", "pairs": args.pairs, "frames": args.frames, "lead_in": args.lead_in,
        "noise_px": args.noise_px, "size": list(TOY_SIZE), "joint_err_px": result, **iou,
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
