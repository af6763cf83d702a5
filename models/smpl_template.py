"""A generated SMPL-format humanoid, so that tests and the demo need no licensed SMPL file.

The body is a set of closed tubes (torso, head with neck, arms with hands, legs, feet), each swept
along a polyline axis through SMPL's rest joints with elliptical cross-sections. Every joint lies on
a tube axis and has a ring of vertices centred on it, so the joint regressor is exactly the ring
mean. The ten shape directions are derivatives of the generator with respect to body measurements
(stature, girth, limb lengths, ...). Each tube unrolls into one UV chart whose area matches the
surface area, and the charts are shelf-packed into the unit square.

Frame and units as SMPL: metres, y up, the body faces +z, the subject's left is +x, T-pose.

One module on purpose (~490 lines): the private helpers are the steps of one generator and only make sense read
in order, from the body design to the packed UV atlas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)  # fmt: skip
SMPL_SIZE_DETAIL: int = 59
NUM_BETAS = 10
# What each beta changes: beta0 stature, beta1 overall girth, ...
SHAPE_COMPONENTS: tuple[str, ...] = (
    "stature", "girth", "leg_length", "arm_length", "shoulder_width",
    "hip_width", "torso_length", "limb_girth", "belly", "head_size",
)  # fmt: skip

MIN_DETAIL = 4
_NUM_JOINTS = 24
_NUM_POSE_BASIS = 9 * (_NUM_JOINTS - 1)
_ROOT_PARENT = 4294967295  # SMPL stores the root's parent as uint32(-1)
# Relative change of each measurement per unit beta; beta in [-2, 2] spans plausible adults.
_BETA_SCALE = np.array([0.045, 0.07, 0.035, 0.035, 0.05, 0.05, 0.04, 0.07, 0.10, 0.04])
_LIMB_GIRTH_SHARE = 0.6  # limbs take this fraction of the overall girth change
_SHAPE_STEP = 1e-6  # finite-difference step in beta units (the generator is smooth in beta)
_UV_GUTTER = 0.02  # metres of empty atlas between charts (~1% of the atlas side)
_RING_SAMPLES = 128  # polygon resolution for arc-length sampling of an ellipse; multiple of 4
_MERIDIAN_SAMPLES = 1000

_CENTRE_JOINTS = {
    0: (0.0, -0.22, 0.02), 3: (0.0, -0.10, 0.0), 6: (0.0, 0.03, 0.005),
    9: (0.0, 0.09, 0.015), 12: (0.0, 0.29, -0.005), 15: (0.0, 0.36, 0.02),
}  # fmt: skip
# Left-side joints (+x) and their right-side mirror ids.
_LEFT_JOINTS = {
    1: (0.07, -0.31, 0.02), 4: (0.10, -0.68, 0.015), 7: (0.09, -1.07, -0.02),
    10: (0.11, -1.13, 0.10), 13: (0.075, 0.20, -0.005), 16: (0.17, 0.23, -0.015),
    18: (0.43, 0.215, -0.03), 20: (0.68, 0.22, -0.03), 22: (0.765, 0.215, -0.035),
}  # fmt: skip
_MIRROR = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 22: 23}
# Face keypoints for smplx's VertexJointSelector: the head vertex nearest each of these points.
_FACE_KEYPOINT_TARGETS = np.array([
    (0.0, 0.40, 0.14), (-0.035, 0.435, 0.12), (0.035, 0.435, 0.12), (-0.09, 0.42, 0.0), (0.09, 0.42, 0.0),
])  # fmt: skip


@dataclass(frozen=True)
class _Tube:
    """One closed body part swept along `knots` = [start pole, anchor joints..., end pole]."""

    knots: np.ndarray  # [K+1, 3]
    anchors: tuple[int, ...]  # joint id of each interior knot
    bones: tuple[int, ...]  # joint that drives each of the K knot segments
    stations: np.ndarray  # [S, 3]: knot coordinate u, half-width a (along e1), half-depth b (along e2)
    up: tuple[float, float, float]  # reference for e2; the UV seam runs along -e2


@dataclass(frozen=True)
class _Plan:
    """Tessellation of one tube, fixed at the mean shape so every shape shares the topology."""

    n_seg: int  # vertices per ring (even, so each ring's mean is its centre)
    intervals: tuple[int, ...]  # ring intervals per knot segment


def _rest_design() -> np.ndarray:
    joints = np.zeros((_NUM_JOINTS, 3))
    for joint, position in _CENTRE_JOINTS.items():
        joints[joint] = position
    for joint, position in _LEFT_JOINTS.items():
        joints[joint] = position
        joints[_MIRROR[joint]] = (-position[0], position[1], position[2])
    return joints


_REST_JOINTS = _rest_design()


def _factors(beta: np.ndarray) -> dict[str, float]:
    return dict(zip(SHAPE_COMPONENTS, 1.0 + _BETA_SCALE * beta))


def _joints(f: dict[str, float]) -> np.ndarray:
    """Rest joints at unit stature: the designed bone offsets scaled by the body measurements."""
    offsets = _REST_JOINTS - _REST_JOINTS[[max(p, 0) for p in SMPL_PARENTS]]
    offsets[0] = _REST_JOINTS[0]
    widen = {1: "hip_width", 2: "hip_width", 13: "shoulder_width", 14: "shoulder_width",
             16: "shoulder_width", 17: "shoulder_width"}  # fmt: skip
    for joint, name in widen.items():
        offsets[joint, 0] *= f[name]
    lengthen = {
        "leg_length": (4, 5, 7, 8), "torso_length": (3, 6, 9, 12),
        "arm_length": (18, 19, 20, 21, 22, 23), "head_size": (15,),
    }  # fmt: skip
    for name, ids in lengthen.items():
        offsets[list(ids)] *= f[name]
    joints = np.zeros_like(offsets)
    for joint, parent in enumerate(SMPL_PARENTS):
        joints[joint] = offsets[joint] + (joints[parent] if parent >= 0 else 0.0)
    return joints


def _extend(start: np.ndarray, end: np.ndarray, length: float) -> np.ndarray:
    """The point `length` beyond `end` on the line from `start` through `end`."""
    direction = end - start
    return end + direction / np.linalg.norm(direction) * length


def _scaled(stations: list[tuple[float, float, float]], scale: np.ndarray) -> np.ndarray:
    """Stations with their radii multiplied by per-station (a, b) factors `scale` [S, 2]."""
    out = np.array(stations, dtype=np.float64)
    out[:, 1:] *= scale
    return out


def _torso(j: np.ndarray, f: dict[str, float]) -> _Tube:
    stations = [(0.35, 0.150, 0.095), (1.0, 0.165, 0.100), (1.5, 0.155, 0.097), (2.0, 0.140, 0.095),
                (3.0, 0.145, 0.100), (4.0, 0.155, 0.105), (4.5, 0.175, 0.095)]  # fmt: skip
    hip, shoulder, belly = f["hip_width"], f["shoulder_width"], f["belly"]
    scale = np.array([(hip, 1), (hip, 1), (hip, belly), (1, belly), (1, belly), (shoulder, 1), (shoulder, 1)])
    knots = np.stack([_extend(j[3], j[0], 0.13), j[0], j[3], j[6], j[9], j[12] + (0.0, 0.01, 0.0)])
    return _Tube(knots, (0, 3, 6, 9), (0, 0, 3, 6, 9), _scaled(stations, scale * f["girth"]), (0.0, 0.0, 1.0))


def _head(j: np.ndarray, f: dict[str, float]) -> _Tube:
    stations = [(0.4, 0.052, 0.055), (1.0, 0.052, 0.056), (1.5, 0.056, 0.062), (2.0, 0.072, 0.088),
                (2.45, 0.080, 0.100)]  # fmt: skip
    top = j[15] + np.array([0.0, 0.19, -0.005]) * f["head_size"]
    knots = np.stack([j[12] - (0.0, 0.09, 0.0), j[12], j[15], top])
    return _Tube(knots, (12, 15), (9, 12, 15), _scaled(stations, np.full((5, 2), f["head_size"])), (0.0, 0.0, 1.0))


def _limb_scale(f: dict[str, float]) -> float:
    return f["limb_girth"] * (1.0 + _LIMB_GIRTH_SHARE * (f["girth"] - 1.0))


def _leg(j: np.ndarray, f: dict[str, float], hip: int, knee: int, ankle: int) -> _Tube:
    stations = [(0.5, 0.078, 0.080), (1.0, 0.082, 0.085), (1.4, 0.075, 0.078), (1.85, 0.058, 0.060),
                (2.0, 0.054, 0.056), (2.3, 0.055, 0.060), (2.75, 0.038, 0.040), (3.0, 0.034, 0.036),
                (3.3, 0.034, 0.036)]  # fmt: skip
    knots = np.stack([_extend(j[knee], j[hip], 0.10), j[hip], j[knee], j[ankle], _extend(j[knee], j[ankle], 0.05)])
    radii = _scaled(stations, np.full((len(stations), 2), _limb_scale(f)))
    return _Tube(knots, (hip, knee, ankle), (0, hip, knee, ankle), radii, (0.0, 0.0, 1.0))


def _foot(j: np.ndarray, ankle: int, foot: int) -> _Tube:
    stations = np.array([(0.25, 0.038, 0.032), (0.6, 0.045, 0.036), (1.0, 0.050, 0.026), (1.5, 0.045, 0.020)])
    heel = j[ankle] + (0.0, -0.045, -0.065)
    knots = np.stack([heel, j[foot], _extend(heel, j[foot], 0.08)])
    return _Tube(knots, (foot,), (ankle, foot), stations, (0.0, 1.0, 0.0))


def _arm(
    j: np.ndarray, f: dict[str, float], collar: int, shoulder: int, elbow: int, wrist: int, hand: int
) -> _Tube:
    stations = [(0.6, 0.045, 0.040), (1.0, 0.050, 0.050), (2.0, 0.055, 0.052), (2.4, 0.050, 0.047),
                (2.9, 0.040, 0.038), (3.0, 0.039, 0.037), (3.3, 0.042, 0.040), (3.9, 0.030, 0.023),
                (4.0, 0.030, 0.022), (4.5, 0.043, 0.017), (5.0, 0.045, 0.016), (5.6, 0.042, 0.012)]  # fmt: skip
    tip = _extend(j[wrist], j[hand], 0.10 * f["arm_length"])
    knots = np.stack([_extend(j[shoulder], j[collar], 0.05), j[collar], j[shoulder], j[elbow], j[wrist], j[hand], tip])
    radii = _scaled(stations, np.full((len(stations), 2), _limb_scale(f)))
    anchors = (collar, shoulder, elbow, wrist, hand)
    return _Tube(knots, anchors, (9, *anchors), radii, (0.0, 1.0, 0.0))


def _design(beta: np.ndarray) -> tuple[list[_Tube], float]:
    """The body parts at unit stature for shape `beta`, and the stature scale."""
    f = _factors(beta)
    j = _joints(f)
    tubes = [
        _torso(j, f),
        _head(j, f),
        _leg(j, f, 1, 4, 7),
        _leg(j, f, 2, 5, 8),
        _foot(j, 7, 10),
        _foot(j, 8, 11),
        _arm(j, f, 13, 16, 18, 20, 22),
        _arm(j, f, 14, 17, 19, 21, 23),
    ]
    return tubes, f["stature"]


def _knot_t(tube: _Tube) -> np.ndarray:
    """Arc length along the axis at each knot."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(tube.knots, axis=0), axis=1))])


def _radii(tube: _Tube, t: np.ndarray) -> np.ndarray:
    """Half-axes (a, b) [N, 2] at axis positions t: a smooth profile closed by ellipsoidal caps."""
    knot_t = _knot_t(tube)
    station_t = np.interp(tube.stations[:, 0], np.arange(len(knot_t)), knot_t)
    first, last, end = station_t[0], station_t[-1], knot_t[-1]
    profile = PchipInterpolator(station_t, tube.stations[:, 1:], axis=0)(np.clip(t, first, last))
    into_cap = np.maximum((first - t) / first, 0.0) + np.maximum((t - last) / (end - last), 0.0)
    return profile * np.sqrt(np.clip(1.0 - into_cap**2, 0.0, None))[:, None]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _partition(t: np.ndarray, centres: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Smooth partition of unity [N, len(centres)+1] over the intervals cut at `centres`.

    Column k switches over to column k+1 within half_widths[k] of centres[k]; the switch zones
    must not overlap.
    """
    steps = _smoothstep((t[:, None] - centres + half_widths) / (2.0 * half_widths))
    ones, zeros = np.ones((len(t), 1)), np.zeros((len(t), 1))
    return np.concatenate([ones, steps], axis=1) - np.concatenate([steps, zeros], axis=1)


def _frames(tube: _Tube, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, e1, e2 [N, 3] at axis positions t; the tangent turns smoothly at the knots."""
    knot_t = _knot_t(tube)
    centre = np.stack([np.interp(t, knot_t, tube.knots[:, k]) for k in range(3)], axis=1)
    lengths = np.diff(knot_t)
    directions = np.diff(tube.knots, axis=0) / lengths[:, None]
    turn = 0.4 * np.minimum(lengths[:-1], lengths[1:])
    tangent = _partition(t, knot_t[1:-1], turn) @ directions
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    up = np.asarray(tube.up)
    e2 = up - (tangent @ up)[:, None] * tangent
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    return centre, np.cross(e2, tangent), e2


def _meridian(tube: _Tube) -> tuple[np.ndarray, np.ndarray]:
    """Dense axis positions t and the surface arc length m along a mean-radius meridian."""
    knot_t = _knot_t(tube)
    t = np.union1d(np.linspace(0.0, knot_t[-1], _MERIDIAN_SAMPLES), knot_t)
    mean_radius = _radii(tube, t).mean(axis=1)
    steps = np.hypot(np.diff(t), np.diff(mean_radius))
    return t, np.concatenate([[0.0], np.cumsum(steps)])


def _ring_t(tube: _Tube, plan: _Plan) -> np.ndarray:
    """Axis position of every ring: evenly spaced in meridian length per knot segment, one per anchor."""
    t, m = _meridian(tube)
    knot_t = _knot_t(tube)
    knot_m = np.interp(knot_t, t, m)
    rings = []
    for k, count in enumerate(plan.intervals):
        ring_m = np.linspace(knot_m[k], knot_m[k + 1], count + 1)[1:]
        segment = np.interp(ring_m, m, t)
        segment[-1] = knot_t[k + 1]
        rings.append(segment)
    return np.concatenate(rings)[:-1]


def _ellipse_angles(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Angles [R, n] of n points evenly spaced in arc length around each ellipse, from -e2.

    The set is symmetric about both ellipse axes (n is even), so each ring's mean is its centre.
    """
    theta = np.linspace(-np.pi / 2, 1.5 * np.pi, _RING_SAMPLES + 1)
    x, y = a[:, None] * np.cos(theta), b[:, None] * np.sin(theta)
    arc = np.concatenate([np.zeros((len(a), 1)), np.cumsum(np.hypot(np.diff(x), np.diff(y)), axis=1)], axis=1)
    arc /= arc[:, -1:]
    # One monotone interpolation over all rings: ring r lives on the interval [2r, 2r + 1].
    offset = 2.0 * np.arange(len(a))[:, None]
    targets = np.arange(n) / n + offset
    return np.interp(targets.ravel(), (arc + offset).ravel(), np.tile(theta, len(a))).reshape(len(a), n)


def _tube_vertices(tube: _Tube, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [pole, rings..., pole] of one tube, and the axis position of each vertex."""
    t = _ring_t(tube, plan)
    centre, e1, e2 = _frames(tube, t)
    radii = _radii(tube, t)
    angle = _ellipse_angles(radii[:, 0], radii[:, 1], plan.n_seg)
    rings = (
        centre[:, None]
        + (radii[:, 0, None] * np.cos(angle))[..., None] * e1[:, None]
        + (radii[:, 1, None] * np.sin(angle))[..., None] * e2[:, None]
    )
    vertices = np.concatenate([tube.knots[:1], rings.reshape(-1, 3), tube.knots[-1:]])
    vertex_t = np.concatenate([[0.0], np.repeat(t, plan.n_seg), [_knot_t(tube)[-1]]])
    return vertices, vertex_t


def _tube_triangles(n_rings: int, n_seg: int, width: int) -> np.ndarray:
    """Triangles of one tube, wound so the right-hand normal points out of the surface.

    Slot j of ring i has index 1 + i*width + j; the poles are 0 and 1 + n_rings*width. With
    width == n_seg the last slot's neighbour wraps to slot 0 (vertices); with width == n_seg + 1 it
    is the extra slot n_seg, a copy of slot 0 on the other side of the seam (UVs).
    """
    slot = np.arange(n_seg)
    after = (slot + 1) % width
    i = np.arange(n_rings - 1)[:, None]

    def ring(index, s):
        return 1 + index * width + s

    a, b, c, d = ring(i, slot), ring(i, after), ring(i + 1, after), ring(i + 1, slot)
    quads = np.stack([np.stack([a, b, c], axis=-1), np.stack([a, c, d], axis=-1)], axis=2).reshape(-1, 3)
    start = np.stack([ring(0, slot), np.zeros_like(slot), ring(0, after)], axis=1)
    last = n_rings - 1
    end = np.stack([ring(last, slot), ring(last, after), np.full_like(slot, ring(n_rings, 0))], axis=1)
    return np.concatenate([start, quads, end])


def _tube_chart(vertices: np.ndarray, n_seg: int) -> np.ndarray:
    """UV chart (metres) of one tube: ring i spans its perimeter in u at its meridian distance v.

    Area-preserving for a surface of revolution; the seam is slot 0 (the -e2 side).
    """
    rings = vertices[1:-1].reshape(-1, n_seg, 3)
    perimeter = np.linalg.norm(np.roll(rings, -1, axis=1) - rings, axis=2).sum(axis=1)
    path = np.concatenate([vertices[:1, None].repeat(n_seg, 1), rings, vertices[-1:, None].repeat(n_seg, 1)])
    v = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=2).mean(axis=1))])
    u = (np.arange(n_seg + 1) / n_seg - 0.5)[None, :] * perimeter[:, None]
    ring_uv = np.stack([u, np.broadcast_to(v[1:-1, None], u.shape)], axis=2).reshape(-1, 2)
    return np.concatenate([[[0.0, 0.0]], ring_uv, [[0.0, v[-1]]]])


def _pack(sizes: list[tuple[float, float]]) -> tuple[np.ndarray, float]:
    """Shelf-pack rectangles (w, h) with gutters; lower-left corners [N, 2] and the square's side."""
    gap = _UV_GUTTER
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k][1])
    widths = np.array([w for w, _ in sizes])
    best = None
    for limit in np.linspace(widths.max() + 2 * gap, widths.sum() + (len(sizes) + 1) * gap, 64):
        corners, x, y, shelf_height, used_width = np.zeros((len(sizes), 2)), gap, gap, 0.0, 0.0
        for k in order:
            w, h = sizes[k]
            if x + w + gap > limit:
                x, y, shelf_height = gap, y + shelf_height + gap, 0.0
            corners[k] = (x, y)
            x, shelf_height, used_width = x + w + gap, max(shelf_height, h), max(used_width, x + w + gap)
        side = max(used_width, y + shelf_height + gap)
        if best is None or side < best[1]:
            best = (corners, side)
    return best


def _plan(tube: _Tube, spacing: float) -> _Plan:
    """Rings about `spacing` apart along the meridian and about `spacing` apart around it."""
    t, m = _meridian(tube)
    a, b = _radii(tube, t).T
    perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan
    mean_perimeter = np.sum(0.5 * (perimeter[1:] + perimeter[:-1]) * np.diff(m)) / m[-1]
    n_seg = max(6, 2 * round(mean_perimeter / (2 * spacing)))
    knot_m = np.interp(_knot_t(tube), t, m)
    intervals = tuple(max(1, round(d / spacing)) for d in np.diff(knot_m))
    return _Plan(n_seg, intervals)


def _body_vertices(beta: np.ndarray, plans: list[_Plan]) -> tuple[np.ndarray, list[np.ndarray]]:
    """All vertices for shape `beta` with the given tessellation, and each tube's vertex axis positions."""
    tubes, stature = _design(beta)
    parts = [_tube_vertices(tube, plan) for tube, plan in zip(tubes, plans)]
    return stature * np.concatenate([v for v, _ in parts]), [t for _, t in parts]


def _skinning(tubes: list[_Tube], vertex_t: list[np.ndarray], vertices: np.ndarray) -> np.ndarray:
    """Weights [V, 24]: each tube's bones blend across their joint over about a radius."""
    blocks = []
    for tube, t in zip(tubes, vertex_t):
        knot_t = _knot_t(tube)
        lengths = np.diff(knot_t)
        half = np.minimum(0.8 * _radii(tube, knot_t[1:-1]).mean(axis=1), 0.45 * np.minimum(lengths[:-1], lengths[1:]))
        bones = np.zeros((len(tube.bones), _NUM_JOINTS))
        bones[np.arange(len(tube.bones)), tube.bones] = 1.0
        blocks.append(_partition(t, knot_t[1:-1], half) @ bones)
    weights = np.concatenate(blocks)
    return _collar_blend(weights, vertices, len(vertex_t[0]))


def _collar_blend(weights: np.ndarray, vertices: np.ndarray, n_torso: int) -> np.ndarray:
    """Hand the torso's upper lateral surface (the shoulders' tops) to the collar joints."""
    x, y = vertices[:n_torso, 0], vertices[:n_torso, 1]
    share = _smoothstep((np.abs(x) - 0.06) / 0.08) * _smoothstep((y - 0.12) / 0.08)
    collar = np.zeros((n_torso, _NUM_JOINTS))
    collar[np.arange(n_torso), np.where(x > 0, 13, 14)] = 1.0
    out = weights.copy()
    out[:n_torso] = (1.0 - share)[:, None] * weights[:n_torso] + share[:, None] * collar
    return out


def _regressor(tubes: list[_Tube], plans: list[_Plan], num_vertices: int) -> np.ndarray:
    """J_regressor [24, V]: each joint is the mean of the ring centred on it."""
    regressor = np.zeros((_NUM_JOINTS, num_vertices))
    start = 0
    for tube, plan in zip(tubes, plans):
        anchor_rings = np.cumsum(plan.intervals)[:-1] - 1
        for joint, ring in zip(tube.anchors, anchor_rings):
            first = start + 1 + ring * plan.n_seg
            regressor[joint, first : first + plan.n_seg] = 1.0 / plan.n_seg
        start += 2 + (sum(plan.intervals) - 1) * plan.n_seg
    return regressor


def _topology(vertices: np.ndarray, plans: list[_Plan]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces, packed UV coordinates (in [0, 1]) and UV faces of all tubes."""
    faces, uv_faces, charts = [], [], []
    v_start = vt_start = 0
    for plan in plans:
        n_rings = sum(plan.intervals) - 1
        count = 2 + n_rings * plan.n_seg
        tube_faces = _tube_triangles(n_rings, plan.n_seg, plan.n_seg)
        tube_uv_faces = _tube_triangles(n_rings, plan.n_seg, plan.n_seg + 1)
        chart = _tube_chart(vertices[v_start : v_start + count], plan.n_seg)
        faces.append(tube_faces + v_start)
        uv_faces.append(tube_uv_faces + vt_start)
        charts.append(chart - chart.min(axis=0))
        v_start, vt_start = v_start + count, vt_start + len(chart)
    corners, side = _pack([tuple(chart.max(axis=0)) for chart in charts])
    vt = np.concatenate([chart + corner for chart, corner in zip(charts, corners)]) / side
    return np.concatenate(faces), vt, np.concatenate(uv_faces)


def _face_keypoints(vertices: np.ndarray, head: slice) -> np.ndarray:
    distances = np.linalg.norm(vertices[head, None] - _FACE_KEYPOINT_TARGETS[None], axis=2)
    return (head.start + distances.argmin(axis=0)).astype(np.int64)


def _shapedirs(base: np.ndarray, plans: list[_Plan]) -> np.ndarray:
    """Forward differences of the generator in each beta: [V, 3, 10]."""
    columns = []
    for k in range(NUM_BETAS):
        beta = np.zeros(NUM_BETAS)
        beta[k] = _SHAPE_STEP
        columns.append((_body_vertices(beta, plans)[0] - base) / _SHAPE_STEP)
    return np.stack(columns, axis=2)


@functools.lru_cache(maxsize=4)
def _generate(detail: int) -> dict[str, np.ndarray]:
    mean_shape = np.zeros(NUM_BETAS)
    tubes, _ = _design(mean_shape)
    plans = [_plan(tube, 1.0 / detail) for tube in tubes]
    vertices, vertex_t = _body_vertices(mean_shape, plans)
    faces, vt, ft = _topology(vertices, plans)
    head_start = len(vertex_t[0])
    kintree = np.array([[_ROOT_PARENT, *SMPL_PARENTS[1:]], list(range(_NUM_JOINTS))], dtype=np.int64)
    arrays = {
        "v_template": vertices,
        "f": faces.astype(np.int64),
        "shapedirs": _shapedirs(vertices, plans),
        "posedirs": np.zeros((len(vertices), 3, _NUM_POSE_BASIS)),
        "J_regressor": _regressor(tubes, plans, len(vertices)),
        "J": _REST_JOINTS.copy(),
        "kintree_table": kintree,
        "weights": _skinning(tubes, vertex_t, vertices),
        "vt": vt,
        "ft": ft.astype(np.int64),
        "face_keypoint_vertex_ids": _face_keypoints(vertices, slice(head_start, head_start + len(vertex_t[1]))),
    }
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def generate_smpl_template(detail: int = SMPL_SIZE_DETAIL) -> dict[str, np.ndarray]:
    """The generated humanoid as SMPL's arrays (plus `J`, `vt`, `ft`, `face_keypoint_vertex_ids`).

    `detail` is the tessellation density in vertices per metre along and around each part;
    SMPL_SIZE_DETAIL gives about SMPL's 6890 vertices and 13776 faces. `J` holds the designed
    rest joints, which `J_regressor @ v_template` reproduces. `vt` follows the OBJ convention
    (v = 0 is the bottom of the texture). Returns fresh arrays the caller may modify.
    """
    if isinstance(detail, bool) or not isinstance(detail, (int, np.integer)) or detail < MIN_DETAIL:
        raise ValueError(f"detail must be an integer >= {MIN_DETAIL}, got {detail!r}")
    return {key: array.copy() for key, array in _generate(int(detail)).items()}
