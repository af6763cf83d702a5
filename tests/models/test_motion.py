"""The motion contract: loading, validation errors that name the key, no pickle ever."""

import json
import pickle

import numpy as np
import pytest

from models.motion import MotionError, motion_from_arrays
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion
from pipelines.io.motion import load_motion, motion_from_json_text, motion_from_npz_bytes, save_motion


def arrays(num_frames: int = 5) -> dict[str, np.ndarray]:
    return make_demo_motion("walk", num_frames).to_arrays()


def test_npz_round_trip(tmp_path) -> None:
    motion = make_demo_motion("turn", 9)
    save_motion(tmp_path / "m.npz", motion)
    loaded = load_motion(tmp_path / "m.npz")
    assert loaded.num_frames == 9 and loaded.image_size == motion.image_size
    np.testing.assert_array_equal(loaded.body_pose, motion.body_pose)


def test_json_round_trip(tmp_path) -> None:
    data = {key: np.asarray(value).tolist() for key, value in arrays().items()}
    (tmp_path / "m.json").write_text(json.dumps(data))
    np.testing.assert_allclose(load_motion(tmp_path / "m.json").transl, arrays()["transl"], rtol=1e-6)


def test_shared_betas_and_K_are_expanded() -> None:
    motion = motion_from_arrays(arrays(4))
    assert motion.betas.shape == (4, 10) and motion.K.shape == (4, 3, 3)


@pytest.mark.parametrize("name", sorted(DEMO_MOTIONS))
def test_demo_motions_are_valid(name: str) -> None:
    motion = make_demo_motion(name, 49)
    assert motion.num_frames == 49 and motion.image_size == (480, 720)
    assert np.isfinite(motion.body_pose).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("body_pose", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a), "'body_pose' contains NaN"),
        ("transl", lambda a: a * np.inf, "'transl' contains NaN or inf"),
        ("global_orient", lambda a: a[:, :2], r"'global_orient' must have shape \[T,3\]"),
        ("body_pose", lambda a: a[:, :66], r"'body_pose' must have shape \[T,69\]"),
        ("transl", lambda a: a[:3], "'transl' has 3 frames but 'global_orient' has 5"),
        ("betas", lambda a: np.zeros((2, 10)), "'betas' must have shape"),
        ("K", lambda a: np.zeros((3, 3)), "'K' must have positive focal lengths"),
        ("image_size", lambda a: np.array([480.5, 720]), "'image_size' must be two integers"),
        ("image_size", lambda a: np.array([480, 10**6]), "'image_size' must be within"),
        ("fps", lambda a: np.array(-1.0), "'fps' must be one number"),
        ("keypoints2d", lambda a: np.zeros((5, 17, 2)), r"'keypoints2d' must have shape \[T,J,3\]"),
        ("body_pose", lambda a: "walk", "'body_pose' is not a numeric array"),
    ],
)
def test_bad_values_name_the_key(key, value, message) -> None:
    data = arrays()
    data[key] = value(data.get(key, np.zeros(1)))
    with pytest.raises(MotionError, match=message):
        motion_from_arrays(data)


def test_missing_key_and_zero_frames() -> None:
    data = arrays()
    del data["transl"]
    with pytest.raises(MotionError, match="missing key 'transl'"):
        motion_from_arrays(data)
    data = {key: (value[:0] if key in ("global_orient", "body_pose", "transl") else value) for key, value in arrays().items()}
    with pytest.raises(MotionError, match="zero frames"):
        motion_from_arrays(data)


def test_pickles_are_never_loaded(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    payload = pickle.dumps({"global_orient": Boom()})
    with pytest.raises(MotionError, match="looks like a pickle"):
        motion_from_npz_bytes(payload)
    (tmp_path / "m.pkl").write_bytes(payload)
    with pytest.raises(MotionError, match="pickles are never loaded"):
        load_motion(tmp_path / "m.pkl")
    # an .npz whose array needs pickle (object dtype) is refused too
    np.savez(tmp_path / "obj.npz", global_orient=np.array([Boom()], dtype=object))
    with pytest.raises(MotionError, match="pickled objects"):
        load_motion(tmp_path / "obj.npz")


def test_corrupt_and_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="motion file not found: .*nope.npz"):
        load_motion(tmp_path / "nope.npz")
    save_motion(tmp_path / "m.npz", make_demo_motion("walk", 5))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "m.npz").read_bytes()[:200])
    with pytest.raises(MotionError, match="not an .npz|corrupt"):
        load_motion(tmp_path / "cut.npz")
    with pytest.raises(MotionError, match="malformed"):
        motion_from_json_text("{not json")
    with pytest.raises(MotionError, match="must be an object"):
        motion_from_json_text("[1, 2]")
