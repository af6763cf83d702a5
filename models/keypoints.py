"""2D keypoint layouts (COCO-17, SMPL-24) and where each keypoint sits on the SMPL body.

A layout's `sources` index "SMPL body points": the 24 SMPL joints followed by the five face
keypoints smplx's VertexJointSelector appends (nose, right eye, left eye, right ear, left ear; mesh
vertices, see `face_vertex_ids`). COCO-17 takes its limbs from SMPL joints and its face from those
vertices. SMPL's hip joints sit inside the pelvis, a little higher and closer together than the hip
keypoints 2D estimators are trained on; the fit takes that as a small systematic offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.body_model import NUM_JOINTS, BodyModel, BodyOutput
from models.motion import Motion
from models.smpl_template import SMPL_JOINT_NAMES, SMPL_PARENTS

FACE_POINT_NAMES = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")  # smplx's extra-joint order
_BODY_POINT_NAMES = SMPL_JOINT_NAMES + FACE_POINT_NAMES
_SMPLX_FACE_KEYS = ("nose", "reye", "leye", "rear", "lear")  # smplx's vertex_ids keys, FACE_POINT_NAMES order


@dataclass(frozen=True)
class KeypointLayout:
    """Names, limbs (pairs of keypoint ids) and SMPL body point of each keypoint."""

    name: str
    names: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    sources: tuple[int, ...]  # index into the body points (24 SMPL joints + 5 face points)

    @property
    def num_joints(self) -> int:
        return len(self.names)


_COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

_COCO17_LIMBS = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)  # fmt: skip

COCO17 = KeypointLayout(
    name="coco17",
    names=_COCO17_NAMES,
    limbs=_COCO17_LIMBS,
    sources=tuple(_BODY_POINT_NAMES.index(name) for name in _COCO17_NAMES),
)
SMPL24 = KeypointLayout(
    name="smpl24",
    names=SMPL_JOINT_NAMES,
    limbs=tuple((parent, child) for child, parent in enumerate(SMPL_PARENTS) if parent >= 0),
    sources=tuple(range(NUM_JOINTS)),
)
LAYOUTS: dict[str, KeypointLayout] = {layout.name: layout for layout in (COCO17, SMPL24)}


def get_layout(name: str) -> KeypointLayout:
    """The layout called `name` ("coco17" or "smpl24")."""
    if name not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {name!r}")
    return LAYOUTS[name]


def face_vertex_ids(body: BodyModel) -> torch.Tensor:
    """Vertex ids [5] of the face points (FACE_POINT_NAMES order) that smplx appends after the joints."""
    return body.smpl.vertex_joint_selector.extra_joints_idxs[: len(FACE_POINT_NAMES)]


def keypoint_body(body: BodyModel) -> BodyModel:
    """A body model whose only vertices are `body`'s 24 rest joints and 5 face points.

    Its joints and face points equal `body`'s for every pose, shape and translation (each rest joint
    is a vertex skinned to its own joint alone, without pose blend shapes, the regressor picks it
    back; the face points keep their rows), at a fraction of the cost of posing the whole mesh:
    what fitting to keypoints needs.
    """
    smpl = body.smpl
    face = face_vertex_ids(body).cpu()
    v_template, shapedirs = smpl.v_template.cpu(), smpl.shapedirs.cpu()
    regressor = smpl.J_regressor.cpu()
    posedirs = smpl.posedirs.cpu().T.reshape(body.num_vertices, 3, -1)
    weights = smpl.lbs_weights.cpu()
    parents = smpl.parents.cpu()
    arrays = {
        "v_template": torch.cat([regressor @ v_template, v_template[face]]),
        "shapedirs": torch.cat([torch.einsum("jv,vcb->jcb", regressor, shapedirs), shapedirs[face]]),
        "posedirs": torch.cat([posedirs.new_zeros(NUM_JOINTS, *posedirs.shape[1:]), posedirs[face]]),
        "J_regressor": torch.cat([torch.eye(NUM_JOINTS), torch.zeros(NUM_JOINTS, len(face))], dim=1),
        "weights": torch.cat([torch.eye(NUM_JOINTS), weights[face]]),
        "kintree_table": torch.stack([parents, torch.arange(NUM_JOINTS)]),
        "f": torch.tensor([[0, 1, 2]]),
    }
    arrays = {key: value.numpy() for key, value in arrays.items()}
    ids = dict(zip(_SMPLX_FACE_KEYS, range(NUM_JOINTS, NUM_JOINTS + len(face))))
    reduced = BodyModel(arrays, np.zeros((3, 2)), arrays["f"], ids, name="keypoint body")
    return reduced.to(body.faces.device)


def body_keypoints(body: BodyModel, output: BodyOutput, layout: KeypointLayout) -> torch.Tensor:
    """The layout's keypoints [T,J,3] on a posed body (camera frame, metres); differentiable."""
    face = output.vertices[:, face_vertex_ids(body)]
    points = torch.cat([output.joints, face], dim=1)
    return points[:, list(layout.sources)]


def motion_keypoints2d(body: BodyModel, motion: Motion, layout: KeypointLayout) -> np.ndarray:
    """The layout's keypoints of a motion's posed body projected with its intrinsics: pixels [T,J,2]."""
    device = body.faces.device
    with torch.no_grad():
        output = body(motion.global_orient, motion.body_pose, motion.betas, motion.transl)
        K = torch.as_tensor(motion.K, device=device)
        return project_points(body_keypoints(body, output, layout), K).double().cpu().numpy()


def project_points(points: torch.Tensor, K: torch.Tensor, min_depth: float = 1e-3) -> torch.Tensor:
    """Pixel coordinates [T,J,2] of camera points [T,J,3] under intrinsics [T,3,3] or [3,3].

    Depth is clamped to `min_depth` so points at or behind the camera stay finite.
    """
    image = points @ K.transpose(-1, -2)
    return image[..., :2] / image[..., 2:].clamp(min=min_depth)


def rescale_keypoints(keypoints: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Keypoints [...,J,3] in pixels of `from_size` (H, W) moved to `to_size` (confidence kept).

    Pixel centres stay at integers, as in `models.rasterizer.scale_intrinsics`.
    """
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    out = np.array(keypoints, dtype=np.float64)
    out[..., :2] = (out[..., :2] + 0.5) * scale - 0.5
    return out
