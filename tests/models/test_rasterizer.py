"""Tests for models/rasterizer.py: hand-computed coverage, depth, barycentrics and robustness."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from models import rasterizer as R
from models.rasterizer import Fragments, interpolate, rasterize, scale_intrinsics, uv_map


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def unproject(points: torch.Tensor, K: torch.Tensor, z: float) -> torch.Tensor:
    """Camera points at depth z that project to the image points [N,2] (float64 maths)."""
    K = K.double()
    x = (points[:, 0].double() - K[0, 2]) / K[0, 0] * z
    y = (points[:, 1].double() - K[1, 2]) / K[1, 1] * z
    return torch.stack([x, y, torch.full_like(x, z)], 1).float()


def pixel_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return cols.double(), rows.double()


def edge64(a, b, px, py):
    return (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])


def triangle_inside(screen: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """Inside mask and the smallest |edge distance| of pixel centres for a screen triangle [3,2]."""
    s = screen.double()
    area = edge64(s[0], s[1], s[2][0], s[2][1])
    dists, inside = [], torch.ones_like(px, dtype=torch.bool)
    for i, j in ((1, 2), (2, 0), (0, 1)):
        e = edge64(s[i], s[j], px, py) * math.copysign(1.0, float(area))
        inside &= e >= 0
        dists.append(e.abs() / torch.linalg.norm(s[j] - s[i]))
    return inside, torch.stack(dists).amin(0)


def uv_sphere(n_lat: int, n_lon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit UV sphere, faces wound counter-clockwise seen from outside (outward normals)."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    phi = torch.arange(n_lon, dtype=torch.float64) * 2 * math.pi / n_lon
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    verts = torch.cat([ring, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)])
    top, bottom = len(verts) - 2, len(verts) - 1

    def idx(i, j):
        return i * n_lon + j % n_lon

    faces = []
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [[a, b, c], [b, d, c]]
    for j in range(n_lon):
        faces += [[top, idx(0, j + 1), idx(0, j)], [bottom, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)]]
    faces = torch.tensor(faces)
    # Orient every face so that its right-hand normal points outward.
    v = verts[faces]
    normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1)
    outward = (normal * v.mean(1)).sum(1) > 0
    faces = torch.where(outward[:, None], faces, faces[:, [0, 2, 1]])
    return verts, faces


def sphere_scene(center=(0.07, -0.04, 3.0), radius=0.8, n_lat=24, n_lon=40):
    verts, faces = uv_sphere(n_lat, n_lon)
    verts = verts * radius + torch.tensor(center, dtype=torch.float64)
    return verts.float(), faces


def reference(vertices, faces, K, height, width, near=1e-3):
    """Brute-force float64 z-buffer: face id per pixel, and a mask of unambiguous pixels."""
    px, py = pixel_centres(height, width)
    v = vertices.double()
    K = K.double()
    u = K[0, 0] * v[:, 0] / v[:, 2] + K[0, 1] * v[:, 1] / v[:, 2] + K[0, 2]
    w = K[1, 1] * v[:, 1] / v[:, 2] + K[1, 2]
    best = torch.full((height, width), math.inf, dtype=torch.float64)
    second = best.clone()
    face_id = torch.full((height, width), -1)
    clear = torch.ones(height, width, dtype=torch.bool)
    for f, corners in enumerate(faces.tolist()):
        if min(float(v[c, 2]) for c in corners) <= near:
            continue
        screen = torch.stack([u[corners], w[corners]], 1)
        area = float(edge64(screen[0], screen[1], screen[2][0], screen[2][1]))
        if area == 0:
            continue
        inside, dist = triangle_inside(screen, px, py)
        clear &= dist > 1e-4
        lam = torch.stack(
            [edge64(screen[i], screen[j], px, py) / area for i, j in ((1, 2), (2, 0), (0, 1))]
        )
        z = 1.0 / (lam / v[corners, 2][:, None, None]).sum(0)
        z = torch.where(inside, z, math.inf)
        nearer = z < best
        second = torch.where(nearer, best, torch.minimum(second, z))
        best = torch.where(nearer, z, best)
        face_id = torch.where(nearer, f, face_id)
    clear &= torch.isinf(second) | (second - best > 1e-6 * best)
    return face_id, clear


# ---------------------------------------------------------------------------- coverage


def test_single_triangle_covers_expected_pixel_centres():
    K = intrinsics(50.0, 50.0, 3.5, 2.5)
    screen = torch.tensor([[2.3, 1.4], [14.7, 3.1], [5.2, 12.6]], dtype=torch.float64)
    verts = unproject(screen, K, 2.0)[None]
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, faces, K, (16, 18))

    px, py = pixel_centres(16, 18)
    expected, dist = triangle_inside(screen, px, py)
    assert dist.amin() > 1e-3  # no pixel centre is borderline, so the set is exact
    assert expected.sum() > 40
    assert torch.equal(frags.mask[0], expected)
    assert torch.equal(frags.face_id[0][expected], torch.zeros(int(expected.sum()), dtype=torch.int64))
    assert torch.allclose(frags.depth[0][expected], torch.tensor(2.0), atol=1e-6)
    assert torch.all(frags.depth[0][~expected] == 0) and torch.all(frags.bary[0][~expected] == 0)

    # Barycentrics reproduce the 3D point on each pixel's ray.
    points = interpolate(frags, verts[0][faces])[0][expected]
    ray = unproject(torch.stack([px[expected], py[expected]], 1), K, 2.0)
    assert torch.allclose(points, ray, atol=1e-5)
    assert torch.allclose(frags.bary[0][expected].sum(-1), torch.tensor(1.0), atol=1e-6)


def test_pixel_centre_convention_single_pixel():
    # A small triangle around the image point (5, 3) covers exactly pixel (row 3, col 5).
    K = intrinsics(100.0, 100.0, 7.5, 4.5)
    screen = torch.tensor([[4.8, 2.8], [5.4, 2.9], [5.0, 3.4]])
    frags = rasterize(unproject(screen, K, 1.5)[None], torch.tensor([[0, 1, 2]]), K, (8, 10))
    assert frags.mask[0].nonzero().tolist() == [[3, 5]]


@pytest.mark.parametrize("flip", [False, True])
def test_quad_with_diagonal_through_pixel_centres_is_watertight(flip):
    # Corners land exactly on pixel centres (power-of-two maths), so both the outline and the
    # diagonal (2,3)-(10,9), which passes through the centre (6,6), hit centres exactly.
    K = intrinsics(64.0, 64.0, 0.0, 0.0)
    corners = torch.tensor([[2.0, 3.0], [10.0, 3.0], [10.0, 9.0], [2.0, 9.0]])
    verts = torch.cat([corners / 32.0, torch.full((4, 1), 2.0)], 1)[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    if flip:
        faces = faces[:, [0, 2, 1]]
    frags = rasterize(verts, faces, K, (12, 14))
    expected = torch.zeros(12, 14, dtype=torch.bool)
    expected[3:10, 2:11] = True  # inclusive edges: rows 3..9, cols 2..10
    assert torch.equal(frags.mask[0], expected)
    assert set(frags.face_id[0][expected].tolist()) == {0, 1}
    assert torch.allclose(frags.depth[0][expected], torch.tensor(2.0))


def fan(center: tuple[float, float], generator: torch.Generator):
    """A triangle fan whose spokes pass (mathematically) through integer pixel centres."""
    c = torch.tensor(center, dtype=torch.float64)
    angles = torch.sort(torch.rand(24, generator=generator, dtype=torch.float64) * 2 * math.pi).values
    on_spoke = torch.round(c + 3.0 * torch.stack([angles.cos(), angles.sin()], 1))
    scale = 1.6 + 0.5 * torch.rand(24, 1, generator=generator, dtype=torch.float64)
    ring = c + scale * (on_spoke - c)
    angle = torch.atan2(ring[:, 1] - c[1], ring[:, 0] - c[0])
    order = torch.argsort(angle)
    ring, on_spoke = ring[order], on_spoke[order]
    verts = torch.cat([c[None], ring])
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 24] for k in range(24)])
    return verts, faces, on_spoke


def test_fans_with_spokes_through_pixel_centres_have_no_holes():
    # With K = identity-like and z = 1 the image point is (x, y) itself; the fan vertices are
    # not representable, so a spoke passes a rounding error beside its pixel centre and only
    # canonical edge evaluation keeps the two adjacent triangles from both missing it.
    generator = torch.Generator().manual_seed(3)
    K = intrinsics(1.0, 1.0, 0.0, 0.0)
    all_verts, all_faces, must_cover = [], [], []
    offset = 0
    for cy in (8.37, 23.71):
        for cx in (8.13, 24.59, 40.91):
            verts, faces, on_spoke = fan((cx, cy), generator)
            all_verts.append(verts)
            all_faces.append(faces + offset)
            offset += len(verts)
            must_cover.append(on_spoke)
            px, py = pixel_centres(32, 50)
            inner = min(
                float(
                    edge64(verts[a], verts[b], torch.tensor(cx), torch.tensor(cy)).abs()
                    / torch.linalg.norm(verts[b] - verts[a])
                )
                for a, b in faces[:, 1:].tolist()
            )
            disc = (px - cx) ** 2 + (py - cy) ** 2 < (inner - 0.01) ** 2
            must_cover.append(torch.stack([px[disc], py[disc]], 1))
    verts = torch.cat([torch.cat(all_verts), torch.ones(offset, 1, dtype=torch.float64)], 1)
    faces = torch.cat(all_faces)
    for flip in (False, True):
        f = faces[:, [0, 2, 1]] if flip else faces
        frags = rasterize(verts.float()[None], f, K, (32, 50))
        points = torch.cat(must_cover).long()
        covered = frags.mask[0][points[:, 1], points[:, 0]]
        assert bool(covered.all()), f"holes at {points[~covered].tolist()}"


# ---------------------------------------------------------------------------- depth


def two_triangles(z_a: float, z_b: float):
    K = intrinsics(40.0, 40.0, 10.0, 10.0)
    a = unproject(torch.tensor([[2.2, 2.1], [17.6, 3.3], [6.1, 17.4]]), K, z_a)
    b = unproject(torch.tensor([[3.4, 16.9], [17.8, 15.2], [11.3, 1.7]]), K, z_b)
    return torch.cat([a, b])[None], K


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_nearer_triangle_wins_regardless_of_face_order(order):
    verts, K = two_triangles(3.0, 2.0)  # triangle b (vertices 3..5) is nearer
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])[order]
    frags = rasterize(verts, tri, K, (20, 20))
    px, py = pixel_centres(20, 20)
    in_a, _ = triangle_inside(torch.tensor([[2.2, 2.1], [17.6, 3.3], [6.1, 17.4]]), px, py)
    in_b, _ = triangle_inside(torch.tensor([[3.4, 16.9], [17.8, 15.2], [11.3, 1.7]]), px, py)
    b_id = order.index(1)
    assert (in_a & in_b).sum() > 20
    assert torch.all(frags.face_id[0][in_b] == b_id)
    assert torch.all(frags.face_id[0][in_a & ~in_b] == 1 - b_id)
    assert torch.allclose(frags.depth[0][in_b], torch.tensor(2.0))


def test_exact_depth_tie_goes_to_lowest_face_id():
    verts, K = two_triangles(2.0, 2.0)
    faces = torch.tensor([[3, 4, 5], [0, 1, 2], [3, 4, 5]])  # face 2 duplicates face 0
    frags = rasterize(verts, faces, K, (20, 20))
    assert 2 not in frags.face_id.unique().tolist()
    frags = rasterize(verts, faces[[2, 1, 0]], K, (20, 20))
    assert 2 not in frags.face_id.unique().tolist()


def test_interpenetrating_triangles_split_along_their_intersection():
    # Triangle 0 lies in the plane z = 2; triangle 1 is tilted through it (z from 1.4 to 2.7),
    # so each wins on its own side of the intersection line.
    K = intrinsics(30.0, 30.0, 12.0, 10.0)
    screen = torch.tensor([[1.3, 1.2], [22.7, 2.4], [11.6, 18.8]], dtype=torch.float64)
    flat = unproject(screen, K, 2.0)
    slanted = torch.tensor([[-0.8, -0.6, 1.4], [0.9, -0.5, 2.7], [0.1, 0.7, 2.0]])
    verts = torch.cat([flat, slanted])[None]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, faces, K, (20, 24))
    ref, clear = reference(verts[0], faces, K, 20, 24)
    assert (ref[clear] == 0).sum() > 30 and (ref[clear] == 1).sum() > 30
    assert torch.equal(frags.face_id[0][clear], ref[clear])
    assert clear.float().mean() > 0.9


def test_perspective_correct_interpolation_on_slanted_quad():
    K = intrinsics(60.0, 60.0, 15.5, 11.5)
    verts = torch.tensor([[-0.5, -0.4, 1.0], [0.5, -0.4, 1.0], [2.0, 1.6, 4.0], [-2.0, 1.6, 4.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(verts[None], faces, K, (24, 32))
    mask = frags.mask[0]
    assert mask.sum() > 200
    px, py = pixel_centres(24, 32)
    ray = torch.stack([(px - 15.5) / 60.0, (py - 11.5) / 60.0, torch.ones_like(px)], -1)
    # Plane through the quad: n . X = d; the ray X = t * ray hits it at t = d / (n . ray).
    v = verts.double()
    n = torch.cross(v[1] - v[0], v[3] - v[0], dim=0)
    t = (n @ v[0]) / (ray @ n)
    assert torch.allclose(frags.depth[0][mask].double(), t[mask], rtol=1e-5)
    points = interpolate(frags, verts[faces])[0][mask].double()
    assert torch.allclose(points, (t[..., None] * ray)[mask], atol=1e-4)

    # Screen-space (affine) interpolation of the depth would be far off: the test can tell.
    u = K[0, 0] * verts[:, 0] / verts[:, 2] + K[0, 2]
    w = K[1, 1] * verts[:, 1] / verts[:, 2] + K[1, 2]
    affine = torch.zeros_like(px)
    for tri in faces.tolist():
        s = torch.stack([u[tri], w[tri]], 1).double()
        inside, _ = triangle_inside(s, px, py)
        area = edge64(s[0], s[1], s[2][0], s[2][1])
        lam = [edge64(s[i], s[j], px, py) / area for i, j in ((1, 2), (2, 0), (0, 1))]
        z = sum(lam[k] * v[tri[k], 2] for k in range(3))
        affine = torch.where(inside, z, affine)
    assert (affine[mask] - t[mask]).abs().max() > 0.3


# ---------------------------------------------------------------------------- degenerate input


def test_off_screen_geometry_renders_nothing():
    K = intrinsics(50.0, 50.0, 16.0, 12.0)
    verts = torch.tensor([[[5.0, 0.0, 2.0], [6.0, 0.0, 2.0], [5.5, 1.0, 2.0]]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), K, (24, 32))
    assert not frags.mask.any() and frags.face_id.shape == (1, 24, 32)


def test_geometry_behind_or_crossing_the_camera_renders_nothing():
    K = intrinsics(50.0, 50.0, 16.0, 12.0)
    verts = torch.tensor(
        [
            [[-0.3, -0.2, -2.0], [0.3, -0.2, -2.0], [0.0, 0.3, -2.0], [0.0, 0.0, 0.0], [0.2, 0.2, 1.0]],
        ]
    )
    faces = torch.tensor([[0, 1, 2], [0, 1, 4], [3, 4, 2]])  # behind; crossing z=0; on the camera
    frags = rasterize(verts, faces, K, (24, 32))
    assert not frags.mask.any()
    for t in (frags.bary, frags.depth):
        assert torch.isfinite(t).all() and not t.any()


def test_degenerate_faces_are_skipped():
    K = intrinsics(50.0, 50.0, 16.0, 12.0)
    verts = torch.tensor([[[-0.3, -0.2, 2.0], [0.3, 0.2, 2.0], [0.0, 0.0, 2.0], [0.1, 0.3, 2.0]]])
    faces = torch.tensor([[0, 1, 2], [1, 1, 3]])  # collinear; repeated vertex
    frags = rasterize(verts, faces, K, (24, 32))
    assert not frags.mask.any()


# ---------------------------------------------------------------------------- closed meshes


def test_closed_sphere_has_no_holes_and_matches_the_analytic_silhouette():
    verts, faces = sphere_scene()
    K = intrinsics(40.0, 40.0, 31.3, 23.6)
    frags = rasterize(verts[None], faces, K, (48, 64))
    px, py = pixel_centres(48, 64)
    ray = torch.stack([(px - 31.3) / 40.0, (py - 23.6) / 40.0, torch.ones_like(px)], -1)
    ray = ray / ray.norm(dim=-1, keepdim=True)
    center = torch.tensor([0.07, -0.04, 3.0], dtype=torch.float64)
    miss = (center - (ray @ center)[..., None] * ray).norm(dim=-1)  # ray-to-centre distance
    inner = 0.8 * math.cos(math.pi / 24) * math.cos(math.pi / 40)  # inscribed-ball radius
    assert (miss < inner - 0.01).sum() > 300
    assert frags.mask[0][miss < inner - 0.01].all()
    assert not frags.mask[0][miss > 0.8 + 0.01].any()
    hit = miss < inner - 0.01
    along = (ray @ center)[hit]
    near_outer = along - (0.8**2 - miss[hit] ** 2).sqrt()
    near_inner = along - (inner**2 - miss[hit] ** 2).sqrt()
    depth = frags.depth[0][hit].double() / ray[hit][:, 2]  # distance along the unit ray
    assert torch.all(depth >= near_outer - 1e-4) and torch.all(depth <= near_inner + 1e-4)


def test_backface_culling_does_not_change_a_closed_mesh():
    verts, faces = sphere_scene()
    K = intrinsics(40.0, 40.0, 31.3, 23.6)
    full = rasterize(verts[None], faces, K, (48, 64))
    culled = rasterize(verts[None], faces, K, (48, 64), cull_backfaces=True)
    assert torch.equal(full.face_id, culled.face_id)
    assert torch.equal(full.bary, culled.bary)
    assert torch.equal(full.depth, culled.depth)


def test_backface_culling_of_one_triangle_seen_from_both_sides():
    K = intrinsics(50.0, 50.0, 10.0, 10.0)
    # (v1-v0) x (v2-v0) = (0,0,-1): toward the camera, counter-clockwise in the image.
    verts = torch.tensor([[[-0.1, -0.1, 1.0], [-0.1, 0.2, 1.0], [0.2, -0.1, 1.0]]])
    front, back = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    assert rasterize(verts, front, K, (20, 20), cull_backfaces=True).mask.sum() > 50
    assert not rasterize(verts, back, K, (20, 20), cull_backfaces=True).mask.any()
    assert rasterize(verts, back, K, (20, 20)).mask.sum() > 50


# ---------------------------------------------------------------------------- batching


def random_soup(generator: torch.Generator, num_faces: int = 30, frames: int = 2):
    verts = torch.rand(frames, num_faces * 3, 3, generator=generator) * 2 - 1
    verts[..., 2] = verts[..., 2] * 0.8 + 2.5
    faces = torch.arange(num_faces * 3).view(num_faces, 3)
    return verts, faces


def test_matches_brute_force_reference_on_random_triangles():
    generator = torch.Generator().manual_seed(0)
    verts, faces = random_soup(generator)
    K = torch.stack([intrinsics(18.0, 20.0, 15.7, 11.2), intrinsics(22.0, 19.0, 16.1, 12.4)])
    frags = rasterize(verts, faces, K, (24, 32))
    for b in range(2):
        ref, clear = reference(verts[b], faces, K[b], 24, 32)
        assert clear.float().mean() > 0.85
        assert torch.equal(frags.face_id[b][clear], ref[clear])


def test_batch_equals_per_frame_calls():
    generator = torch.Generator().manual_seed(1)
    verts, faces = random_soup(generator, frames=3)
    K = intrinsics(18.0, 18.0, 15.5, 11.5)
    batch = rasterize(verts, faces, K, (24, 32))
    for b in range(3):
        single = rasterize(verts[b : b + 1], faces, K, (24, 32))
        assert torch.equal(batch.face_id[b], single.face_id[0])
        assert torch.equal(batch.bary[b], single.bary[0])
        assert torch.equal(batch.depth[b], single.depth[0])


def test_chunked_processing_equals_unchunked(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    verts, faces = random_soup(generator, num_faces=20)
    # Add one face larger than the screen (many tiles) behind everything.
    big = torch.tensor([[-9.0, -9.0, 4.0], [9.0, -9.0, 4.0], [0.0, 9.0, 4.0]]).expand(2, 3, 3)
    verts = torch.cat([verts, big], 1)
    faces = torch.cat([faces, torch.tensor([[60, 61, 62]])])
    K = intrinsics(30.0, 30.0, 40.3, 30.2)
    whole = rasterize(verts, faces, K, (60, 80))
    assert (whole.face_id == 20).sum() > 1000
    monkeypatch.setattr(R, "MAX_PAIRS_PER_CHUNK", 7)
    monkeypatch.setattr(R, "_DECODE_SLICE", 97)
    chunked = rasterize(verts, faces, K, (60, 80))
    assert torch.equal(whole.face_id, chunked.face_id)
    assert torch.equal(whole.bary, chunked.bary)
    assert torch.equal(whole.depth, chunked.depth)


# ---------------------------------------------------------------------------- attributes


def test_uv_map_of_a_quad_with_known_layout():
    K = intrinsics(64.0, 64.0, 0.0, 0.0)
    corners = torch.tensor([[2.0, 3.0], [10.0, 3.0], [10.0, 9.0], [2.0, 9.0]])
    verts = torch.cat([corners / 32.0, torch.full((4, 1), 2.0)], 1)[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv_coords = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    uv, mask = uv_map(rasterize(verts, faces, K, (12, 14)), uv_coords, faces)
    px, py = pixel_centres(12, 14)
    expected = torch.stack([(px - 2) / 8, (py - 3) / 6], -1).float()
    assert mask[0].sum() == 63
    assert torch.allclose(uv[0][mask[0]], expected[mask[0]], atol=1e-6)
    assert not uv[0][~mask[0]].any()


def test_interpolate_rejects_bad_shapes_and_accepts_per_frame_attributes():
    bary = torch.tensor([[[[0.2, 0.3, 0.5], [0.0, 0.0, 0.0]]]])
    frags = Fragments(torch.tensor([[[0, -1]]]), bary, torch.ones(1, 1, 2))
    attributes = torch.tensor([[[1.0], [2.0], [3.0]]])
    assert torch.allclose(interpolate(frags, attributes), torch.tensor([[[[2.3], [0.0]]]]))
    assert torch.allclose(interpolate(frags, attributes[None]), torch.tensor([[[[2.3], [0.0]]]]))
    with pytest.raises(ValueError, match="face_attributes"):
        interpolate(frags, torch.ones(1, 2, 1))


def test_scale_intrinsics_keeps_pixel_centres():
    K = torch.tensor([[100.0, 0.5, 63.5], [0.0, 90.0, 47.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    half = scale_intrinsics(K, 0.5, 0.25)
    assert torch.allclose(
        half, torch.tensor([[50.0, 0.25, 31.5], [0.0, 22.5, 11.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    )
    assert half.dtype == torch.float64
    # Image point u maps to (u + 0.5) * s - 0.5 for any camera point.
    point = torch.tensor([0.3, -0.2, 2.0], dtype=torch.float64)
    uvw = K @ point
    uvw_half = half @ point
    assert torch.allclose(uvw_half[0] / uvw_half[2], (uvw[0] / uvw[2] + 0.5) * 0.5 - 0.5)
    assert torch.allclose(uvw_half[1] / uvw_half[2], (uvw[1] / uvw[2] + 0.5) * 0.25 - 0.5)
    batched = scale_intrinsics(K.expand(3, 3, 3), 0.5, 0.25)
    assert torch.allclose(batched, half.expand(3, 3, 3))


def test_render_at_a_third_matches_subsampled_full_render():
    # At scale 1/3, low-res pixel j sits on full-res pixel 3j + 1: the centres coincide.
    verts, faces = sphere_scene()
    K = intrinsics(90.0, 90.0, 94.2, 70.9)
    full = rasterize(verts[None], faces, K, (144, 192))
    third = rasterize(verts[None], faces, scale_intrinsics(K, 1 / 3, 1 / 3), (48, 64))
    sub = Fragments(full.face_id[:, 1::3, 1::3], full.bary[:, 1::3, 1::3], full.depth[:, 1::3, 1::3])
    same = third.face_id == sub.face_id
    assert third.mask.sum() > 200
    assert same.float().mean() > 0.995
    assert torch.allclose(third.bary[same], sub.bary[same], atol=1e-4)
    assert torch.allclose(third.depth[same], sub.depth[same], atol=1e-5)


# ---------------------------------------------------------------------------- validation


def _good():
    verts = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])
    return verts, torch.tensor([[0, 1, 2]]), torch.eye(3)


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda v, f, k, s: (v[0], f, k, s), "vertices"),
        (lambda v, f, k, s: (v.long(), f, k, s), "vertices"),
        (lambda v, f, k, s: (v * float("nan"), f, k, s), "vertices"),
        (lambda v, f, k, s: (v, f.float(), k, s), "faces"),
        (lambda v, f, k, s: (v, f[:, :2], k, s), "faces"),
        (lambda v, f, k, s: (v, f + 1, k, s), "faces"),
        (lambda v, f, k, s: (v, f - 1, k, s), "faces"),
        (lambda v, f, k, s: (v, f, k[:2], s), "intrinsics"),
        (lambda v, f, k, s: (v, f, k.expand(2, 3, 3), s), "intrinsics"),
        (lambda v, f, k, s: (v, f, k * float("inf"), s), "intrinsics"),
        (lambda v, f, k, s: (v, f, k, (0, 4)), "image_size"),
        (lambda v, f, k, s: (v, f, k, (4,)), "image_size"),
        (lambda v, f, k, s: (v, f, k, (4.5, 4)), "image_size"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(change, name):
    args = change(*_good(), (4, 4))
    with pytest.raises(ValueError, match=name):
        rasterize(*args)


def test_invalid_options_raise():
    verts, faces, K = _good()
    with pytest.raises(ValueError, match="backend"):
        rasterize(verts, faces, K, (4, 4), backend="opengl")
    with pytest.raises(ValueError, match="near"):
        rasterize(verts, faces, K, (4, 4), near=0.0)


@pytest.mark.skipif(importlib.util.find_spec("nvdiffrast") is not None, reason="nvdiffrast is installed")
def test_nvdiffrast_backend_without_nvdiffrast_raises_import_error():
    verts, faces, K = _good()
    with pytest.raises(ImportError, match="nvdiffrast"):
        rasterize(verts, faces, K, (4, 4), backend="nvdiffrast")


def test_empty_mesh_renders_background():
    frags = rasterize(torch.zeros(2, 0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.eye(3), (3, 5))
    assert frags.face_id.shape == (2, 3, 5) and not frags.mask.any()
    assert frags.bary.shape == (2, 3, 5, 3) and frags.depth.shape == (2, 3, 5)


# ---------------------------------------------------------------------------- GPU


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def body_like_batch(frames: int = 4):
    """A ~13.8k-face sphere turning over a few frames, covering ~20% of a 240x360 image."""
    verts, faces = sphere_scene(radius=0.95, n_lat=60, n_lon=116)
    center = torch.tensor([0.07, -0.04, 3.0])
    out = []
    for k, a in enumerate(torch.linspace(0, 1.0, frames).tolist()):
        c, s = math.cos(a), math.sin(a)
        m = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        out.append((verts - center) @ m.T + center + torch.tensor([0.01 * k, 0.0, 0.0]))
    return torch.stack(out), faces, intrinsics(240.0, 240.0, 179.5, 119.5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cull", [False, True])
def test_cuda_torch_backend_matches_cpu(cull):
    verts, faces, K = body_like_batch()
    cpu = rasterize(verts, faces, K, (240, 360), cull_backfaces=cull, backend="torch")
    args = (verts.cuda(), faces.cuda(), K.cuda(), (240, 360))
    gpu = rasterize(*args, cull_backfaces=cull, backend="torch")
    assert gpu.face_id.device.type == "cuda" and gpu.bary.device.type == "cuda"
    same = gpu.face_id.cpu() == cpu.face_id
    assert same.float().mean() > 0.999
    assert torch.equal(gpu.mask.cpu(), cpu.mask) or (gpu.mask.cpu() != cpu.mask).float().mean() < 1e-4
    assert torch.allclose(gpu.bary.cpu()[same], cpu.bary[same], atol=1e-4)
    assert torch.allclose(gpu.depth.cpu()[same], cpu.depth[same], atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("nvdiffrast") is None, reason="needs nvdiffrast")
@pytest.mark.parametrize("cull", [False, True])
def test_nvdiffrast_backend_matches_torch(cull):
    # nvdiffrast snaps vertices to a sub-pixel grid, so pixels within ~1/100 px of an edge between
    # two faces may go to the neighbour: compare the surface points seen, not only the face ids.
    verts, faces, K = body_like_batch()
    args = (verts.cuda(), faces.cuda(), K.cuda(), (240, 360))
    ref = rasterize(*args, cull_backfaces=cull, backend="torch")
    nv = rasterize(*args, cull_backfaces=cull, backend="nvdiffrast")
    assert nv.face_id.device.type == "cuda"
    assert (nv.mask != ref.mask).float().mean() < 1e-3
    both = nv.mask & ref.mask
    same = nv.face_id == ref.face_id
    assert (same & both).sum() > 0.95 * both.sum()
    corners = verts.cuda()[:, faces.cuda()]
    points_ref, points_nv = interpolate(ref, corners), interpolate(nv, corners)
    assert torch.allclose(points_nv[both], points_ref[both], atol=1e-3)
    assert torch.allclose(nv.bary[same & both], ref.bary[same & both], atol=5e-3)
    assert torch.allclose(nv.depth[both], ref.depth[both], atol=1e-3)
