"""The demo's inputs: motions, reference images, ground-truth renders and the render manifest that names them."""


from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image

from models.body_model import load_body_model
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
from pipelines.demo.reference import BACKGROUND, render_reference_image
from pipelines.io.motion import save_motion
from pipelines.io.video import write_video


def write_demo_manifest(manifest: str | Path, size: tuple[int, int], num_frames: int) -> Path:
    """The demo's inputs next to `manifest` (a .jsonl): motions/, images/ (the posed template body, first frame),
    reference/ (that body rendered for every frame, with motion and caption sidecars: ground truth for `evaluate`
    and a video folder for the preprocessing job) and the manifest itself, one row per demo motion with a few
    per-row settings."""
    manifest = Path(manifest)
    if manifest.suffix.lower() != ".jsonl":
        raise ValueError(f"manifest: the demo manifest is written as JSONL; name a .jsonl file, got {manifest}")
    root = manifest.parent
    body = load_body_model()
    per_row = {"walk": {}, "arm_swings": {"gamma": 0.2, "seed": 1}, "turn": {"guidance": 1.0}}
    rows = []
    for name in sorted(DEMO_MOTIONS):
        motion = make_demo_motion(name, num_frames)
        prompt = f"a person in a red shirt and blue trousers, {name.replace('_', ' ')}"
        for folder in ("motions", "images", "reference"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        save_motion(root / "motions" / f"{name}.npz", motion)
        PIL.Image.fromarray(render_reference_image(motion, body, size)).save(root / "images" / f"{name}.png")
        truth = np.stack([render_reference_image(motion, body, size, frame) for frame in range(num_frames)])
        write_video(root / "reference" / f"{name}.mp4", truth, motion.fps)
        # Its motion and caption as sidecars: reference/ is also a video folder the preprocessing job takes.
        save_motion(root / "reference" / f"{name}.npz", motion)
        (root / "reference" / f"{name}.txt").write_text(prompt)
        # The static background alone: what is not background is the person (the evaluation's silhouette IoU).
        background = np.broadcast_to(np.round(np.array(BACKGROUND) * 255).astype(np.uint8), (*size, 3))
        PIL.Image.fromarray(np.ascontiguousarray(background)).save(root / "reference" / f"{name}.background.png")
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "motion": f"motions/{name}.npz",
                "prompt": prompt,
                "num_frames": num_frames,
                **per_row.get(name, {}),
            }
        )
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest
