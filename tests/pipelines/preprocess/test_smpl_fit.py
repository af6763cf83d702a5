"""Keypoint layouts and the SMPL fit on synthetic keypoints of known motions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.body_model import load_body_model
from models.keypoints import COCO17, SMPL24, body_keypoints, get_layout, keypoint_body, motion_keypoints2d
from models.motion import Motion, motion_from_arrays
from models.smpl_template import SMPL_JOINT_NAMES
from pipelines.demo.motions import make_demo_motion
from pipelines.preprocess.smpl_fit import FitConfig, fit_smpl

FAST = FitConfig(orient_iterations=30, iterations=150)


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


def every(motion: Motion, step: int, count: int) -> Motion:
    """`count` frames of `motion`, `step` frames apart."""
    arrays = motion.to_arrays()
    for key in ("global_orient", "body_pose", "betas", "transl", "K"):
        arrays[key] = arrays[key][: step * count : step]
    return motion_from_arrays(arrays)


def synthetic(body, motion: Motion, layout=COCO17, noise_px=2.0, drop=0.1, seed=0):
    """Noisy keypoints [T,J,3] with ~`drop` of them missing, and the noise-free pixels [T,J,2]."""
    clean = motion_keypoints2d(body, motion, layout)
    rng = np.random.default_rng(seed)
    confidence = (rng.random(clean.shape[:2]) >= drop).astype(np.float64)
    return np.concatenate([clean + rng.normal(0.0, noise_px, clean.shape), confidence[..., None]], -1), clean


def mpjpe_mm(body, truth: Motion, fit: Motion, layout=COCO17) -> float:
    """Mean 3D error of the layout's SMPL joints after aligning the pelvis, in mm."""
    joints = [source for source in layout.sources if source < 24]
    with torch.no_grad():
        a = body(truth.global_orient, truth.body_pose, truth.betas, truth.transl).joints
        b = body(fit.global_orient, fit.body_pose, fit.betas, fit.transl).joints
    return float(((a - a[:, :1]) - (b - b[:, :1]))[:, joints].norm(dim=-1).mean()) * 1000


def test_layouts_map_keypoints_to_the_right_body_points(body):
    assert get_layout("coco17") is COCO17 and COCO17.num_joints == 17 and SMPL24.num_joints == 24
    for name in ("left_shoulder", "right_knee", "left_wrist", "right_ankle"):
        assert COCO17.sources[COCO17.names.index(name)] == SMPL_JOINT_NAMES.index(name)
    with torch.no_grad():
        rest = body(torch.zeros(1, 3), torch.zeros(1, 69), torch.zeros(10), torch.zeros(1, 3))
        points = body_keypoints(body, rest, COCO17)[0]
    nose, left_ear, right_ear = (points[COCO17.names.index(n)] for n in ("nose", "left_ear", "right_ear"))
    head = rest.joints[0, SMPL_JOINT_NAMES.index("head")]
    assert nose[2] > head[2] and nose[1] > head[1]  # in front of the head (+z), above its joint
    assert left_ear[0] > 0 > right_ear[0]  # the subject's left is +x (the eyes share a vertex at this detail)
    assert torch.equal(body_keypoints(body, rest, SMPL24), rest.joints)
    with pytest.raises(ValueError, match="layout must be one of"):
        get_layout("openpose25")


def test_keypoint_body_poses_the_same_joints_and_face_points(body):
    reduced = keypoint_body(body)
    assert reduced.num_vertices == 29
    generator = torch.Generator().manual_seed(0)
    pose = [torch.randn(6, 3, generator=generator), 0.5 * torch.randn(6, 69, generator=generator)]
    shape = [torch.randn(10, generator=generator), torch.randn(6, 3, generator=generator)]
    with torch.no_grad():
        full, small = body(*pose, *shape), reduced(*pose, *shape)
    assert torch.allclose(small.joints, full.joints, atol=1e-5)
    assert torch.allclose(body_keypoints(reduced, small, COCO17), body_keypoints(body, full, COCO17), atol=1e-5)


def test_fit_recovers_a_profile_walk_from_noisy_keypoints(body):
    truth = every(make_demo_motion("walk", 48), 3, 16)
    keypoints, clean = synthetic(body, truth)
    result = fit_smpl(keypoints, truth.K, truth.image_size, body, "coco17", FAST, fps=8.0)
    error_px = np.linalg.norm(motion_keypoints2d(body, result.motion, COCO17) - clean, axis=-1).mean()
    assert error_px < 4.0  # at 480x720, with 2 px noise and 10% of the keypoints dropped
    assert np.nanmean(result.reprojection_error_px) < 0.3 * np.nanmean(result.initial_error_px)
    assert mpjpe_mm(body, truth, result.motion) < 90
    assert np.allclose(result.keypoint_fraction, (keypoints[..., 2] > 0).mean(1))
    motion = result.motion
    assert motion.num_frames == 16 and motion.fps == 8.0 and motion.image_size == truth.image_size
    assert np.allclose(motion.K, truth.K) and motion.keypoints2d.shape == (16, 17, 3)
    assert np.allclose(motion.betas, motion.betas[0])  # one shape for the clip


@pytest.mark.parametrize("layout", [COCO17, SMPL24], ids=lambda layout: layout.name)
def test_fit_follows_a_body_turning_all_the_way_round(body, layout):
    truth = every(make_demo_motion("turn", 161), 10, 16)  # 30 degrees per frame, 450 degrees in all
    keypoints, clean = synthetic(body, truth, layout, seed=1)
    result = fit_smpl(keypoints, truth.K, truth.image_size, body, layout.name, FAST, fps=2.4)
    turned = Rotation.from_rotvec(result.motion.global_orient) * Rotation.from_rotvec(truth.global_orient).inv()
    assert np.degrees(turned.magnitude()).max() < 30  # never facing the wrong way
    assert np.degrees(turned.magnitude()).mean() < 10
    assert np.linalg.norm(motion_keypoints2d(body, result.motion, layout) - clean, axis=-1).mean() < 4.0


def test_missing_and_nan_keypoints_do_not_break_the_fit(body):
    truth = every(make_demo_motion("arm_swings", 24), 3, 8)
    keypoints, _ = synthetic(body, truth, noise_px=1.0, drop=0.0)
    keypoints[2] = 0.0  # a frame without any keypoint
    keypoints[4, :5] = np.nan  # the face lost in one frame
    keypoints[5, 9, 2] = np.nan
    keypoints[6, 10, :2] = np.inf
    config = FitConfig(orient_iterations=10, iterations=60)
    result = fit_smpl(torch.from_numpy(keypoints), truth.K[0], truth.image_size, body, "coco17", config, fps=8.0)
    assert np.isnan(result.reprojection_error_px[2]) and result.keypoint_fraction[2] == 0
    assert np.isfinite(np.delete(result.reprojection_error_px, 2)).all()
    assert result.keypoint_fraction[4] == pytest.approx(12 / 17)
    assert result.keypoint_fraction[5] == result.keypoint_fraction[6] == pytest.approx(16 / 17)
    stored = result.motion.keypoints2d
    assert np.isfinite(stored).all() and (stored[4, :5] == 0).all() and stored[6, 10, 2] == 0
    assert np.isfinite(result.motion.transl).all() and result.motion.transl[2, 2] > 1.0


def test_lbfgs_refines_after_adam(body):
    truth = every(make_demo_motion("arm_swings", 12), 3, 4)
    keypoints, _ = synthetic(body, truth, noise_px=0.0, drop=0.0)
    adam = FitConfig(orient_iterations=10, iterations=20)
    plain = fit_smpl(keypoints, truth.K, truth.image_size, body, config=adam, fps=8.0)
    refined = fit_smpl(keypoints, truth.K, truth.image_size, body, config=adam.model_copy(update={"lbfgs_iterations": 10}), fps=8.0)
    assert refined.loss < plain.loss


def test_bad_inputs_are_named(body):
    keypoints = np.ones((4, 17, 3))
    K = make_demo_motion("walk", 1).K[0]
    cases = [
        ({"keypoints2d": np.ones((4, 17))}, "keypoints2d must have shape"),
        ({"keypoints2d": np.ones((4, 24, 3))}, "layout 'coco17' has 17"),
        ({"layout": "body25"}, "layout must be one of"),
        ({"K": np.ones((2, 3, 3))}, r"K must have shape \[3,3\] or \[T,3,3\] with T=4"),
        ({"K": -K}, "positive focal"),
        ({"image_size": (480,)}, "image_size must be two positive integers"),
        ({"keypoints2d": np.zeros((4, 17, 3))}, "no keypoint with confidence"),
        ({"fps": 0}, "fps must be"),
        ({"device": "meta"}, "body is on cpu but device=meta"),
    ]
    for change, message in cases:
        arguments = {"keypoints2d": keypoints, "K": K, "image_size": (480, 720), "body": body, "layout": "coco17", "fps": 24.0}
        with pytest.raises(ValueError, match=message):
            fit_smpl(**{**arguments, **change})
    with pytest.raises(ValueError, match="learning_rate"):
        FitConfig(learning_rate=0)


@pytest.mark.gpu
def test_fit_on_cuda_matches_cpu(body):
    truth = every(make_demo_motion("walk", 24), 3, 8)
    keypoints, clean = synthetic(body, truth)
    gpu_body = load_body_model(detail=12).to("cuda")
    result = fit_smpl(keypoints, truth.K, truth.image_size, gpu_body, "coco17", FAST, "cuda", fps=8.0)
    assert np.linalg.norm(motion_keypoints2d(body, result.motion, COCO17) - clean, axis=-1).mean() < 4.0
