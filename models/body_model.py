"""smplx's SMPL body model, batched over the frames of a motion, with the body's UV layout.

`load_body_model()` builds it from the generated template (models/smpl_template.py) or from a
user's real SMPL model converted to `.npz`. Pickles are never loaded.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import smplx
import torch
from smplx.utils import Struct

from models.smpl_template import NUM_BETAS, SMPL_SIZE_DETAIL, generate_smpl_template

NUM_JOINTS = 24
NUM_POSE_PARAMS = 3 * (NUM_JOINTS - 1)
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)  # posedirs: one blend shape per rotation-matrix entry
SMPL_NUM_VERTICES = 6890  # smplx's default extra-joint vertex ids are valid for this topology
MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
_FACE_KEYPOINTS = ("nose", "reye", "leye", "rear", "lear")
_MODEL_HINT = (
    f"expected an .npz in SMPL format with keys {', '.join(MODEL_KEYS)}; "
    "leave model_path unset to use the generated template"
)
_UV_HINT = (
    "pass uv_path: SMPL's UV .obj (`vt u v` lines and `f v/vt v/vt v/vt` faces) "
    "or an .npz with vt [Nvt,2] and ft [F,3]"
)

TensorLike = torch.Tensor | np.ndarray


@dataclass
class BodyOutput:
    """Posed body: vertices [T,V,3] and the 24 SMPL joints [T,24,3], in the camera frame."""

    vertices: torch.Tensor
    joints: torch.Tensor


class BodyModel(torch.nn.Module):
    """smplx.SMPL evaluated in chunks of frames, plus faces and UV buffers."""

    faces: torch.Tensor
    uv_coords: torch.Tensor
    uv_faces: torch.Tensor

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        vt: np.ndarray,
        ft: np.ndarray,
        vertex_ids: dict[str, int] | None = None,
        name: str = "SMPL",
    ) -> None:
        """`arrays` holds SMPL's keys (validated); `vertex_ids` the face keypoints, or None for smplx's SMPL ids."""
        super().__init__()
        selector = {} if vertex_ids is None else {"use_hands": False, "use_feet_keypoints": False}
        # smplx prints a warning for 10-component shape spaces (SMPL's own); keep logs clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                model_path=name,
                data_struct=Struct(**arrays),
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
                num_betas=NUM_BETAS,
                vertex_ids=vertex_ids,
                **selector,
            )
        self.num_vertices = int(arrays["v_template"].shape[0])
        self.register_buffer("faces", torch.as_tensor(np.asarray(arrays["f"], dtype=np.int64)))
        self.register_buffer("uv_coords", torch.as_tensor(np.asarray(vt, dtype=np.float32)))
        self.register_buffer("uv_faces", torch.as_tensor(np.asarray(ft, dtype=np.int64)))

    def forward(
        self,
        global_orient: TensorLike,
        body_pose: TensorLike,
        betas: TensorLike,
        transl: TensorLike,
        chunk_size: int = 256,
    ) -> BodyOutput:
        """Pose T frames: global_orient [T,3], body_pose [T,69] (axis-angle), betas [10] or [T,10], transl [T,3].

        Runs on the module's device in float32, `chunk_size` frames at a time. Gradients flow
        unless the caller disables them.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        inputs = self._validated(global_orient, body_pose, betas, transl)
        chunks = [
            self.smpl(
                global_orient=inputs["global_orient"][start : start + chunk_size],
                body_pose=inputs["body_pose"][start : start + chunk_size],
                betas=inputs["betas"][start : start + chunk_size],
                transl=inputs["transl"][start : start + chunk_size],
            )
            for start in range(0, inputs["global_orient"].shape[0], chunk_size)
        ]
        return BodyOutput(
            vertices=torch.cat([c.vertices for c in chunks]),
            joints=torch.cat([c.joints[:, :NUM_JOINTS] for c in chunks]),
        )

    def _validated(self, global_orient, body_pose, betas, transl) -> dict[str, torch.Tensor]:
        """Float32 tensors on the module's device with checked shapes; betas broadcast to [T,10]."""
        device = self.faces.device
        tensors = {
            name: torch.as_tensor(value).to(device=device, dtype=torch.float32)
            for name, value in (
                ("global_orient", global_orient),
                ("body_pose", body_pose),
                ("betas", betas),
                ("transl", transl),
            )
        }
        go = tensors["global_orient"]
        if go.ndim != 2 or go.shape[1] != 3 or go.shape[0] < 1:
            raise ValueError(f"global_orient must have shape [T,3] with T >= 1, got {list(go.shape)}")
        frames = go.shape[0]
        for name, width in (("body_pose", NUM_POSE_PARAMS), ("transl", 3)):
            if tuple(tensors[name].shape) != (frames, width):
                raise ValueError(
                    f"{name} must have shape [T,{width}] with T={frames} (from global_orient), "
                    f"got {list(tensors[name].shape)}"
                )
        shape = tensors["betas"]
        if tuple(shape.shape) == (NUM_BETAS,):
            shape = shape.expand(frames, NUM_BETAS)
        elif tuple(shape.shape) != (frames, NUM_BETAS):
            raise ValueError(
                f"betas must have shape [{NUM_BETAS}] or [T,{NUM_BETAS}] with T={frames}, got {list(shape.shape)}"
            )
        tensors["betas"] = shape
        return tensors


def load_body_model(
    model_path: str | Path | None = None,
    uv_path: str | Path | None = None,
    detail: int | None = None,
) -> BodyModel:
    """The generated template (model_path None) or a real SMPL model from an `.npz` plus its UVs.

    `detail` sets the template's tessellation (default SMPL_SIZE_DETAIL); a real model needs
    `uv_path`: SMPL's UV `.obj` or an `.npz` with `vt` and `ft`.
    """
    if model_path is None:
        if uv_path is not None:
            raise ValueError(f"uv_path={uv_path} is only used with model_path: the generated template has its own UVs")
        arrays = generate_smpl_template(SMPL_SIZE_DETAIL if detail is None else detail)
        vertex_ids = dict(zip(_FACE_KEYPOINTS, arrays["face_keypoint_vertex_ids"].tolist()))
        return BodyModel(arrays, arrays["vt"], arrays["ft"], vertex_ids, name="generated SMPL template")
    if detail is not None:
        raise ValueError(f"detail={detail} only applies to the generated template, not to model_path={model_path}")
    path = Path(model_path)
    arrays = _load_model_npz(path)
    if uv_path is None:
        raise ValueError(f"a real SMPL model ({path}) needs its UV layout: {_UV_HINT}")
    vt, ft = _load_uv(Path(uv_path), arrays["f"])
    return BodyModel(arrays, vt, ft, _file_vertex_ids(arrays, path), name=str(path))


def _load_model_npz(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".pkl":
        raise ValueError(
            f"SMPL model {path} is a pickle, and pickles are not loaded: convert it to an .npz with keys "
            f"{', '.join(MODEL_KEYS)} (J_regressor dense)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"SMPL model file not found: {path} ({_MODEL_HINT})")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"SMPL model {path} is not an .npz ({_MODEL_HINT})")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    _check_model(arrays, path)
    return arrays


def _check_model(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """Raise ValueError naming the first missing or ill-shaped key."""
    for key in MODEL_KEYS:
        if key not in arrays:
            raise ValueError(f"SMPL model {path} has no key {key!r} ({_MODEL_HINT})")
    template = arrays["v_template"]
    num_vertices = template.shape[0] if template.ndim == 2 and template.shape[0] > 0 else None
    patterns = {
        "v_template": ("[V,3]", (num_vertices, 3)),
        "f": ("[F,3]", (None, 3)),
        "shapedirs": (f"[V,3,>={NUM_BETAS}]", (num_vertices, 3, None)),
        "posedirs": (f"[V,3,{NUM_POSE_BASIS}]", (num_vertices, 3, NUM_POSE_BASIS)),
        "J_regressor": (f"[{NUM_JOINTS},V] (dense)", (NUM_JOINTS, num_vertices)),
        "kintree_table": (f"[2,{NUM_JOINTS}]", (2, NUM_JOINTS)),
        "weights": (f"[V,{NUM_JOINTS}]", (num_vertices, NUM_JOINTS)),
    }
    for key, (description, pattern) in patterns.items():
        shape = arrays[key].shape
        matches = len(shape) == len(pattern) and all(p is None or s == p for s, p in zip(shape, pattern))
        if not matches or num_vertices is None or (key == "shapedirs" and shape[-1] < NUM_BETAS):
            raise ValueError(
                f"SMPL model {path}: {key} must have shape {description} (V={num_vertices} from v_template), "
                f"got {list(shape)}"
            )
    faces = arrays["f"]
    if not np.issubdtype(faces.dtype, np.integer) or len(faces) == 0 or faces.min() < 0 or faces.max() >= num_vertices:
        raise ValueError(f"SMPL model {path}: f must hold integer vertex ids in [0, {num_vertices})")


def _file_vertex_ids(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, int] | None:
    """Face keypoint vertices from the file, or None (smplx's SMPL ids) for SMPL's own topology."""
    num_vertices = arrays["v_template"].shape[0]
    ids = arrays.get("face_keypoint_vertex_ids")
    if ids is None:
        if num_vertices == SMPL_NUM_VERTICES:
            return None
        raise ValueError(
            f"SMPL model {path} has {num_vertices} vertices, not SMPL's {SMPL_NUM_VERTICES}: add "
            f"face_keypoint_vertex_ids [5] (vertex ids of {', '.join(_FACE_KEYPOINTS)})"
        )
    ids = np.asarray(ids)
    if ids.shape != (5,) or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_vertices:
        raise ValueError(
            f"SMPL model {path}: face_keypoint_vertex_ids must be 5 vertex ids in [0, {num_vertices}), got {ids}"
        )
    return dict(zip(_FACE_KEYPOINTS, ids.tolist()))


def _load_uv(path: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vt [Nvt,2] and ft [F,3] from an .obj or .npz, checked against the model's faces."""
    if not path.is_file():
        raise FileNotFoundError(f"SMPL UV file not found: {path} ({_UV_HINT})")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        vt, ft = _parse_obj_uv(path, faces)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            for key in ("vt", "ft"):
                if key not in npz.files:
                    raise ValueError(f"UV file {path} has no key {key!r} ({_UV_HINT})")
            vt, ft = npz["vt"], npz["ft"]
    else:
        raise ValueError(f"UV file {path} must be an .obj or an .npz ({_UV_HINT})")
    if vt.ndim != 2 or vt.shape[1] != 2 or len(vt) < 1:
        raise ValueError(f"UV file {path}: vt must have shape [Nvt,2], got {list(vt.shape)}")
    if ft.shape != faces.shape:
        raise ValueError(
            f"UV file {path}: ft must have shape {list(faces.shape)} like the model's f, got {list(ft.shape)}"
        )
    if not np.issubdtype(ft.dtype, np.integer) or ft.min() < 0 or ft.max() >= len(vt):
        raise ValueError(f"UV file {path}: ft must hold integer vt ids in [0, {len(vt)})")
    return vt.astype(np.float32), ft.astype(np.int64)


def _parse_obj_uv(path: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse `vt` lines and triangle `f v/vt ...` lines (1-based or negative ids) of a Wavefront OBJ."""
    vt: list[tuple[float, float]] = []
    face_v: list[list[int]] = []
    face_vt: list[list[int]] = []
    num_v = 0
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "v":
            num_v += 1
        elif fields[0] == "vt":
            vt.append((float(fields[1]), float(fields[2])))
        elif fields[0] == "f":
            corners = [field.split("/") for field in fields[1:]]
            if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                raise ValueError(f"UV file {path} line {line_no}: faces must be triangles `f v/vt v/vt v/vt`")
            face_v.append([_obj_index(int(c[0]), num_v) for c in corners])
            face_vt.append([_obj_index(int(c[1]), len(vt)) for c in corners])
    ft = np.array(face_vt, dtype=np.int64).reshape(-1, 3)
    if len(ft) != len(faces):
        raise ValueError(f"UV file {path} has {len(ft)} faces but the model has {len(faces)}")
    if not np.array_equal(np.array(face_v, dtype=np.int64).reshape(-1, 3), faces):
        raise ValueError(f"UV file {path}: its faces' vertex ids differ from the model's f (same order expected)")
    return np.array(vt, dtype=np.float64).reshape(-1, 2), ft


def _obj_index(index: int, count: int) -> int:
    """0-based id of a 1-based (or negative, relative) OBJ index."""
    return index - 1 if index > 0 else count + index
