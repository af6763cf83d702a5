"""Side-by-side previews: reference | generated | ground truth, upscaled without smoothing."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from pipelines.demo.preview import GAP, side_by_side, write_preview
from pipelines.io.video import read_video, write_video


def test_panels_sit_side_by_side_each_pixel_repeated():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    video = rng.integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    frames = side_by_side([image, video], scale=2)
    assert frames.shape == (3, 8, 2 * 12 + GAP, 3)
    assert np.array_equal(frames[2, ::2, :12:2], image)  # the image is held in every frame
    assert np.array_equal(frames[1, 1::2, 12 + GAP + 1 :: 2], video[1])
    assert (frames[:, :, 12 : 12 + GAP] == 255).all()
    with pytest.raises(ValueError, match="panels: sizes differ"):
        side_by_side([image, video[:, :2]])


def test_a_preview_is_cut_to_the_generated_length(tmp_path):
    rng = np.random.default_rng(1)
    PIL.Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    write_video(tmp_path / "gen.mp4", rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8), 12.0)
    write_video(tmp_path / "truth.mp4", rng.integers(0, 256, (9, 16, 24, 3), dtype=np.uint8), 12.0)
    write_preview(tmp_path / "ref.png", tmp_path / "gen.mp4", tmp_path / "truth.mp4", tmp_path / "p.mp4", scale=2)
    frames, fps = read_video(tmp_path / "p.mp4")
    assert frames.shape == (5, 32, 3 * 48 + 2 * GAP, 3) and fps == 12.0
