"""Fit SMPL to a clip's 2D keypoints: SMPLify-style, every frame at once, with torch autograd.

Objective, averaged over frames (there is no VPoser or GMM pose prior here):
- data: confidence-weighted Geman-McClure reprojection error, measured in reference pixels (the
  image scaled so its longer side is 1000 px) so the weights do not depend on the resolution;
- pose: L2 on body_pose (towards SMPL's rest pose) plus hinge terms: knees bend only backwards
  (rotation about +x), elbows only forwards (about -y left, +y right), and neither bends sideways
  (about z). Both ranges come from SMPL's rest frame, as in SMPLify's angle prior. The L2 weight
  starts `prior_anneal` times higher and decays over the Adam steps, so limbs settle coarsely
  before the details (this keeps a leg whose keypoints are missing from twisting);
- shape: L2 on the clip's one set of betas;
- smoothness: accelerations (second differences times fps^2, so the weights hold at any frame rate)
  of the global orientation (as rotation matrices, so a body turning past 180 degrees costs nothing
  extra), of body_pose, and of the translation.

Initialisation: depth per frame from similar triangles (focal length times a rest-pose segment
length over its 2D length, keeping the least foreshortened segments); in-plane roll from the
hip-to-shoulder direction; heading from a grid of yaw angles that covers both facing directions,
scored by the reprojection of torso and face keypoints and made consistent over time by dynamic
programming, so a turning body starts on the right side. Then Adam on orientation and translation
with the torso only, Adam on everything, and optionally L-BFGS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rodrigues

from models.body_model import NUM_POSE_PARAMS, BodyModel
from models.keypoints import KeypointLayout, body_keypoints, get_layout, keypoint_body, project_points
from models.motion import NUM_BETAS, Motion, motion_from_arrays

REFERENCE_SIDE = 1000.0  # residuals are measured in pixels of an image whose longer side is this
# SMPL body points (24 joints, then the face points) that stay put relative to the pelvis in most
# poses: they decide the initial orientation.
_TORSO_POINTS = frozenset((0, 1, 2, 3, 6, 9, 12, 13, 14, 15, 16, 17, 24, 25, 26, 27, 28))
# Segments (pairs of SMPL joints) whose 2D length gives the depth by similar triangles (the shoulders' width alone
# places a head-and-shoulders photo).
_DEPTH_SEGMENTS = ((16, 1), (17, 2), (16, 17), (1, 4), (2, 5), (4, 7), (5, 8), (16, 18), (17, 19), (18, 20), (19, 21))
_DEPTH_SEGMENTS_USED = 3  # median of this many least foreshortened segments per frame
_L_HIP, _R_HIP, _L_SHOULDER, _R_SHOULDER = 1, 2, 16, 17
# body_pose rows (SMPL joint - 1) and the hinge axes of the limb joints.
_KNEES = (3, 4)  # flex about +x
_ELBOWS = ((17, -1.0), (18, 1.0))  # (row, sign of the y rotation that flexes it)
_UPRIGHT = Rotation.from_rotvec([np.pi, 0.0, 0.0])  # SMPL's y-up body upright in an OpenCV camera


class FitConfig(BaseModel):
    """Iterations, learning rate and loss weights of `fit_smpl`."""

    model_config = ConfigDict(extra="forbid")

    orient_iterations: int = Field(40, ge=0, description="Adam steps on orientation and translation only")
    iterations: int = Field(250, ge=0, description="Adam steps on all parameters")
    lbfgs_iterations: int = Field(0, ge=0, description="L-BFGS iterations after Adam (0: none)")
    learning_rate: float = Field(0.03, gt=0)
    min_confidence: float = Field(0.1, ge=0, description="keypoints at or below this confidence are missing")
    robust_sigma: float = Field(60.0, gt=0, description="Geman-McClure scale, in reference pixels")
    pose_prior: float = Field(40.0, ge=0)
    prior_anneal: float = Field(10.0, ge=1, description="the pose prior starts this many times stronger and decays")
    joint_limit: float = Field(4000.0, ge=0)
    shape_prior: float = Field(200.0, ge=0)
    smooth_pose: float = Field(0.006, ge=0, description="on body_pose accelerations, (rad/s^2)^-2")
    smooth_orient: float = Field(0.006, ge=0, description="on rotation-matrix accelerations, (1/s^2)^-2")
    smooth_transl: float = Field(0.6, ge=0, description="on translation accelerations, (m/s^2)^-2")
    yaw_candidates: int = Field(24, ge=4, description="headings tried at initialisation")
    turn_cost: float = Field(50.0, ge=0, description="initialisation: cost per squared radian of heading change")


@dataclass(frozen=True)
class FitResult:
    """The fitted motion and per-frame diagnostics (NaN errors where a frame had no keypoint)."""

    motion: Motion
    reprojection_error_px: np.ndarray  # [T] mean pixel distance over the used keypoints
    initial_error_px: np.ndarray  # [T] the same at the initialisation
    keypoint_fraction: np.ndarray  # [T] share of the layout's keypoints that were used
    loss: float


@dataclass
class _Observations:
    """Validated inputs: keypoints with missing ones zeroed, per-frame intrinsics."""

    xy: np.ndarray  # [T,J,2]
    weight: np.ndarray  # [T,J] confidence, 0 where missing
    K: np.ndarray  # [T,3,3]
    image_size: tuple[int, int]


def fit_smpl(
    keypoints2d: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    image_size: tuple[int, int],
    body: BodyModel,
    layout: str = "coco17",
    config: FitConfig | None = None,
    device: str | torch.device = "cpu",
    *,
    fps: float,
) -> FitResult:
    """Fit SMPL to keypoints2d [T,J,3] (x, y, confidence; NaN or confidence 0 = missing).

    K [3,3] or [T,3,3] are the intrinsics of `image_size` (H, W); `layout` names the keypoints
    ("coco17" or "smpl24"); `body` must already be on `device`. Returns the motion (camera frame,
    `fps`, the observed keypoints attached) and per-frame diagnostics.
    """
    config = config or FitConfig()
    keypoint_layout = get_layout(layout)
    obs = _validated(keypoints2d, K, image_size, keypoint_layout, config.min_confidence)
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number in (0, 1000], got {fps!r}") from None
    if not 0 < fps <= 1000:
        raise ValueError(f"fps must be a number in (0, 1000], got {fps!r}")
    device = torch.device(device)
    body_device = body.faces.device
    if body_device.type != device.type or (device.index is not None and body_device != device):
        raise ValueError(f"body is on {body_device} but device={device}: move it with body.to({str(device)!r})")
    body = keypoint_body(body)  # the same joints and face points, without posing the whole mesh
    rest = _rest_points(body, keypoint_layout)
    global_orient, transl = _initial_placement(obs, rest, keypoint_layout, config)
    problem = _Problem(body, keypoint_layout, obs, config, device, fps)
    params = {
        "global_orient": torch.tensor(global_orient, dtype=torch.float32, device=device),
        "body_pose": torch.zeros(len(transl), NUM_POSE_PARAMS, device=device),
        "betas": torch.zeros(NUM_BETAS, device=device),
        "transl": torch.tensor(transl, dtype=torch.float32, device=device),
    }
    initial_error = problem.pixel_errors(params)
    torso = torch.tensor([source in _TORSO_POINTS for source in keypoint_layout.sources], device=device)
    problem.adam(params, ("global_orient", "transl"), config.orient_iterations, torso)
    problem.adam(params, tuple(params), config.iterations)
    if config.lbfgs_iterations:
        problem.lbfgs(params, config.lbfgs_iterations)
    with torch.no_grad():
        loss = float(problem.loss(params))
    if not np.isfinite(loss):
        raise RuntimeError(f"SMPL fit diverged (loss {loss}); lower FitConfig.learning_rate")
    keypoints = np.concatenate([obs.xy, obs.weight[..., None]], axis=-1)
    motion = motion_from_arrays(
        {
            **{name: value.detach().cpu().numpy() for name, value in params.items()},
            "K": obs.K,
            "image_size": np.array(obs.image_size),
            "fps": fps,
            "keypoints2d": keypoints,
        }
    )
    used = obs.weight > 0
    return FitResult(
        motion=motion,
        reprojection_error_px=problem.pixel_errors(params),
        initial_error_px=initial_error,
        keypoint_fraction=used.mean(axis=1),
        loss=loss,
    )


def _as_numpy(value: object, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array: {err}") from None


def _validated(
    keypoints2d: object, K: object, image_size: object, layout: KeypointLayout, min_confidence: float
) -> _Observations:
    """Check shapes and values, naming the argument; NaN/inf or low-confidence keypoints become missing."""
    keypoints = _as_numpy(keypoints2d, "keypoints2d")
    if keypoints.ndim != 3 or keypoints.shape[0] < 1 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints2d must have shape [T,J,3] (x, y, confidence) with T >= 1, got {list(keypoints.shape)}")
    frames, joints = keypoints.shape[:2]
    if joints != layout.num_joints:
        raise ValueError(f"keypoints2d has {joints} keypoints per frame but layout {layout.name!r} has {layout.num_joints}")
    size = np.asarray(image_size)
    if size.shape != (2,) or not np.all(size == np.round(size)) or np.any(size < 1):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    intrinsics = _as_numpy(K, "K")
    if intrinsics.shape == (3, 3):
        intrinsics = np.broadcast_to(intrinsics, (frames, 3, 3))
    if intrinsics.shape != (frames, 3, 3):
        raise ValueError(f"K must have shape [3,3] or [T,3,3] with T={frames}, got {list(intrinsics.shape)}")
    if not np.all(np.isfinite(intrinsics)) or np.any(intrinsics[:, 0, 0] <= 0) or np.any(intrinsics[:, 1, 1] <= 0):
        raise ValueError("K must be finite with positive focal lengths K[0,0] and K[1,1]")
    if not np.allclose(intrinsics[:, 2], [0.0, 0.0, 1.0]) or np.any(intrinsics[:, 1, 0] != 0):
        raise ValueError("K must be upper-triangular intrinsics with last row [0, 0, 1]")
    present = np.all(np.isfinite(keypoints), axis=-1) & (np.nan_to_num(keypoints[..., 2]) > min_confidence)
    if not present.any():
        raise ValueError(f"keypoints2d has no keypoint with confidence above {min_confidence} in any frame")
    return _Observations(
        xy=np.where(present[..., None], keypoints[..., :2], 0.0),
        weight=np.where(present, keypoints[..., 2], 0.0),
        K=np.array(intrinsics),
        image_size=(int(size[0]), int(size[1])),
    )


def _rest_points(body: BodyModel, layout: KeypointLayout) -> tuple[np.ndarray, np.ndarray]:
    """Layout keypoints [J,3] and SMPL joints [24,3] of the mean shape in its rest pose, no translation."""
    device = body.faces.device
    with torch.no_grad():
        output = body(
            torch.zeros(1, 3, device=device),
            torch.zeros(1, NUM_POSE_PARAMS, device=device),
            torch.zeros(NUM_BETAS, device=device),
            torch.zeros(1, 3, device=device),
        )
        points = body_keypoints(body, output, layout)
    return points[0].double().cpu().numpy(), output.joints[0].double().cpu().numpy()


def _layout_ids(layout: KeypointLayout, joints: tuple[int, ...]) -> list[int] | None:
    """Layout keypoint ids of SMPL body points `joints`, or None if the layout lacks one."""
    if not all(joint in layout.sources for joint in joints):
        return None
    return [layout.sources.index(joint) for joint in joints]


def _fill_gaps(values: np.ndarray, known: np.ndarray, default: float) -> np.ndarray:
    """Per-frame values with the unknown frames interpolated from the known ones (`default` if none)."""
    if not known.any():
        return np.full(len(values), default)
    frames = np.arange(len(values))
    return np.interp(frames, frames[known], values[known])


def _initial_depth(obs: _Observations, rest: tuple[np.ndarray, np.ndarray], layout: KeypointLayout) -> np.ndarray:
    """Pelvis depth [T] by similar triangles: focal * rest length / 2D length of the least foreshortened segments."""
    _, rest_joints = rest
    focal = np.sqrt(obs.K[:, 0, 0] * obs.K[:, 1, 1])
    estimates = []
    for segment in _DEPTH_SEGMENTS:
        ids = _layout_ids(layout, segment)
        if ids is None:
            continue
        length_2d = np.linalg.norm(obs.xy[:, ids[0]] - obs.xy[:, ids[1]], axis=-1)
        length_3d = np.linalg.norm(rest_joints[segment[0]] - rest_joints[segment[1]])
        visible = (obs.weight[:, ids[0]] > 0) & (obs.weight[:, ids[1]] > 0) & (length_2d > 1.0)
        estimates.append(np.where(visible, focal * length_3d / np.maximum(length_2d, 1.0), np.inf))
    per_segment = np.sort(np.stack(estimates, axis=1), axis=1)[:, :_DEPTH_SEGMENTS_USED]
    counts = np.isfinite(per_segment).sum(axis=1)
    known = counts > 0
    if not known.any():
        raise ValueError(
            "keypoints2d: no frame shows a limb or torso segment with both ends visible; cannot place the body"
        )
    depth = np.array([np.median(row[:count]) if count else np.nan for row, count in zip(per_segment, counts)])
    return _fill_gaps(depth, known, default=0.0)


def _initial_roll(obs: _Observations, layout: KeypointLayout) -> np.ndarray:
    """In-plane angle [T] of the hip-to-shoulder direction (0 = upright), from whichever sides are visible."""
    hips, shoulders = _layout_ids(layout, (_L_HIP, _R_HIP)), _layout_ids(layout, (_L_SHOULDER, _R_SHOULDER))
    if hips is None or shoulders is None:
        return np.zeros(len(obs.xy))

    def centre(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        weight = (obs.weight[:, ids] > 0).astype(np.float64)
        total = weight.sum(axis=1)
        return (obs.xy[:, ids] * weight[..., None]).sum(axis=1) / np.maximum(total, 1)[:, None], total > 0

    (hip, hip_seen), (shoulder, shoulder_seen) = centre(hips), centre(shoulders)
    up = shoulder - hip
    roll = np.arctan2(up[:, 0], -up[:, 1])
    known = hip_seen & shoulder_seen & (np.linalg.norm(up, axis=1) > 1.0)
    roll[known] = np.unwrap(roll[known])
    return _fill_gaps(roll, known, default=0.0)


def _initial_placement(
    obs: _Observations, rest: tuple[np.ndarray, np.ndarray], layout: KeypointLayout, config: FitConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Initial global_orient [T,3] (axis-angle) and transl [T,3] of the rest-pose body."""
    rest_points, rest_joints = rest
    pelvis = rest_joints[0]
    depth = _initial_depth(obs, rest, layout)
    roll = _initial_roll(obs, layout)
    yaws = 2 * np.pi * np.arange(config.yaw_candidates) / config.yaw_candidates
    frames, candidates = len(depth), len(yaws)
    # Rotations [T,N] = roll about the camera axis * upright * heading about the body's up axis.
    rolls = Rotation.from_rotvec(np.outer(np.repeat(roll, candidates), [0.0, 0.0, 1.0]))
    headings = Rotation.from_rotvec(np.outer(np.tile(yaws, frames), [0.0, 1.0, 0.0]))
    rotations = rolls * _UPRIGHT * headings
    points = np.einsum("tnij,kj->tnki", rotations.as_matrix().reshape(frames, candidates, 3, 3), rest_points - pelvis)
    torso = np.array([source in _TORSO_POINTS for source in layout.sources])
    weight = obs.weight * torso
    centre, errors = _place(points, depth, obs, weight, config.robust_sigma)
    path = _smoothest_path(errors, yaws, config.turn_cost)
    chosen = np.arange(frames)
    global_orient = rotations.as_rotvec().reshape(frames, candidates, 3)[chosen, path]
    placed = weight.sum(axis=1) > 0  # frames without torso keypoints take their neighbours' position
    transl = np.stack([_fill_gaps(axis, placed, 0.0) for axis in (centre[chosen, path] - pelvis).T], axis=1)
    return global_orient, transl


def _place(
    points: np.ndarray, depth: np.ndarray, obs: _Observations, weight: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pelvis positions [T,N,3] that centre each candidate's points on the keypoints, and their robust errors [T,N]."""
    K = obs.K[:, None, None]
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    z = points[..., 2] + depth[:, None, None]
    u, v = obs.xy[:, None, :, 0], obs.xy[:, None, :, 1]
    total = np.maximum(weight.sum(axis=1), 1e-9)[:, None]
    w = weight[:, None]
    # With the depth fixed, each point's projection is linear in the pelvis x, y: average the solutions.
    offset_x = ((u - cx) * z / fx - points[..., 0]) * w
    offset_y = ((v - cy) * z / fy - points[..., 1]) * w
    centre = np.stack([offset_x.sum(-1) / total, offset_y.sum(-1) / total, np.repeat(depth[:, None], points.shape[1], 1)], -1)
    camera = points + centre[:, :, None]
    image = np.einsum("tij,tnkj->tnki", obs.K, camera)
    pixels = image[..., :2] / np.maximum(image[..., 2:], 1e-3)
    unit = REFERENCE_SIDE / max(obs.image_size)
    squared = np.square((pixels - obs.xy[:, None]) * unit).sum(-1)
    robust = sigma**2 * squared / (squared + sigma**2)
    return centre, (robust * w).sum(-1) / total


def _smoothest_path(errors: np.ndarray, yaws: np.ndarray, turn_cost: float) -> np.ndarray:
    """Candidate per frame [T] minimising the summed errors plus turn_cost * heading change^2 (Viterbi)."""
    step = np.abs(yaws[:, None] - yaws[None, :])
    transition = turn_cost * np.square(np.minimum(step, 2 * np.pi - step))
    cost = errors[0].copy()
    back = np.zeros(errors.shape, dtype=np.int64)
    for t in range(1, len(errors)):
        total = cost[:, None] + transition
        back[t] = np.argmin(total, axis=0)
        cost = total[back[t], np.arange(len(yaws))] + errors[t]
    path = np.empty(len(errors), dtype=np.int64)
    path[-1] = int(np.argmin(cost))
    for t in range(len(errors) - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


class _Problem:
    """The objective on one clip, and the optimisers that minimise it in place."""

    def __init__(
        self,
        body: BodyModel,
        layout: KeypointLayout,
        obs: _Observations,
        config: FitConfig,
        device: torch.device,
        fps: float,
    ) -> None:
        self.body, self.layout, self.config, self.fps = body, layout, config, fps
        self.xy = torch.tensor(obs.xy, dtype=torch.float32, device=device)
        self.weight = torch.tensor(obs.weight, dtype=torch.float32, device=device)
        self.K = torch.tensor(obs.K, dtype=torch.float32, device=device)
        self.unit = REFERENCE_SIDE / max(obs.image_size)

    def _pixels(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self.body(params["global_orient"], params["body_pose"], params["betas"], params["transl"])
        return project_points(body_keypoints(self.body, output, self.layout), self.K)

    def loss(
        self, params: dict[str, torch.Tensor], keypoint_mask: torch.Tensor | None = None, prior_scale: float = 1.0
    ) -> torch.Tensor:
        """The objective, averaged over frames; `keypoint_mask` [J] restricts the data term, `prior_scale` scales the pose prior."""
        c = self.config
        weight = self.weight if keypoint_mask is None else self.weight * keypoint_mask
        squared = ((self._pixels(params) - self.xy) * self.unit).square().sum(-1)
        sigma2 = c.robust_sigma**2
        data = (weight * sigma2 * squared / (squared + sigma2)).sum(1).mean()
        pose = params["body_pose"].view(-1, NUM_POSE_PARAMS // 3, 3)
        limits = torch.relu(-pose[:, _KNEES, 0]).square().sum(1) + pose[:, _KNEES, 2].square().sum(1)
        for row, flex_sign in _ELBOWS:
            limits = limits + torch.relu(-flex_sign * pose[:, row, 1]).square() + pose[:, row, 2].square()
        rotations = batch_rodrigues(params["global_orient"])
        smooth = (
            c.smooth_orient * _acceleration(rotations.flatten(1), self.fps)
            + c.smooth_pose * _acceleration(params["body_pose"], self.fps)
            + c.smooth_transl * _acceleration(params["transl"], self.fps)
        )
        return (
            data
            + prior_scale * c.pose_prior * pose.square().sum((1, 2)).mean()
            + c.joint_limit * limits.mean()
            + c.shape_prior * params["betas"].square().sum()
            + smooth
        )

    def adam(
        self,
        params: dict[str, torch.Tensor],
        names: tuple[str, ...],
        iterations: int,
        keypoint_mask: torch.Tensor | None = None,
    ) -> None:
        """Adam on params[names] for `iterations` steps, the pose prior decaying from `prior_anneal` times to once its weight."""
        if iterations == 0:
            return
        trained = [params[name].requires_grad_(True) for name in names]
        optimizer = torch.optim.Adam(trained, lr=self.config.learning_rate)
        for step in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            prior_scale = self.config.prior_anneal ** (1.0 - step / max(iterations - 1, 1))
            self.loss(params, keypoint_mask, prior_scale).backward()
            optimizer.step()
        for tensor in trained:
            tensor.requires_grad_(False)

    def lbfgs(self, params: dict[str, torch.Tensor], iterations: int) -> None:
        """L-BFGS with a strong-Wolfe line search on every parameter."""
        trained = [tensor.requires_grad_(True) for tensor in params.values()]
        optimizer = torch.optim.LBFGS(trained, max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(params)
            loss.backward()
            return loss

        optimizer.step(closure)
        for tensor in trained:
            tensor.requires_grad_(False)

    def pixel_errors(self, params: dict[str, torch.Tensor]) -> np.ndarray:
        """Mean pixel distance [T] between projected and observed keypoints over the used ones (NaN if none)."""
        with torch.no_grad():
            distance = (self._pixels(params) - self.xy).norm(dim=-1)
        used = (self.weight > 0).float()
        count = used.sum(1)
        mean = (distance * used).sum(1) / count.clamp(min=1)
        return torch.where(count > 0, mean, torch.nan).cpu().numpy().astype(np.float64)


def _acceleration(values: torch.Tensor, fps: float) -> torch.Tensor:
    """Mean over frames of the squared acceleration (per second^2) of values [T,D]; 0 for fewer than 3 frames."""
    if values.shape[0] < 3:
        return values.new_zeros(())
    return ((values[2:] - 2 * values[1:-1] + values[:-2]) * fps**2).square().sum(1).mean()
