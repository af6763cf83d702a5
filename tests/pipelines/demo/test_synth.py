"""Synthetic people: deterministic clips, disjoint held-out pairs, and sidecars the preprocessing job reads."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import PIL.Image
import pytest

from models.body_model import load_body_model
from pipelines.demo.synth import COLOURS, MOTION_KINDS, draw_clip, is_test_pair, render_clip, write_clip
from pipelines.io.manifest import list_videos
from pipelines.io.motion import load_motion
from pipelines.io.video import read_video
from pipelines.preprocess.clips import load_mask
from ray_jobs.cli import main

SIZE = (48, 72)


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


def test_clips_are_deterministic_and_vary(body):
    first, again = draw_clip(3, "train", 7, 9, SIZE), draw_clip(3, "train", 7, 9, SIZE)
    assert asdict(first) == asdict(again)
    frames, masks, _ = render_clip(first, body)
    assert np.array_equal(frames, render_clip(again, body)[0])
    specs = [draw_clip(3, "train", index, 9, SIZE) for index in range(40)]
    assert len({spec.motion for spec in specs}) >= 6 and len({spec.appearance.shirt for spec in specs}) >= 6
    assert len({spec.background.kind for spec in specs}) == 3 and len({tuple(spec.betas) for spec in specs}) == 40
    assert asdict(draw_clip(4, "train", 7, 9, SIZE)) != asdict(first)


def test_held_out_pairs_never_appear_in_training():
    train = {(s.motion, s.appearance.shirt) for s in (draw_clip(0, "train", i, 9, SIZE) for i in range(200))}
    test = {(s.motion, s.appearance.shirt) for s in (draw_clip(0, "test", i, 9, SIZE) for i in range(100))}
    assert train and test and not train & test
    assert all(is_test_pair(*pair) for pair in test) and not any(is_test_pair(*pair) for pair in train)
    # every motion and every colour occurs in both splits
    for motion in MOTION_KINDS:
        assert any(not is_test_pair(motion, c) for c in COLOURS) and any(is_test_pair(motion, c) for c in COLOURS)
    with pytest.raises(ValueError, match="split"):
        draw_clip(0, "val", 0, 9, SIZE)


def test_person_mask_is_what_differs_from_the_background(body):
    spec = draw_clip(0, "train", 2, 9, SIZE)
    frames, masks, background = render_clip(spec, body)
    assert frames.shape == (9, *SIZE, 3) and masks.shape == (9, *SIZE) and background.shape == (*SIZE, 3)
    assert 0.01 < masks.mean() < 0.5
    differs = np.abs(frames.astype(int) - background).max(-1) > 0
    assert np.array_equal(differs & ~masks, np.zeros_like(masks))  # nothing outside the mask changed
    assert differs[masks].mean() > 0.95


def test_written_clip_is_a_video_folder_entry(tmp_path, body):
    spec = draw_clip(0, "test", 0, 9, SIZE)
    video = write_clip(spec, body, tmp_path)
    (item,) = list_videos(tmp_path)
    assert item.video == str(video) and item.caption == spec.caption() and spec.appearance.shirt in item.caption
    frames, fps = read_video(video)
    assert frames.shape == (9, *SIZE, 3) and fps == spec.fps
    motion = load_motion(item.motion)
    assert motion.num_frames == 9 and tuple(motion.image_size) == SIZE
    masks = load_mask(item.mask, np.arange(9), SIZE, 9)
    assert masks.any() and not masks.all()
    assert np.asarray(PIL.Image.open(tmp_path / f"{spec.stem}.background.png")).shape == (*SIZE, 3)
    assert json.loads((tmp_path / f"{spec.stem}.synth.json").read_text())["motion"] == spec.motion


def test_synth_command_writes_every_clip_and_resumes(ray_local, tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path), "--clips", "3", "--split", "test", "--frames", "5",
            "--height", "32", "--width", "48"]
    main(args)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["clips"], summary["written"], summary["failed"]) == (3, 3, 0)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["test_00000.mp4", "test_00001.mp4", "test_00002.mp4"]
    main(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 3
