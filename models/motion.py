"""The motion contract: a SMPL body sequence in front of a pinhole camera (DESIGN.md, "Motion file")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Guards against hostile or accidental huge inputs; far above any real clip.
MAX_MOTION_FRAMES = 100_000
MAX_IMAGE_SIDE = 8192
NUM_BODY_JOINTS = 23
NUM_BETAS = 10

FLOAT32_MAX = float(np.finfo(np.float32).max)


class MotionError(ValueError):
    """A motion file or mapping that breaks the contract; the message names the key."""


@dataclass(frozen=True)
class Motion:
    """A validated motion with every per-frame key expanded to `num_frames` rows (float32)."""

    global_orient: np.ndarray  # [T,3]
    body_pose: np.ndarray  # [T,69]
    betas: np.ndarray  # [T,10]
    transl: np.ndarray  # [T,3]
    K: np.ndarray  # [T,3,3]
    image_size: tuple[int, int]  # (H, W) the intrinsics refer to
    fps: float
    keypoints2d: np.ndarray | None = None  # [T,J,3]

    @property
    def num_frames(self) -> int:
        return self.global_orient.shape[0]

    def slice(self, start: int, stop: int) -> Motion:
        """Frames [start, stop) as a new motion."""
        if not 0 <= start < stop <= self.num_frames:
            raise MotionError(f"frames [{start}, {stop}) are outside the motion's {self.num_frames} frames")
        return self._take(slice(start, stop))

    def held(self, num_frames: int) -> Motion:
        """The first `num_frames` frames, the last pose held (repeated) past the motion's end."""
        if num_frames < 1:
            raise MotionError(f"num_frames: must be >= 1, got {num_frames}")
        return self._take(np.minimum(np.arange(num_frames), self.num_frames - 1))

    def _take(self, frames: slice | np.ndarray) -> Motion:
        return Motion(
            global_orient=self.global_orient[frames],
            body_pose=self.body_pose[frames],
            betas=self.betas[frames],
            transl=self.transl[frames],
            K=self.K[frames],
            image_size=self.image_size,
            fps=self.fps,
            keypoints2d=None if self.keypoints2d is None else self.keypoints2d[frames],
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The motion-file keys, ready for `np.savez` or JSON."""
        arrays = {
            "global_orient": self.global_orient,
            "body_pose": self.body_pose,
            "betas": self.betas,
            "transl": self.transl,
            "K": self.K,
            "image_size": np.asarray(self.image_size, dtype=np.int64),
            "fps": np.asarray(self.fps, dtype=np.float64),
        }
        if self.keypoints2d is not None:
            arrays["keypoints2d"] = self.keypoints2d
        return arrays


def _array(data: Mapping[str, object], key: str) -> np.ndarray:
    if key not in data:
        raise MotionError(f"motion is missing key '{key}'")
    try:
        array = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MotionError(f"motion key '{key}' is not a numeric array: {err}") from None
    if not np.all(np.isfinite(array)):
        raise MotionError(f"motion key '{key}' contains NaN or inf")
    if array.size and np.abs(array).max() > FLOAT32_MAX:  # finite here, inf once stored as float32
        raise MotionError(
            f"motion key '{key}' holds {np.abs(array).max():g}, beyond float32's range (at most {FLOAT32_MAX:g})"
        )
    return array


def _per_frame(data: Mapping[str, object], key: str, tail: tuple[int, ...]) -> np.ndarray:
    array = _array(data, key)
    if array.ndim != 1 + len(tail) or array.shape[1:] != tail:
        expected = "[T," + ",".join(map(str, tail)) + "]"
        raise MotionError(f"motion key '{key}' must have shape {expected}, got {list(array.shape)}")
    return array


def _per_frame_or_shared(data: Mapping[str, object], key: str, tail: tuple[int, ...], num_frames: int) -> np.ndarray:
    """A key that may be given once for the clip or once per frame, expanded to per frame."""
    array = _array(data, key)
    if array.shape == tail:
        return np.broadcast_to(array, (num_frames, *tail)).copy()
    if array.shape == (num_frames, *tail):
        return array
    dims = ",".join(map(str, tail))
    raise MotionError(
        f"motion key '{key}' must have shape [{dims}] or [T,{dims}] with T={num_frames}, got {list(array.shape)}"
    )


def _check_intrinsics(K: np.ndarray) -> None:
    if np.any(K[:, 0, 0] <= 0) or np.any(K[:, 1, 1] <= 0):
        raise MotionError("motion key 'K' must have positive focal lengths K[0,0] and K[1,1]")
    if not np.allclose(K[:, 2], [0.0, 0.0, 1.0]) or np.any(K[:, 1, 0] != 0):
        raise MotionError("motion key 'K' must be an upper-triangular intrinsics matrix with last row [0, 0, 1]")


def _image_size(data: Mapping[str, object]) -> tuple[int, int]:
    size = _array(data, "image_size")
    if size.shape != (2,) or np.any(size != np.round(size)):
        raise MotionError(f"motion key 'image_size' must be two integers [H, W], got {size.tolist()}")
    height, width = int(size[0]), int(size[1])
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise MotionError(
            f"motion key 'image_size' must be within 1..{MAX_IMAGE_SIDE} per side, got [{height}, {width}]"
        )
    return height, width


def _fps(data: Mapping[str, object]) -> float:
    fps = _array(data, "fps")
    if fps.size != 1 or not 0 < float(fps.reshape(-1)[0]) <= 1000:
        raise MotionError(f"motion key 'fps' must be one number in (0, 1000], got {fps.tolist()}")
    return float(fps.reshape(-1)[0])


def _keypoints(data: Mapping[str, object], num_frames: int) -> np.ndarray | None:
    if data.get("keypoints2d") is None:
        return None
    keypoints = _array(data, "keypoints2d")
    if keypoints.ndim != 3 or keypoints.shape[0] != num_frames or keypoints.shape[2] != 3:
        raise MotionError(
            f"motion key 'keypoints2d' must have shape [T,J,3] with T={num_frames}, got {list(keypoints.shape)}"
        )
    return keypoints.astype(np.float32)


def motion_from_arrays(data: Mapping[str, object]) -> Motion:
    """Validate a motion mapping (npz contents or parsed JSON) and return a `Motion`.

    Raises:
        MotionError: naming the offending key and what was expected.
    """
    global_orient = _per_frame(data, "global_orient", (3,))
    num_frames = global_orient.shape[0]
    if num_frames == 0:
        raise MotionError("motion key 'global_orient' has zero frames; a motion needs at least one")
    if num_frames > MAX_MOTION_FRAMES:
        raise MotionError(f"motion has {num_frames} frames; at most {MAX_MOTION_FRAMES} are accepted")
    body_pose = _per_frame(data, "body_pose", (NUM_BODY_JOINTS * 3,))
    transl = _per_frame(data, "transl", (3,))
    for key, array in (("body_pose", body_pose), ("transl", transl)):
        if array.shape[0] != num_frames:
            raise MotionError(
                f"motion key '{key}' has {array.shape[0]} frames but 'global_orient' has {num_frames}"
            )
    betas = _per_frame_or_shared(data, "betas", (NUM_BETAS,), num_frames)
    K = _per_frame_or_shared(data, "K", (3, 3), num_frames)
    _check_intrinsics(K)
    return Motion(
        global_orient=global_orient.astype(np.float32),
        body_pose=body_pose.astype(np.float32),
        betas=betas.astype(np.float32),
        transl=transl.astype(np.float32),
        K=K.astype(np.float32),
        image_size=_image_size(data),
        fps=_fps(data),
        keypoints2d=_keypoints(data, num_frames),
    )
