"""Held-out synthetic clips at a model's size: read from a `humanim synth` folder or rendered in memory, the same
either way, and scored against their ground truth with the static baseline."""

from __future__ import annotations

import numpy as np
import pytest

from models.body_model import load_body_model
from pipelines.demo.synth import draw_clip, first_clip_of, write_clip
from pipelines.evaluation.heldout import load_heldout_clips, mean_scores, render_heldout_clip, score_video, static_video

SOURCE = (48, 72)
MODEL = (32, 48)


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


def test_a_written_clip_reads_back_as_the_in_memory_one(body, tmp_path):
    spec = draw_clip(0, "test", 1, 9, SOURCE)
    write_clip(spec, body, tmp_path)
    [read] = load_heldout_clips(tmp_path, MODEL, 9)
    rendered = render_heldout_clip(spec, body, MODEL)
    assert read.stem == rendered.stem and read.caption == rendered.caption
    assert read.truth.shape == (9, *MODEL, 3) and np.array_equal(read.image, read.truth[0])
    assert np.array_equal(read.background, rendered.background)
    # the MP4 is lossy: the decoded truth stays within a few levels of the in-memory frames
    assert np.abs(read.truth.astype(int) - rendered.truth.astype(int)).mean() < 3
    with pytest.raises(ValueError, match="num_frames: .* has 9 frames, fewer than the 12"):
        load_heldout_clips(tmp_path, MODEL, 12)
    with pytest.raises(FileNotFoundError, match="humanim synth --split test"):
        load_heldout_clips(tmp_path / "empty", MODEL, 9)


def test_the_truth_scores_perfectly_and_the_static_baseline_does_not(body):
    clip = render_heldout_clip(first_clip_of(0, "test", "jumping_jacks", 17, SOURCE), body, MODEL)
    perfect = score_video(clip.truth, clip)
    assert perfect["silhouette_iou"] == 1.0 and perfect["l1"] == 0.0
    static = score_video(static_video(clip, 17), clip)
    assert static["silhouette_iou_frames"][0] == 1.0 and static["silhouette_iou"] < 0.95
    assert mean_scores([perfect, static])["silhouette_iou"] == pytest.approx((1 + static["silhouette_iou"]) / 2)
