"""The demo's inputs: held-out synthetic people (reference image, motion, caption), their ground truth and the
render manifest that names them."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image

from models.body_model import load_body_model
from pipelines.demo.synth import SIZE, first_clip_of
from pipelines.evaluation.heldout import render_heldout_clip
from pipelines.io.motion import save_motion
from pipelines.io.video import write_video

# The demo's motions, each performed by the first held-out person (the synthetic test split) who does it: an
# appearance x motion pair the toy model never saw in training.
DEMO_ROWS = ("arm_swings", "turn", "walk")
DEMO_SEED = 0


def write_demo_manifest(manifest: str | Path, size: tuple[int, int], num_frames: int) -> Path:
    """The demo's inputs next to `manifest` (a .jsonl): motions/, images/ (each person's first frame at `size`),
    reference/ (the true video at `size` with its motion, caption and background sidecars: ground truth for
    `evaluate` and a video folder for the preprocessing job) and the manifest itself, one row per demo motion."""
    manifest = Path(manifest)
    if manifest.suffix.lower() != ".jsonl":
        raise ValueError(f"manifest: the demo manifest is written as JSONL; name a .jsonl file, got {manifest}")
    root = manifest.parent
    for folder in ("motions", "images", "reference"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    body = load_body_model()
    rows = []
    for name in DEMO_ROWS:
        clip = render_heldout_clip(first_clip_of(DEMO_SEED, "test", name, num_frames, SIZE), body, size)
        save_motion(root / "motions" / f"{name}.npz", clip.motion)
        PIL.Image.fromarray(clip.image).save(root / "images" / f"{name}.png")
        write_video(root / "reference" / f"{name}.mp4", clip.truth, clip.motion.fps)
        # Its motion and caption as sidecars: reference/ is also a video folder the preprocessing job takes.
        save_motion(root / "reference" / f"{name}.npz", clip.motion)
        (root / "reference" / f"{name}.txt").write_text(clip.caption)
        # The static background alone: what is not background is the person (the evaluation's silhouette IoU).
        PIL.Image.fromarray(clip.background).save(root / "reference" / f"{name}.background.png")
        rows.append({"id": name, "image": f"images/{name}.png", "motion": f"motions/{name}.npz",
                     "prompt": clip.caption, "num_frames": num_frames})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest
