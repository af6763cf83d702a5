"""The generated SMPL-format template and the smplx-based BodyModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from models.body_model import MODEL_KEYS, load_body_model
from models.smpl_template import MIN_DETAIL, SMPL_JOINT_NAMES, SMPL_PARENTS, SMPL_SIZE_DETAIL, generate_smpl_template

SMALL_DETAIL = MIN_DETAIL
TEST_DETAIL = 12  # fast, but with a few rings per bone


@pytest.fixture(scope="module")
def smpl_size() -> dict[str, np.ndarray]:
    return generate_smpl_template()


@pytest.fixture(scope="module")
def body():
    return load_body_model(detail=TEST_DETAIL)


def _pose(frames: int, seed: int = 0, scale: float = 0.4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "global_orient": scale * torch.randn(frames, 3, generator=generator),
        "body_pose": scale * torch.randn(frames, 69, generator=generator),
        "betas": torch.randn(frames, 10, generator=generator),
        "transl": torch.randn(frames, 3, generator=generator),
    }


def _rest(frames: int = 1) -> dict[str, torch.Tensor]:
    return {
        "global_orient": torch.zeros(frames, 3),
        "body_pose": torch.zeros(frames, 69),
        "betas": torch.zeros(10),
        "transl": torch.zeros(frames, 3),
    }


def _components(num_vertices: int, faces: np.ndarray) -> np.ndarray:
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices))
    return connected_components(graph, directed=False)[1]


def _triangle_areas(points: np.ndarray) -> np.ndarray:
    """Unsigned areas of 3D triangles [F,3,3]."""
    return 0.5 * np.linalg.norm(np.cross(points[:, 1] - points[:, 0], points[:, 2] - points[:, 0]), axis=1)


def _signed_uv_areas(points: np.ndarray) -> np.ndarray:
    """Signed areas of 2D triangles [F,3,2] (positive counter-clockwise)."""
    d1, d2 = points[:, 1] - points[:, 0], points[:, 2] - points[:, 0]
    return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])


# --- template ---------------------------------------------------------------------------------


def test_template_keys_and_shapes(smpl_size):
    a = smpl_size
    num_v, num_f = len(a["v_template"]), len(a["f"])
    expected = {
        "v_template": (num_v, 3), "f": (num_f, 3), "shapedirs": (num_v, 3, 10), "posedirs": (num_v, 3, 207),
        "J_regressor": (24, num_v), "kintree_table": (2, 24), "weights": (num_v, 24), "ft": (num_f, 3),
        "face_keypoint_vertex_ids": (5,), "J": (24, 3),
    }  # fmt: skip
    for key, shape in expected.items():
        assert a[key].shape == shape, key
    assert a["v_template"].dtype == np.float64 and a["f"].dtype == np.int64 and a["ft"].dtype == np.int64
    assert a["kintree_table"][0, 0] == 4294967295
    assert tuple(a["kintree_table"][0, 1:]) == SMPL_PARENTS[1:]
    assert tuple(a["kintree_table"][1]) == tuple(range(24))
    assert len(SMPL_JOINT_NAMES) == 24 and SMPL_JOINT_NAMES[15] == "head"


def test_smpl_size_detail_matches_smpl(smpl_size):
    num_v, num_f = len(smpl_size["v_template"]), len(smpl_size["f"])
    print(f"detail {SMPL_SIZE_DETAIL}: V={num_v} F={num_f}")
    assert abs(num_v / 6890 - 1) < 0.02
    assert abs(num_f / 13776 - 1) < 0.02


def test_rest_frame_like_smpl(smpl_size):
    v, joints = smpl_size["v_template"], smpl_size["J"]
    assert 1.6 < np.ptp(v[:, 1]) < 1.8
    assert -1.25 < v[:, 1].min() < -1.05 and 0.45 < v[:, 1].max() < 0.65
    assert np.linalg.norm(joints[0]) < 0.3
    left, right = SMPL_JOINT_NAMES.index("left_wrist"), SMPL_JOINT_NAMES.index("right_wrist")
    assert joints[left, 0] > 0.5 and joints[right, 0] < -0.5  # T-pose, subject's left is +x
    toes = SMPL_JOINT_NAMES.index("left_foot")
    assert joints[toes, 2] > joints[SMPL_JOINT_NAMES.index("left_ankle"), 2]  # feet point to +z
    assert joints[SMPL_JOINT_NAMES.index("head"), 1] > joints[SMPL_JOINT_NAMES.index("neck"), 1]


@pytest.mark.parametrize("detail", [SMALL_DETAIL, TEST_DETAIL, SMPL_SIZE_DETAIL])
def test_parts_are_closed_outward_genus0(detail):
    a = generate_smpl_template(detail)
    v, f = a["v_template"], a["f"]
    directed = f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    # Every directed edge once and its reverse once: watertight and consistently wound.
    assert len(np.unique(directed, axis=0)) == len(directed)
    _, uses = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert np.all(uses == 2)
    labels = _components(len(v), f)
    assert labels.max() + 1 == 8
    for part in range(8):
        part_faces = f[labels[f[:, 0]] == part]
        p = v[part_faces]
        volume = np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum() / 6.0
        assert volume > 0, f"part {part} is wound inward"
        num_edges = len(part_faces) * 3 // 2
        assert (labels == part).sum() - num_edges + len(part_faces) == 2, f"part {part} is not genus 0"


def test_small_detail_is_small():
    a = generate_smpl_template(SMALL_DETAIL)
    print(f"detail {SMALL_DETAIL}: V={len(a['v_template'])} F={len(a['f'])}")
    assert len(a["v_template"]) < 500
    with pytest.raises(ValueError, match="detail"):
        generate_smpl_template(MIN_DETAIL - 1)


def test_weights_and_regressor(smpl_size):
    weights, regressor = smpl_size["weights"], smpl_size["J_regressor"]
    assert weights.min() >= 0 and np.allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert regressor.min() >= 0 and np.allclose(regressor.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(regressor @ smpl_size["v_template"], smpl_size["J"], atol=1e-6)
    assert np.all(weights.max(axis=0) > 0.5)  # every joint drives a region of its own


def test_returned_arrays_are_private_copies():
    a = generate_smpl_template(SMALL_DETAIL)
    a["v_template"][:] = 0.0
    assert np.abs(generate_smpl_template(SMALL_DETAIL)["v_template"]).max() > 0.1


def test_shape_directions_are_plausible_and_smooth(smpl_size):
    v, f, dirs = smpl_size["v_template"], smpl_size["f"], smpl_size["shapedirs"]
    singular = np.linalg.svd(dirs.reshape(-1, 10), compute_uv=False)
    assert singular.min() > 1e-3 * singular.max()  # ten distinct directions
    edges = f[:, [0, 1]]
    edge_length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    for k in range(10):
        for beta_k in (-2.0, 2.0):
            beta = np.zeros(10)
            beta[k] = beta_k
            shaped = v + dirs @ beta
            assert 1.5 < np.ptp(shaped[:, 1]) < 1.9, (k, beta_k)
            stretch = np.linalg.norm(shaped[edges[:, 0]] - shaped[edges[:, 1]], axis=1) / edge_length
            assert 0.6 < stretch.min() and stretch.max() < 1.6, (k, beta_k)
    stature = np.ptp((v + 2 * dirs[:, :, 0])[:, 1]) - np.ptp((v - 2 * dirs[:, :, 0])[:, 1])
    assert stature > 0.2
    torso = _components(len(v), f) == 0
    assert np.all(v[torso, 0] * dirs[torso, 0, 1] >= -1e-9)  # beta1 widens the torso
    assert np.abs(dirs[torso, 0, 1]).mean() > 0.005


def test_face_keypoints_on_the_head(smpl_size):
    points = smpl_size["v_template"][smpl_size["face_keypoint_vertex_ids"]]
    nose, reye, leye, rear, lear = points
    assert nose[2] > 0.05 and reye[0] < 0 < leye[0] and rear[0] < -0.05 and lear[0] > 0.05
    assert np.all(points[:, 1] > smpl_size["J"][15, 1])


def _uv_coverage(vt: np.ndarray, ft: np.ndarray, grid: int) -> np.ndarray:
    """How many UV triangles strictly contain each point of a grid x grid lattice."""
    centres = (np.arange(grid) + 0.5) / grid
    counts = np.zeros((grid, grid), dtype=np.int32)
    for tri in vt[ft]:
        lo = np.searchsorted(centres, tri.min(axis=0))
        hi = np.searchsorted(centres, tri.max(axis=0))
        if np.any(hi <= lo):
            continue
        u, w = np.meshgrid(centres[lo[0] : hi[0]], centres[lo[1] : hi[1]], indexing="ij")
        d1, d2 = tri[1] - tri[0], tri[2] - tri[0]
        det = d1[0] * d2[1] - d1[1] * d2[0]
        pu, pw = u - tri[0, 0], w - tri[0, 1]
        s = (pu * d2[1] - pw * d2[0]) / det
        t = (d1[0] * pw - d1[1] * pu) / det
        inside = (s > 1e-9) & (t > 1e-9) & (s + t < 1 - 1e-9)
        counts[lo[0] : hi[0], lo[1] : hi[1]] += inside
    return counts


def test_uv_atlas_is_valid_and_uniform(smpl_size):
    coarse = generate_smpl_template(TEST_DETAIL)
    for a in (coarse, smpl_size):
        vt, ft = a["vt"], a["ft"]
        assert vt.min() >= 0.0 and vt.max() <= 1.0
        assert np.all(_signed_uv_areas(vt[ft]) > 0)  # no flipped UV triangles
    coverage = _uv_coverage(coarse["vt"], coarse["ft"], 384)
    assert coverage.max() == 1, "UV charts overlap"
    assert coverage.mean() > 0.35, "atlas is mostly empty"
    a = smpl_size
    ratio = _signed_uv_areas(a["vt"][a["ft"]]) / _triangle_areas(a["v_template"][a["f"]])
    p10, p90 = np.percentile(ratio / np.median(ratio), [10, 90])
    print(f"UV area / 3D area relative to median: p10={p10:.3f} p90={p90:.3f}")
    assert p90 / p10 < 1.3
    p1, p99 = np.percentile(ratio / np.median(ratio), [1, 99])
    assert p99 / p1 < 2.5


def test_uv_seams_duplicate_vertices(smpl_size):
    f, ft = smpl_size["f"], smpl_size["ft"]
    uv_per_vertex = [set() for _ in range(len(smpl_size["v_template"]))]
    for vertex, uv in zip(f.ravel(), ft.ravel()):
        uv_per_vertex[vertex].add(uv)
    counts = np.array([len(s) for s in uv_per_vertex])
    assert counts.min() == 1 and counts.max() >= 2
    assert len(smpl_size["vt"]) > len(smpl_size["v_template"])


# --- BodyModel --------------------------------------------------------------------------------


def test_buffers_and_no_parameters(body):
    template = generate_smpl_template(TEST_DETAIL)
    assert body.num_vertices == len(template["v_template"])
    assert body.faces.dtype == torch.long and body.uv_faces.dtype == torch.long
    assert body.uv_coords.dtype == torch.float32 and body.uv_coords.shape == (len(template["vt"]), 2)
    assert list(body.parameters()) == []
    assert {"faces", "uv_coords", "uv_faces"} <= {name for name, _ in body.named_buffers()}


def test_rest_pose_gives_template(body):
    template = generate_smpl_template(TEST_DETAIL)
    out = body(**_rest())
    assert out.vertices.shape == (1, body.num_vertices, 3) and out.joints.shape == (1, 24, 3)
    assert out.vertices.dtype == torch.float32
    np.testing.assert_allclose(out.vertices[0].numpy(), template["v_template"], atol=1e-6)
    np.testing.assert_allclose(out.joints[0].numpy(), template["J"], atol=1e-6)


def test_accepts_numpy_and_float64(body):
    rest = {key: value.double().numpy() for key, value in _rest(2).items()}
    out = body(**rest)
    assert out.vertices.dtype == torch.float32 and out.vertices.shape[0] == 2


def test_knee_bend_moves_only_the_shin(body):
    template = generate_smpl_template(TEST_DETAIL)
    weights = template["weights"]
    rest = body(**_rest()).vertices[0]
    pose = _rest()
    knee = SMPL_JOINT_NAMES.index("left_knee")
    pose["body_pose"][0, 3 * (knee - 1)] = np.pi / 2
    bent = body(**pose).vertices[0]
    moved = (bent - rest).norm(dim=1).numpy()
    shin = weights[:, knee] > 0.99
    right_leg = weights[:, [2, 5, 8, 11]].sum(axis=1) > 0.99
    assert moved[shin].min() > 0.05
    assert moved[right_leg].max() < 1e-6
    faces = body.faces.numpy()
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    stretch = (bent[edges[:, 0]] - bent[edges[:, 1]]).norm(dim=1) / (rest[edges[:, 0]] - rest[edges[:, 1]]).norm(dim=1)
    assert stretch.max() < 2.5, "knee bend tears the mesh"
    ankle = SMPL_JOINT_NAMES.index("left_ankle")
    joints = body(**pose).joints[0]
    shin_dir = joints[ankle] - joints[knee]
    assert shin_dir[2] < -0.3 and abs(shin_dir[1]) < 0.05  # the shin swings backward, to horizontal


def test_global_rotation_about_x_flips_y_and_z(body):
    rest = body(**_rest())
    pose = _rest()
    pose["global_orient"][0, 0] = np.pi
    turned = body(**pose)
    pelvis = rest.joints[0, 0]
    expected = (rest.vertices[0] - pelvis) * torch.tensor([1.0, -1.0, -1.0]) + pelvis
    torch.testing.assert_close(turned.vertices[0], expected, atol=1e-5, rtol=0)


def test_translation_shifts_everything(body):
    pose = _rest()
    pose["transl"][0] = torch.tensor([0.1, -0.2, 3.0])
    shifted, rest = body(**pose), body(**_rest())
    torch.testing.assert_close(shifted.vertices - rest.vertices, pose["transl"][:, None].expand_as(rest.vertices))


def test_batched_equals_per_frame(body):
    pose = _pose(4)
    batched = body(**pose)
    for t in range(4):
        single = body(**{key: value[t : t + 1] for key, value in pose.items()})
        torch.testing.assert_close(batched.vertices[t : t + 1], single.vertices, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.joints[t : t + 1], single.joints, atol=1e-5, rtol=0)


def test_chunked_equals_unchunked_and_shared_betas(body):
    pose = _pose(5, seed=1)
    whole = body(**pose)
    chunked = body(**pose, chunk_size=2)
    torch.testing.assert_close(chunked.vertices, whole.vertices, atol=1e-6, rtol=0)
    shared = dict(pose, betas=pose["betas"][0])
    repeated = dict(pose, betas=pose["betas"][:1].expand(5, 10))
    torch.testing.assert_close(body(**shared).vertices, body(**repeated).vertices)


def test_gradients_flow(body):
    pose = {key: value.requires_grad_() for key, value in _pose(2).items()}
    body(**pose).vertices.sum().backward()
    assert all(value.grad is not None and torch.isfinite(value.grad).all() for value in pose.values())


@pytest.mark.parametrize(
    ("key", "shape"),
    [("global_orient", (3, 4)), ("body_pose", (3, 72)), ("betas", (3, 16)), ("transl", (2, 3)), ("body_pose", (69,))],
)
def test_wrong_input_shape_names_the_argument(body, key, shape):
    pose = _pose(3)
    pose[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=key):
        body(**pose)


# --- loading a user's SMPL file ---------------------------------------------------------------


def _write_obj(path: Path, vertices: np.ndarray, vt: np.ndarray, faces: np.ndarray, ft: np.ndarray) -> None:
    lines = [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in vertices]
    lines += [f"vt {u:.8f} {v:.8f}" for u, v in vt]
    lines += ["f " + " ".join(f"{a + 1}/{b + 1}" for a, b in zip(face, uv)) for face, uv in zip(faces, ft)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def smpl_files(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The template saved as if it were a user's SMPL .npz, with SMPL-style UV .obj."""
    template = generate_smpl_template(TEST_DETAIL)
    model = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(model, **{key: template[key] for key in (*MODEL_KEYS, "face_keypoint_vertex_ids")})
    uv = tmp_path / "smpl_uv.obj"
    _write_obj(uv, template["v_template"], template["vt"], template["f"], template["ft"])
    return model, uv, template


def test_npz_and_obj_round_trip(body, smpl_files):
    model_path, uv_path, template = smpl_files
    loaded = load_body_model(model_path, uv_path)
    pose = _pose(3, seed=2)
    torch.testing.assert_close(loaded(**pose).vertices, body(**pose).vertices)
    torch.testing.assert_close(loaded.uv_coords, body.uv_coords)
    assert torch.equal(loaded.uv_faces, body.uv_faces) and torch.equal(loaded.faces, body.faces)
    uv_npz = model_path.with_name("uv.npz")
    np.savez(uv_npz, vt=template["vt"], ft=template["ft"])
    torch.testing.assert_close(load_body_model(model_path, uv_npz).uv_coords, body.uv_coords)


def test_smpl_topology_uses_smplx_default_keypoints(body, tmp_path):
    """A 6890-vertex file without face_keypoint_vertex_ids goes through smplx's own SMPL vertex ids."""
    template = generate_smpl_template(TEST_DETAIL)
    pad = 6890 - len(template["v_template"])
    padded = {key: template[key] for key in MODEL_KEYS}
    padded["v_template"] = np.concatenate([template["v_template"], np.repeat(template["v_template"][:1], pad, 0)])
    for key in ("shapedirs", "posedirs"):
        padded[key] = np.concatenate([template[key], np.zeros((pad, *template[key].shape[1:]))])
    padded["J_regressor"] = np.concatenate([template["J_regressor"], np.zeros((24, pad))], axis=1)
    padded["weights"] = np.concatenate([template["weights"], np.eye(24)[np.zeros(pad, dtype=int)]])
    np.savez(tmp_path / "smpl.npz", **padded)
    np.savez(tmp_path / "uv.npz", vt=template["vt"], ft=template["ft"])
    loaded = load_body_model(tmp_path / "smpl.npz", tmp_path / "uv.npz")
    pose = _pose(2, seed=4)
    out = loaded(**pose)
    assert out.joints.shape == (2, 24, 3)
    torch.testing.assert_close(out.vertices[:, : body.num_vertices], body(**pose).vertices)


def test_missing_model_file_names_the_path(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.npz"
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.npz") as info:
        load_body_model(path, tmp_path / "uv.obj")
    assert "v_template" in str(info.value)


def test_pickle_is_refused_unread(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle") as info:
        load_body_model(path, tmp_path / "uv.obj")
    assert str(path) in str(info.value) and ".npz" in str(info.value)


@pytest.mark.parametrize("key", ["weights", "J_regressor", "kintree_table"])
def test_missing_key_is_named(smpl_files, key):
    model_path, uv_path, template = smpl_files
    np.savez(model_path, **{k: template[k] for k in MODEL_KEYS if k != key})
    with pytest.raises(ValueError, match=key):
        load_body_model(model_path, uv_path)


@pytest.mark.parametrize(("key", "bad"), [("J_regressor", lambda a: a[:23]), ("shapedirs", lambda a: a[..., :5])])
def test_ill_shaped_key_is_named(smpl_files, key, bad):
    model_path, uv_path, template = smpl_files
    arrays = {k: template[k] for k in (*MODEL_KEYS, "face_keypoint_vertex_ids")}
    arrays[key] = bad(arrays[key])
    np.savez(model_path, **arrays)
    with pytest.raises(ValueError, match=key):
        load_body_model(model_path, uv_path)


def test_real_model_needs_uvs(smpl_files, tmp_path):
    model_path, uv_path, _ = smpl_files
    with pytest.raises(ValueError, match="uv_path"):
        load_body_model(model_path)
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_body_model(model_path, tmp_path / "missing.obj")
    with pytest.raises(ValueError, match="detail"):
        load_body_model(model_path, uv_path, detail=8)


def test_uv_obj_with_other_faces_is_refused(smpl_files):
    model_path, uv_path, template = smpl_files
    _write_obj(uv_path, template["v_template"], template["vt"], template["f"][:-1], template["ft"][:-1])
    with pytest.raises(ValueError, match="faces"):
        load_body_model(model_path, uv_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(body):
    pose = _pose(6, seed=3)
    cpu = body(**pose, chunk_size=4)
    gpu_body = load_body_model(detail=TEST_DETAIL).cuda()
    gpu = gpu_body(**{key: value.cuda() for key, value in pose.items()}, chunk_size=4)
    assert gpu.vertices.is_cuda
    torch.testing.assert_close(gpu.vertices.cpu(), cpu.vertices, atol=1e-4, rtol=0)
