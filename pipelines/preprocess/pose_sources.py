"""Where a clip's motion comes from: its video's sidecars, or a 2D keypoint estimator and an SMPL fit.

`clip_motion` tries, in order:
1. a motion sidecar: a motion file (`.npz` or `.json` in the motion-file format, DESIGN.md), or EasyMocap's
   SMPL output (`*.easymocap.json` or a `*.easymocap/` folder, see `load_easymocap`);
2. a keypoints sidecar (`.npy`, `.npz` or `.json`, see `load_keypoints_sidecar`), fitted with
   `pipelines.preprocess.smpl_fit.fit_smpl`;
3. a keypoint estimator (`estimator=`, or the `keypoint_backend` option: DWPose with `dwpose_model`, or MediaPipe; see
   pipelines/preprocess/keypoint_estimators.py) on the clip's decoded frames, then the fit.
Sidecars describe the whole video (one entry per video frame); the clip picks its frames by index. The motion
comes back in the video's pixels (`image_size`) at the clip's `fps`. Every failure is a `PoseSourceError`
(a ValueError) naming the file and what is missing or mismatched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.spatial.transform import Rotation

from models.body_model import NUM_POSE_PARAMS, BodyModel, load_body_model
from models.motion import NUM_BETAS, Motion, MotionError, motion_from_arrays
from models.pose_video import layout_for
from pipelines.io.config import validate_config
from pipelines.io.motion import load_motion
from pipelines.preprocess.clips import CropBox, crop_motion, crop_transform, decode_frames
from pipelines.preprocess.keypoint_estimators import (
    COCO17_JOINTS,
    DWPOSE_MODEL_NAME,
    MEDIAPIPE_LANDMARK_MODELS,
    dwpose_estimator,
    mediapipe_estimator,
)
from pipelines.preprocess.smpl_fit import FitConfig, fit_smpl

_CAMERA_FILES = ("intri.yml", "extri.yml")


class PoseSourceError(ValueError):
    """A clip whose motion cannot be made; the message names the file and what is missing or mismatched."""


class PoseOptions(BaseModel):
    """Options of `clip_motion` (the preprocessing config's `pose:` mapping)."""

    model_config = ConfigDict(extra="forbid")

    fit: FitConfig = Field(default_factory=FitConfig)
    device: str = Field("cpu", description="torch device of the SMPL fit")
    keypoint_backend: Literal["dwpose", "mediapipe"] = Field(
        "dwpose", description="keypoint estimator for clips without sidecars (pipelines/preprocess/keypoint_estimators.py)"
    )
    dwpose_model: Path | None = Field(None, description=f"DWPose ONNX file ({DWPOSE_MODEL_NAME}) for the dwpose estimator")
    model_complexity: Literal[0, 1, 2] = Field(
        1,
        description="MediaPipe's BlazePose landmark model: 1 (full) ships in the wheel; 0 (lite) and 2 (heavy) need "
        "mediapipe_model",
    )
    mediapipe_model: Path | None = Field(
        None,
        description=f"local {MEDIAPIPE_LANDMARK_MODELS[0]} or {MEDIAPIPE_LANDMARK_MODELS[2]} for model_complexity 0 "
        "or 2 (never downloaded)",
    )
    person_id: int | None = Field(None, description="EasyMocap person id; None: the first person of the first frame")
    easymocap_camera: str | None = Field(None, description="camera name in intri.yml/extri.yml; None: the first")

    @model_validator(mode="after")
    def _mediapipe_model_matches(self) -> PoseOptions:
        needs_file = self.model_complexity != 1
        if needs_file and self.keypoint_backend == "mediapipe" and self.mediapipe_model is None:
            name = MEDIAPIPE_LANDMARK_MODELS[self.model_complexity]
            raise ValueError(
                f"model_complexity {self.model_complexity} needs mediapipe_model: a local {name} (not in the mediapipe "
                "wheel, and never downloaded); model_complexity 1 uses the wheel's own model"
            )
        if not needs_file and self.mediapipe_model is not None:
            raise ValueError(
                "mediapipe_model is for model_complexity 0 or 2; model_complexity 1 uses the wheel's own model"
            )
        return self


class KeypointEstimator(Protocol):
    """A 2D body keypoint estimator: uint8 RGB frames [T,H,W,3] -> COCO-17 keypoints [T,17,3] (x, y, confidence)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def clip_motion(
    video: str | Path,
    frame_indices: Sequence[int] | np.ndarray,
    video_frames: int,
    image_size: tuple[int, int],
    fps: float,
    motion: str | Path | None = None,
    keypoints: str | Path | None = None,
    body: BodyModel | None = None,
    estimator: KeypointEstimator | None = None,
    **options: Any,
) -> Motion:
    """The motion of the clip made of `frame_indices` of `video` (`video_frames` frames of `image_size` (H, W)).

    `motion` and `keypoints` are the video's sidecar paths (or None); `body` is the body model the fit and the
    EasyMocap conversion use (default: the generated template); `options` are `PoseOptions` fields (a
    `pipelines.io.config.ConfigError` names a bad one).
    """
    opts = validate_config(PoseOptions, options, source="pose options")
    indices = np.asarray(frame_indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= video_frames:
        raise PoseSourceError(f"frame_indices must be a non-empty list of frames in [0, {video_frames}), got {indices.tolist()}")
    image_size = (int(image_size[0]), int(image_size[1]))
    if motion is not None:
        path = Path(motion)
        if _is_easymocap(path):
            params, camera = load_easymocap(path, opts.easymocap_camera, opts.person_id)
            _check_frames(len(params["Rh"]), video_frames, f"EasyMocap output {path}")
            picked = {key: value[indices] for key, value in params.items()}
            return easymocap_to_motion(picked, camera, body or load_body_model(), image_size, fps)
        return _motion_file(path, indices, video_frames, image_size, fps)
    if keypoints is not None:
        sidecar = load_keypoints_sidecar(keypoints)
        _check_frames(len(sidecar.keypoints2d), video_frames, f"keypoints sidecar {keypoints}")
        points, K = _at_image_size(sidecar, indices, image_size, Path(keypoints))
        return _fit(points, K, image_size, fps, sidecar.layout, body, opts)
    points = _estimate(estimator or _configured_estimator(opts, video), video, indices, image_size)
    return _fit(points, guess_intrinsics(image_size), image_size, fps, "coco17", body, opts)


def _estimate(estimator: KeypointEstimator, video: str | Path, indices: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """COCO-17 keypoints [T,17,3] of the clip's decoded frames."""
    frames = decode_frames(video, indices)
    if frames.shape[1:3] != image_size:
        raise PoseSourceError(f"video {video} decodes to {list(frames.shape[1:3])} frames, expected {list(image_size)}")
    points = np.asarray(estimator(frames), dtype=np.float64)
    expected = [len(indices), COCO17_JOINTS, 3]
    if list(points.shape) != expected:
        raise PoseSourceError(f"keypoint estimator returned shape {list(points.shape)}, expected {expected}")
    return points


def keypoint_estimator(opts: PoseOptions) -> KeypointEstimator | None:
    """The estimator the options configure (one per process), or None: the dwpose backend without a model file.

    Building it imports the backend and checks its model files, so a stage can build it once at start and fail there.
    """
    if opts.keypoint_backend == "mediapipe":
        return mediapipe_estimator(opts.model_complexity, opts.mediapipe_model)
    return None if opts.dwpose_model is None else dwpose_estimator(opts.dwpose_model)


def _configured_estimator(opts: PoseOptions, video: str | Path) -> KeypointEstimator:
    estimator = keypoint_estimator(opts)
    if estimator is None:
        raise PoseSourceError(
            f"no pose source for {video}: no motion sidecar, no keypoints sidecar, and no keypoint estimator "
            f"(set the pose option dwpose_model to DWPose's {DWPOSE_MODEL_NAME}, or keypoint_backend: mediapipe)"
        )
    return estimator


def guess_intrinsics(image_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics [3,3] for an unknown camera: focal length = the longer image side (about 53 degrees across
    it), principal point at the image centre."""
    height, width = image_size
    focal = float(max(height, width))
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def _check_frames(count: int, video_frames: int, what: str) -> None:
    if count != video_frames:
        raise PoseSourceError(f"{what} has {count} frames, the video has {video_frames}")


def _fit(
    keypoints: np.ndarray,
    K: np.ndarray,
    image_size: tuple[int, int],
    fps: float,
    layout: str,
    body: BodyModel | None,
    opts: PoseOptions,
) -> Motion:
    body = body or load_body_model()
    return fit_smpl(keypoints, K, image_size, body.to(opts.device), layout, opts.fit, opts.device, fps=fps).motion


def _full_frame(image_size: tuple[int, int]) -> CropBox:
    return CropBox(0, 0, image_size[1], image_size[0])


# Motion files

_PER_FRAME_KEYS = ("global_orient", "body_pose", "betas", "transl", "K", "keypoints2d")

def _motion_file(path: Path, indices: np.ndarray, video_frames: int, image_size: tuple[int, int], fps: float) -> Motion:
    """A motion file's frames `indices`, rescaled to `image_size`, at `fps`."""
    try:
        full = load_motion(path)
    except MotionError as err:
        raise PoseSourceError(f"motion sidecar {path}: {err}") from None
    _check_frames(full.num_frames, video_frames, f"motion sidecar {path}")
    arrays = {key: value[indices] if key in _PER_FRAME_KEYS else value for key, value in full.to_arrays().items()}
    picked = motion_from_arrays({**arrays, "fps": fps})
    try:
        return crop_motion(picked, _full_frame(image_size), image_size, image_size)
    except MotionError as err:
        raise PoseSourceError(f"motion sidecar {path}: {err}") from None


# Keypoint sidecars


@dataclass(frozen=True)
class KeypointSidecar:
    """2D keypoints of a whole video and what they refer to."""

    keypoints2d: np.ndarray  # [N,J,3] x, y, confidence (NaN = missing)
    layout: str  # "coco17" or "smpl24"
    image_size: tuple[int, int] | None  # (H, W) of the pixels; None: the video's
    K: np.ndarray | None  # [3,3] or [N,3,3] intrinsics for image_size; None: guessed


def load_keypoints_sidecar(path: str | Path) -> KeypointSidecar:
    """Read keypoints: a `.npy` array [N,J,3], or an `.npz`/`.json` object with `keypoints2d` [N,J,3] and
    optional `layout` ("coco17"/"smpl24"; default by J), `image_size` [H,W] and `K` [3,3] or [N,3,3].
    JSON nulls and NaN mark missing keypoints."""
    path = Path(path)
    if not path.is_file():
        raise PoseSourceError(f"keypoints sidecar not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".json"):
        raise PoseSourceError(f"keypoints sidecar {path} must be .npy, .npz or .json")
    try:
        if suffix == ".npy":
            data: dict[str, Any] = {"keypoints2d": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        else:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {"keypoints2d": data}
    except (ValueError, OSError) as err:  # includes pickled arrays, which stay unloaded
        raise PoseSourceError(f"keypoints sidecar {path} cannot be read: {err}") from None
    if "keypoints2d" not in data:
        raise PoseSourceError(f"keypoints sidecar {path} has no key 'keypoints2d'")
    try:
        points = np.asarray(data["keypoints2d"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PoseSourceError(f"keypoints sidecar {path}: 'keypoints2d' is not a numeric array: {err}") from None
    if points.ndim != 3 or points.shape[2] != 3 or len(points) == 0:
        raise PoseSourceError(f"keypoints sidecar {path}: 'keypoints2d' must have shape [N,J,3], got {list(points.shape)}")
    try:
        layout = layout_for(points.shape[1])
    except ValueError as err:
        raise PoseSourceError(f"keypoints sidecar {path}: {err}") from None
    if "layout" in data and str(data["layout"]) != layout.name:
        raise PoseSourceError(
            f"keypoints sidecar {path}: layout {str(data['layout'])!r} does not match its {points.shape[1]} "
            f"keypoints per frame ({layout.name})"
        )
    size = None
    if data.get("image_size") is not None:
        size_array = np.asarray(data["image_size"])
        if size_array.shape != (2,) or np.any(size_array < 1):
            raise PoseSourceError(f"keypoints sidecar {path}: 'image_size' must be [H, W], got {size_array.tolist()}")
        size = (int(size_array[0]), int(size_array[1]))
    K = None if data.get("K") is None else np.asarray(data["K"], dtype=np.float64)
    if K is not None and K.shape not in ((3, 3), (len(points), 3, 3)):
        raise PoseSourceError(f"keypoints sidecar {path}: 'K' must be [3,3] or [N,3,3], got {list(K.shape)}")
    return KeypointSidecar(points, layout.name, size, K)


def _at_image_size(
    sidecar: KeypointSidecar, indices: np.ndarray, image_size: tuple[int, int], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The clip's keypoints [T,J,3] and intrinsics in pixels of `image_size`."""
    points = sidecar.keypoints2d[indices]
    K = guess_intrinsics(image_size) if sidecar.K is None else sidecar.K[indices] if sidecar.K.ndim == 3 else sidecar.K
    if sidecar.image_size is None or sidecar.image_size == image_size:
        return points, K
    try:
        transform = crop_transform(_full_frame(image_size), image_size, sidecar.image_size, image_size)
    except MotionError as err:
        raise PoseSourceError(f"keypoints sidecar {path}: {err}") from None
    xy = np.concatenate([points[..., :2], np.ones_like(points[..., :1])], axis=-1) @ transform.T
    if sidecar.K is not None:
        K = transform @ K
    return np.concatenate([xy[..., :2], points[..., 2:]], axis=-1), K


# EasyMocap


@dataclass(frozen=True)
class EasyMocapCamera:
    """One camera of EasyMocap's world: x_cam = R @ x_world + T (OpenCV axes), intrinsics K."""

    K: np.ndarray  # [3,3]
    R: np.ndarray  # [3,3]
    T: np.ndarray  # [3]
    image_size: tuple[int, int] | None = None  # (H, W) that K refers to; None: the video's


def _is_easymocap(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(".easymocap.json")


class _OpenCVYamlLoader(yaml.SafeLoader):
    """PyYAML loader for OpenCV FileStorage YAML (EasyMocap's camera files): `!!opencv-matrix` -> ndarray."""


def _opencv_matrix(loader: yaml.SafeLoader, node: yaml.Node) -> np.ndarray:
    fields = loader.construct_mapping(node, deep=True)
    return np.asarray(fields["data"], dtype=np.float64).reshape(int(fields["rows"]), int(fields["cols"]))


_OpenCVYamlLoader.add_constructor("tag:yaml.org,2002:opencv-matrix", _opencv_matrix)


def _read_opencv_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PoseSourceError(f"EasyMocap camera file not found: {path}")
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("%YAML"))
    try:
        data = yaml.load(text, Loader=_OpenCVYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise PoseSourceError(f"EasyMocap camera file {path} is not OpenCV YAML: {err}") from None
    if not isinstance(data, dict):
        raise PoseSourceError(f"EasyMocap camera file {path} holds no mapping")
    return data


def read_easymocap_cameras(intri_path: str | Path, extri_path: str | Path) -> dict[str, EasyMocapCamera]:
    """EasyMocap's `intri.yml` (K_<name>, optional H_<name>/W_<name>) and `extri.yml` (Rot_<name> [3,3] or
    R_<name> Rodrigues [3,1], T_<name> [3,1]), by camera name in their `names` order."""
    intri, extri = _read_opencv_yaml(Path(intri_path)), _read_opencv_yaml(Path(extri_path))
    names = [str(name) for name in intri.get("names") or extri.get("names") or []]
    if not names:
        raise PoseSourceError(f"EasyMocap camera file {intri_path} lists no camera 'names'")
    cameras = {}
    for name in names:
        for key, source, path in (("K", intri, intri_path), ("T", extri, extri_path)):
            if f"{key}_{name}" not in source:
                raise PoseSourceError(f"EasyMocap camera file {path} has no {key}_{name}")
        if f"Rot_{name}" in extri:
            rotation = np.asarray(extri[f"Rot_{name}"], dtype=np.float64)
        elif f"R_{name}" in extri:
            rotation = Rotation.from_rotvec(np.asarray(extri[f"R_{name}"], dtype=np.float64).reshape(3)).as_matrix()
        else:
            raise PoseSourceError(f"EasyMocap camera file {extri_path} has no Rot_{name} or R_{name}")
        size = (int(intri[f"H_{name}"]), int(intri[f"W_{name}"])) if f"H_{name}" in intri and f"W_{name}" in intri else None
        cameras[name] = _camera({"K": intri[f"K_{name}"], "R": rotation, "T": extri[f"T_{name}"], "image_size": size}, extri_path)
    return cameras


def _camera(data: dict[str, Any], source: str | Path) -> EasyMocapCamera:
    """An EasyMocapCamera from K [3,3], R [3,3] or Rodrigues [3], T [3] (any [3,1]-like shape), image_size."""
    try:
        K = np.asarray(data["K"], dtype=np.float64)
        R = np.asarray(data["R"], dtype=np.float64)
        T = np.asarray(data["T"], dtype=np.float64).reshape(-1)
    except KeyError as err:
        raise PoseSourceError(f"EasyMocap camera in {source} has no {err.args[0]}") from None
    if R.size == 3:
        R = Rotation.from_rotvec(R.reshape(3)).as_matrix()
    if K.shape != (3, 3) or R.shape != (3, 3) or T.shape != (3,):
        raise PoseSourceError(
            f"EasyMocap camera in {source}: K and R must be 3x3 and T 3 values, got {list(K.shape)}, {list(R.shape)}, "
            f"{list(T.shape)}"
        )
    size = data.get("image_size")
    return EasyMocapCamera(K, R, T, None if size is None else (int(size[0]), int(size[1])))


def load_easymocap(
    path: str | Path, camera_name: str | None = None, person_id: int | None = None
) -> tuple[dict[str, np.ndarray], EasyMocapCamera]:
    """EasyMocap SMPL parameters of one person per frame (`Rh`, `Th` [N,3], `poses` [N,69|72], `shapes` [N,10])
    and the camera that sees them.

    A folder holds EasyMocap's per-frame files (`*.json`, in name order: a list of people, or {"annots": [...]},
    each with `id`, `Rh`, `Th`, `poses`, `shapes`) and the camera files `intri.yml` and `extri.yml`. A
    `*.easymocap.json` file holds {"frames": [per-frame content...], "camera": {"K", "R", "T", "image_size"?}}.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json"))
        if not files:
            raise PoseSourceError(f"EasyMocap folder {path} holds no per-frame .json files")
        frames = [(file.name, _read_json(file)) for file in files]
        cameras = read_easymocap_cameras(*(path / name for name in _CAMERA_FILES))
        if camera_name is not None and camera_name not in cameras:
            raise PoseSourceError(f"EasyMocap folder {path}: no camera {camera_name!r} (cameras: {sorted(cameras)})")
        camera = cameras[camera_name or next(iter(cameras))]
    else:
        data = _read_json(path)
        if not isinstance(data, dict) or "frames" not in data or "camera" not in data:
            raise PoseSourceError(
                f"EasyMocap file {path} must be an object with 'frames' (EasyMocap's per-frame content) and 'camera' "
                "(K, R, T of the camera: bodies are in EasyMocap's world frame)"
            )
        frames = [(f"frame {index}", frame) for index, frame in enumerate(data["frames"])]
        camera = _camera(data["camera"], path)
    people = [_people(content, f"{path}: {name}") for name, content in frames]
    if person_id is None:
        if not people[0]:
            raise PoseSourceError(f"EasyMocap output {path}: its first frame has no person")
        person_id = next(iter(people[0]))
    rows = []
    for (name, _), present in zip(frames, people):
        if person_id not in present:
            raise PoseSourceError(f"EasyMocap output {path}: {name} has no person with id {person_id} (ids: {sorted(present)})")
        rows.append(present[person_id])
    params = {key: np.stack([row[key] for row in rows]) for key in ("Rh", "Th", "shapes")}
    widths = {row["poses"].size for row in rows}
    if len(widths) != 1:
        raise PoseSourceError(f"EasyMocap output {path}: 'poses' widths differ between frames ({sorted(widths)})")
    params["poses"] = np.stack([row["poses"] for row in rows])
    return params, camera


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PoseSourceError(f"EasyMocap file {path} cannot be read as JSON: {err}") from None


def _people(content: Any, where: str) -> dict[int, dict[str, np.ndarray]]:
    """The people of one EasyMocap frame by id, each with flat float arrays Rh, Th, poses, shapes (checked)."""
    if isinstance(content, dict):
        content = content.get("annots")
    if not isinstance(content, list):
        raise PoseSourceError(f"EasyMocap {where}: expected a list of people or {{'annots': [...]}}")
    people = {}
    for index, person in enumerate(content):
        if not isinstance(person, dict):
            raise PoseSourceError(f"EasyMocap {where}: person {index} is not an object")
        values = {}
        for key, sizes in (("Rh", (3,)), ("Th", (3,)), ("poses", (NUM_POSE_PARAMS, NUM_POSE_PARAMS + 3)), ("shapes", (NUM_BETAS,))):
            if key not in person:
                raise PoseSourceError(f"EasyMocap {where}: person {index} has no {key!r}")
            try:
                value = np.asarray(person[key], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise PoseSourceError(f"EasyMocap {where}: person {index} {key!r} is not numeric") from None
            if value.size not in sizes or not np.all(np.isfinite(value)):
                raise PoseSourceError(
                    f"EasyMocap {where}: person {index} {key!r} must hold {' or '.join(map(str, sizes))} finite values, "
                    f"got {value.size}"
                )
            values[key] = value
        people[int(person.get("id", index))] = values
    return people


def easymocap_to_motion(
    params: dict[str, np.ndarray], camera: EasyMocapCamera, body: BodyModel, image_size: tuple[int, int], fps: float
) -> Motion:
    """EasyMocap's world-frame SMPL (Rh, Th, poses, shapes per frame) as a camera-frame motion of `image_size`.

    EasyMocap poses the body with `poses` (the first 3 values, when there are 72, rotate the root about the
    pelvis; usually zero) and then moves it by x -> R(Rh) x + Th about the model origin. With the camera's
    x_cam = R x + T this is smplx's global_orient R R(Rh) R(root) and transl R (R(Rh) J0 + Th) + T - J0, where
    J0 is the rest-pose pelvis of the frame's shape.
    """
    poses, shapes = params["poses"], params["shapes"]
    root = poses[:, :3] if poses.shape[1] == NUM_POSE_PARAMS + 3 else np.zeros((len(poses), 3))
    body_pose = poses[:, -NUM_POSE_PARAMS:]
    world = Rotation.from_rotvec(params["Rh"])
    orient = Rotation.from_matrix(np.broadcast_to(camera.R, (len(poses), 3, 3))) * world * Rotation.from_rotvec(root)
    device = body.faces.device
    with torch.no_grad():
        zeros = torch.zeros(len(poses), 3, device=device)
        pelvis = body(zeros, torch.zeros(len(poses), NUM_POSE_PARAMS, device=device), shapes, zeros).joints[:, 0]
    pelvis = pelvis.double().cpu().numpy()
    transl = (world.apply(pelvis) + params["Th"]) @ camera.R.T + camera.T - pelvis
    size = camera.image_size or image_size
    motion = motion_from_arrays(
        {
            "global_orient": orient.as_rotvec(),
            "body_pose": body_pose,
            "betas": shapes,
            "transl": transl,
            "K": camera.K,
            "image_size": np.array(size),
            "fps": fps,
        }
    )
    try:
        return crop_motion(motion, _full_frame(image_size), image_size, image_size)
    except MotionError as err:
        raise PoseSourceError(f"EasyMocap camera: {err}") from None
