"""2D skeleton renders: exact pixels, confidence threshold, keypoint sources, video decoding."""

from __future__ import annotations

import numpy as np
import pytest

from models.body_model import load_body_model
from models.keypoints import COCO17, SMPL24
from models.motion import motion_from_arrays
from models.pose_video import draw_skeleton, layout_for, motion_keypoints, palette, render_pose_video, render_skeletons
from pipelines.articulated_noise import NoiseConfig, render_motion
from pipelines.demo.motions import make_demo_motion
from pipelines.io.video import read_video, write_video

L_SHOULDER, L_ELBOW = 5, 7


@pytest.fixture(scope="module")
def body():
    return load_body_model()


def coco_keypoints(confidence: dict[int, float], positions: dict[int, tuple[float, float]]) -> np.ndarray:
    keypoints = np.zeros((17, 3))
    for joint, (x, y) in positions.items():
        keypoints[joint] = (x, y, confidence[joint])
    return keypoints


def lit(frame: np.ndarray) -> set[tuple[int, int]]:
    return {(int(row), int(col)) for row, col in zip(*np.nonzero(frame.any(-1)))}


def cross(row: int, col: int) -> set[tuple[int, int]]:
    """Pixel centres within distance 1 of (row, col)."""
    return {(row, col), (row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)}


def test_a_limb_lights_exactly_the_pixels_on_it_and_around_its_joints():
    keypoints = coco_keypoints({L_SHOULDER: 1.0, L_ELBOW: 0.9}, {L_SHOULDER: (4, 4), L_ELBOW: (12, 4)})
    frame = draw_skeleton(keypoints, (10, 16), limb_radius=0.5, joint_radius=1.0)
    assert frame.dtype == np.uint8 and frame.shape == (10, 16, 3)
    limb = {(4, col) for col in range(4, 13)}
    joints = cross(4, 4) | cross(4, 12)
    assert lit(frame) == limb | joints
    limb_color = palette(len(COCO17.limbs), value=0.8)[COCO17.limbs.index((L_SHOULDER, L_ELBOW))]
    joint_colors = palette(17)
    assert (frame[4, 8] == limb_color).all()
    assert all((frame[p] == joint_colors[L_SHOULDER]).all() for p in cross(4, 4))
    assert all((frame[p] == joint_colors[L_ELBOW]).all() for p in cross(4, 12))


def test_a_diagonal_smpl_limb_stays_within_its_radius():
    keypoints = np.zeros((24, 3))
    keypoints[0] = (2, 2, 1.0)  # pelvis
    keypoints[1] = (9, 9, 1.0)  # left hip, child of the pelvis
    frame = draw_skeleton(keypoints, (12, 12), limb_radius=0.5, joint_radius=0.5)
    assert lit(frame) == {(i, i) for i in range(2, 10)}
    assert SMPL24.limbs[0] == (0, 1) and len(SMPL24.limbs) == 23


def test_low_confidence_joints_and_their_limbs_are_not_drawn():
    keypoints = coco_keypoints({L_SHOULDER: 1.0, L_ELBOW: 0.1}, {L_SHOULDER: (4, 4), L_ELBOW: (12, 4)})
    assert lit(draw_skeleton(keypoints, (10, 16), threshold=0.3, limb_radius=0.5, joint_radius=1.0)) == cross(4, 4)
    assert lit(draw_skeleton(keypoints, (10, 16), threshold=0.05, limb_radius=0.5, joint_radius=1.0)) != cross(4, 4)
    keypoints[:, 2] = 0.0
    assert not draw_skeleton(keypoints, (10, 16)).any()


def test_keypoint_errors_name_the_field():
    with pytest.raises(ValueError, match="keypoints2d: 18 joints match no known layout"):
        layout_for(18)
    with pytest.raises(ValueError, match="keypoints2d: expected shape"):
        render_skeletons(np.zeros((2, 17)), (8, 8))
    with pytest.raises(ValueError, match="keypoints2d: contains NaN"):
        render_skeletons(np.full((1, 17, 3), np.nan), (8, 8))


def test_motion_keypoints2d_are_rescaled_to_the_output_size():
    motion = make_demo_motion("walk", 3)
    keypoints = np.zeros((3, 17, 3), dtype=np.float32)
    keypoints[:, 0] = (359.5, 239.5, 1.0)  # the centre of the 720x480 source
    keypoints[:, 1] = (0.0, 0.0, 0.5)  # the top-left pixel centre
    motion = motion_from_arrays({**motion.to_arrays(), "keypoints2d": keypoints})
    scaled = motion_keypoints(motion, (48, 72), num_frames=2)
    assert scaled.shape == (2, 17, 3)
    np.testing.assert_allclose(scaled[:, 0], [[35.5, 23.5, 1.0]] * 2)
    np.testing.assert_allclose(scaled[:, 1], [[-0.45, -0.45, 0.5]] * 2)
    video = render_pose_video(motion, (48, 72))
    assert video.shape == (3, 48, 72, 3) and video.dtype == np.uint8


@pytest.mark.parametrize("name", ["walk", "turn"])
def test_projected_body_skeleton_lands_where_the_body_renders(body, name):
    motion = make_demo_motion(name, 9)
    size = (64, 96)
    mask = render_motion(motion, body, NoiseConfig(num_frames=9, height=64, width=96, group_frames="all")).mask.numpy()
    keypoints = motion_keypoints(motion, size, body)
    assert keypoints.shape == (9, 24, 3) and (keypoints[..., 2] == 1).all()
    col, row = np.round(keypoints[..., :2]).astype(int).transpose(2, 0, 1)
    assert mask[np.arange(9)[:, None], row, col].all()  # every joint projects onto the body
    skeleton = render_skeletons(keypoints, size).any(-1)
    assert skeleton.sum() > 9 * 20
    assert (skeleton & mask).sum() / skeleton.sum() > 0.97


def test_joints_behind_the_camera_get_zero_confidence(body):
    motion = make_demo_motion("turn", 2)
    arrays = motion.to_arrays()
    arrays["transl"] = arrays["transl"] * np.array([1.0, 1.0, -1.0], dtype=np.float32)
    keypoints = motion_keypoints(motion_from_arrays(arrays), (32, 48), body)
    assert (keypoints[..., 2] == 0).all()
    assert not render_skeletons(keypoints, (32, 48)).any()


def test_read_pose_video_decodes_what_write_video_wrote(tmp_path):
    frames = np.zeros((5, 16, 24, 3), dtype=np.uint8)
    frames[:, 4:12, 8:16] = 255
    write_video(tmp_path / "pose.mp4", frames, fps=12)
    decoded, fps = read_video(tmp_path / "pose.mp4")
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8 and fps == 12
    assert np.abs(decoded.astype(int) - frames).mean() < 4
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="pose_video: .*is not an MP4/MOV"):
        read_video(tmp_path / "bad.mp4", "pose_video")
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
