"""Side-by-side previews for looking at generated videos: reference image | generated | ground truth, upscaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from pipelines.io.video import read_video, write_video

GAP = 4  # pixels of white between panels


def side_by_side(panels: list[np.ndarray], scale: int = 3) -> np.ndarray:
    """Videos `[T, H, W, 3]` (or images `[H, W, 3]`, held for every frame) of one size next to each other, each
    pixel repeated `scale` x `scale` (nearest neighbour: what the model made, not a smoothed version of it)."""
    length = max(len(panel) for panel in panels if panel.ndim == 4)
    frames = [panel if panel.ndim == 4 else np.repeat(panel[None], length, axis=0) for panel in panels]
    if len({frame.shape[1:] for frame in frames}) != 1:
        raise ValueError(f"panels: sizes differ: {[list(frame.shape[1:3]) for frame in frames]}")
    frames = [frame[:length].repeat(scale, axis=1).repeat(scale, axis=2) for frame in frames]
    gap = np.full((length, frames[0].shape[1], GAP, 3), 255, np.uint8)
    return np.concatenate([part for frame in frames for part in (frame, gap)][:-1], axis=2)


def write_preview(reference_image: str | Path, generated: str | Path, truth: str | Path, out: str | Path,
                  scale: int = 3) -> Path:
    """reference | generated | ground truth (cut to the generated length) as an MP4 at the generated video's fps."""
    with PIL.Image.open(reference_image) as image:
        reference = np.asarray(image.convert("RGB"))
    frames, fps = read_video(generated, "generated")
    true_frames = read_video(truth, "reference")[0][: len(frames)]
    write_video(out, side_by_side([reference, frames, true_frames], scale), fps)
    return Path(out)
