"""Retargeting on synthetic truth: person A (shape, placement, camera) is the photo, motion B the driving motion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.body_model import load_body_model
from models.keypoints import COCO17, keypoint_body, motion_keypoints2d
from models.motion import Motion
from pipelines.demo.synth import cross_spec, draw_clip, first_clip_of, synth_motion
from pipelines.demo.synth_motions import ACTIONS
from pipelines.evaluation.heldout import render_heldout_clip
from pipelines.generation.retarget import PhotoFit, RetargetError, fit_photo, observed_joints, retarget
from pipelines.preprocess.smpl_fit import FitConfig

SIZE = (96, 144)  # the synthetic people's size
FAST = FitConfig(orient_iterations=20, iterations=120)  # a single frame converges well within this
LEAD_IN = 4
CROPS = {  # COCO-17 keypoints a crop of the photo loses
    "full": [],
    "waist_up": [13, 14, 15, 16],  # knees, ankles
    "head_and_shoulders": list(range(7, 17)),  # elbows, wrists, hips, knees, ankles
}
HIPS_KNEES_ANKLES = [0, 1, 3, 4, 6, 7]  # body_pose rows of SMPL joints 1, 2 (hips), 4, 5 (knees), 7, 8 (ankles)


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def photo_person() -> Motion:
    """Person A: one frame of a held-out synthetic clip (its shape, pose, placement and camera)."""
    return synth_motion(draw_clip(0, "test", 1, 1, SIZE))


@pytest.fixture(scope="module")
def walk() -> Motion:
    """Motion B: a held-out walk across the image, another person's shape and camera distance."""
    return synth_motion(first_clip_of(0, "test", "walk", 24, SIZE))


def photo_keypoints(body, person: Motion, dropped: list[int]) -> np.ndarray:
    """A's COCO-17 keypoints as a perfect estimator would give them, `dropped` ones missing (confidence 0)."""
    points = motion_keypoints2d(body, person, COCO17)[0]
    confidence = np.ones((len(points), 1))
    confidence[dropped] = 0.0
    return np.concatenate([points, confidence], axis=1)


def pelvis_and_orient(body, motion: Motion) -> tuple[np.ndarray, Rotation]:
    with torch.no_grad():
        output = keypoint_body(body)(motion.global_orient, motion.body_pose, motion.betas, motion.transl)
    return output.joints[:, 0].double().numpy(), Rotation.from_rotvec(motion.global_orient.astype(np.float64))


def assert_follows_root_trajectory(body, out: Motion, source: Motion, lead_in: int) -> None:
    """After the lead-in the root moves as the source's relative to its start: the pelvis displacement is the
    source's rotated by one fixed rotation and scaled by one positive factor, the root's rotation relative to the
    first frame (in the body's frame) is the source's, and the joint rotations are the source's."""
    pelvis, orient = pelvis_and_orient(body, out.slice(lead_in, out.num_frames))
    source_pelvis, source_orient = pelvis_and_orient(body, source)
    align = orient[0] * source_orient[0].inv()
    moved = align.apply(source_pelvis - source_pelvis[0])
    travelled = pelvis - pelvis[0]
    scale = float((moved * travelled).sum() / (moved * moved).sum())
    assert np.linalg.norm(source_pelvis[-1] - source_pelvis[0]) > 0.2  # B really travels
    assert 0.6 < scale < 1.6
    np.testing.assert_allclose(travelled, scale * moved, atol=2e-3)
    relative = (orient[0].inv() * orient).as_matrix()
    np.testing.assert_allclose(relative, (source_orient[0].inv() * source_orient).as_matrix(), atol=1e-4)
    np.testing.assert_allclose(out.body_pose[lead_in:], source.body_pose, atol=1e-5)


def test_observed_joints_follow_the_kinematic_tree():
    seen = np.zeros(29, dtype=bool)
    seen[[16, 17, 24]] = True  # shoulders and nose
    observed = observed_joints(seen)
    rows = {joint + 1 for joint in np.flatnonzero(observed)}
    assert rows == {3, 6, 9, 12, 13, 14, 15}  # spine, neck, collars, head: not the shoulders' own rotations


def test_retarget_onto_the_true_photo_person(body, photo_person, walk):
    """With the photo person's true parameters as the fit, frame 0 is exactly A and the rest is B moved onto A."""
    truth = PhotoFit(photo_person, np.ones(23, dtype=bool), 0.0)
    out = retarget(walk, truth, body, lead_in=LEAD_IN)
    assert out.num_frames == walk.num_frames + LEAD_IN and out.fps == walk.fps
    assert out.image_size == photo_person.image_size
    np.testing.assert_allclose(out.K, np.broadcast_to(photo_person.K[0], out.K.shape))
    np.testing.assert_allclose(out.betas, np.broadcast_to(photo_person.betas[0], out.betas.shape), atol=1e-6)
    assert np.abs(out.betas[0] - walk.betas[0]).max() > 0.3  # A's shape, not B's
    frame0 = motion_keypoints2d(body, out.slice(0, 1), COCO17)
    np.testing.assert_allclose(frame0, motion_keypoints2d(body, photo_person, COCO17), atol=0.02)
    # the motion's first frame keeps A's root: same pelvis, same orientation
    pelvis, orient = pelvis_and_orient(body, out)
    true_pelvis, true_orient = pelvis_and_orient(body, photo_person)
    np.testing.assert_allclose(pelvis[: LEAD_IN + 1], np.repeat(true_pelvis, LEAD_IN + 1, 0), atol=1e-4)
    assert (orient[LEAD_IN] * true_orient[0].inv()).magnitude() < 1e-4
    # the lead-in goes from A's pose to B's first pose, strictly in between on the way
    distance = [np.abs(out.body_pose[t] - walk.body_pose[0]).max() for t in range(LEAD_IN + 1)]
    assert distance[0] > 0.2 and distance[-1] < 1e-5 and all(np.diff(distance) < 0)
    assert_follows_root_trajectory(body, out, walk, LEAD_IN)


def test_without_lead_in_the_motion_starts_at_the_photo_person(body, photo_person, walk):
    truth = PhotoFit(photo_person, np.ones(23, dtype=bool), 0.0)
    out = retarget(walk, truth, body)
    assert out.num_frames == walk.num_frames
    np.testing.assert_allclose(out.body_pose, walk.body_pose, atol=1e-6)
    pelvis, _ = pelvis_and_orient(body, out.slice(0, 1))
    true_pelvis, _ = pelvis_and_orient(body, photo_person)
    np.testing.assert_allclose(pelvis, true_pelvis, atol=1e-4)
    with pytest.raises(RetargetError, match="lead_in"):
        retarget(walk, truth, body, lead_in=-1)


def test_a_cross_pair_truth_clip_starts_as_the_photo(body, photo_person):
    """The IoU part of benchmarks/retarget.py: person A performing B's motion retargeted onto A's true parameters,
    rendered at the model's size; after the lead-in frame 0 is A's own first frame, the reference photo."""
    person, driver = draw_clip(0, "test", 1, 1, SIZE), first_clip_of(0, "test", "walk", 6, SIZE)
    truth = retarget(synth_motion(driver), PhotoFit(photo_person, np.ones(23, dtype=bool), 0.0), body, LEAD_IN)
    clip = render_heldout_clip(cross_spec(person, driver), body, (64, 96), truth)
    photo = render_heldout_clip(person, body, (64, 96)).image
    assert clip.truth.shape == (6 + LEAD_IN, 64, 96, 3)
    assert np.abs(clip.image.astype(int) - photo.astype(int)).mean() < 0.5
    assert np.abs(clip.truth[-1].astype(int) - photo.astype(int)).mean() > 2  # then it walks
    assert clip.caption == person.caption().replace(ACTIONS[person.motion], ACTIONS["walk"])  # A's look, B's action
    with pytest.raises(ValueError, match="motion: seen in"):
        render_heldout_clip(person, body, (64, 96), synth_motion(first_clip_of(0, "test", "walk", 6, (48, 72))))


@pytest.mark.parametrize("crop", list(CROPS))
def test_retarget_from_photo_keypoints(body, photo_person, walk, crop):
    """From A's 2D keypoints alone (full body, waist up, head and shoulders): frame 0 projects onto A's seen
    keypoints, the joints the photo does not show start in B's first pose, the rest follows B."""
    keypoints = photo_keypoints(body, photo_person, CROPS[crop])
    fit = fit_photo(keypoints, SIZE, body, config=FAST)
    out = retarget(walk, fit, body, lead_in=LEAD_IN)
    seen = keypoints[:, 2] > 0
    frame0 = motion_keypoints2d(body, out.slice(0, 1), COCO17)[0]
    error = np.linalg.norm(frame0 - keypoints[:, :2], axis=1)
    assert error[seen].mean() < 1.0 and error[seen].max() < 2.5, error
    np.testing.assert_allclose(out.betas, np.broadcast_to(fit.motion.betas[0], out.betas.shape))
    start = out.body_pose[0].reshape(23, 3)
    if crop == "full":
        assert fit.observed[HIPS_KNEES_ANKLES[:4]].all()
        np.testing.assert_allclose(start, fit.motion.body_pose[0].reshape(23, 3), atol=1e-5)
    else:
        assert not fit.observed[HIPS_KNEES_ANKLES].any()
        np.testing.assert_allclose(start[HIPS_KNEES_ANKLES], walk.body_pose[0].reshape(23, 3)[HIPS_KNEES_ANKLES],
                                   atol=1e-5)
    assert_follows_root_trajectory(body, out, walk, LEAD_IN)


def test_a_photo_without_enough_keypoints_is_refused(body, photo_person):
    keypoints = photo_keypoints(body, photo_person, list(range(2, 17)))
    with pytest.raises(RetargetError, match="retarget: false"):
        fit_photo(keypoints, SIZE, body, config=FAST)
    with pytest.raises(RetargetError, match=r"shape \[17, 3\]"):
        fit_photo(keypoints[:5], SIZE, body, config=FAST)
