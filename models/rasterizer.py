"""Z-buffer triangle rasterizer: pure PyTorch (CPU and CUDA), with an optional nvdiffrast backend.

One module on purpose (~530 lines): the tiling, z-buffer and decode helpers are private steps of one algorithm that
share its conventions and chunk sizes; split apart they would only be read together.

Conventions shared by every function here:
- Vertices are in the camera frame, OpenCV convention: x right, y down, z forward, metres.
- Intrinsics `K` map a camera point to the image point (u, v) = (fx*x/z + s*y/z + cx, fy*y/z + cy).
- Pixel (row i, col j) is sampled at its centre, the image point (u=j, v=i): integer image
  coordinates are pixel centres.
- A face is front-facing when its right-hand normal (v1-v0)x(v2-v0) points toward the camera,
  i.e. it winds counter-clockwise as seen in the (y-down) image.
- Faces with any vertex at z <= `near` are dropped, not clipped: a body never crosses the camera
  plane, and geometry behind the camera simply renders nothing. Zero-area faces are skipped.

The torch backend enumerates, per face, the pixel centres in its screen bounding box (cut into
tiles, grouped into buckets of equal padded tile size so each group is one dense tensor), keeps
those inside all three edge functions, and resolves the z-buffer with one `scatter_reduce("amin")`
per chunk on an int64 key: the inverse depth's float32 bits in the high word (nearest wins), the
face id in the low word (lowest id wins exact ties). Barycentrics are then recomputed only for the
winning face of each covered pixel. Rasterization is not differentiable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

# Candidate (tile, pixel) pairs evaluated at once on CPU: bounds memory, keeps temporaries
# cache-sized. Other devices take _GPU_STEP_SCALE times more per step (fewer, larger kernels).
MAX_PAIRS_PER_CHUNK = 1 << 19
# Pixels of the z-buffer decoded into fragments at once on CPU (whole image rows, at least one).
_DECODE_SLICE = 1 << 18
_GPU_STEP_SCALE = 16
# Bounding boxes are cut into tiles of at most _TILE x _TILE pixels.
_TILE = 32
# Tile widths and heights are padded up to one of these, so few distinct dense shapes occur.
_BUCKET_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32)
# Bound on the inverse-depth slope per pixel (only slivers come near it).
_MAX_SLOPE = 1e20
_EMPTY = torch.iinfo(torch.int64).max
# Positive finite float32 bit patterns lie below this; C - bits(w) is small for large w (near).
_KEY_OFFSET = 0x7F800000
_BACKENDS = ("auto", "torch", "nvdiffrast")


@dataclass
class Fragments:
    """Per-pixel result of a rasterization; background pixels hold -1 / zeros."""

    face_id: Tensor  # [B,H,W] int64, -1 where no face covers the pixel
    bary: Tensor  # [B,H,W,3] float32, perspective-correct barycentrics
    depth: Tensor  # [B,H,W] float32, camera-space z of the visible surface

    @property
    def mask(self) -> Tensor:
        """[B,H,W] bool, True where a face covers the pixel."""
        return self.face_id >= 0


@dataclass
class _Projection:
    """Image coordinates (u, v) and camera depth z of every vertex, [B,V] each."""

    u: Tensor
    v: Tensor
    z: Tensor
    in_front: Tensor  # z > near


@dataclass
class _Faces:
    """The (frame, face) pairs that can cover a pixel, with their corners."""

    frame: Tensor  # [N] int64
    face: Tensor  # [N] int64
    x: Tensor  # [3,N] float32, image u of the corners
    y: Tensor  # [3,N] float32, image v of the corners
    z: Tensor  # [3,N] float32, camera z of the corners


def rasterize(
    vertices: Tensor,
    faces: Tensor,
    intrinsics: Tensor,
    image_size: tuple[int, int],
    *,
    cull_backfaces: bool = False,
    near: float = 1e-3,
    backend: str = "auto",
) -> Fragments:
    """Rasterize a batch of posed meshes sharing one topology.

    vertices [B,V,3] camera frame; faces [F,3] integer; intrinsics [3,3] or [B,3,3];
    image_size (H, W). Faces with a vertex at z <= `near` are dropped (never clipped);
    `cull_backfaces` also drops faces seen from behind, which on a closed mesh only saves time.
    `backend`: "torch", "nvdiffrast" (CUDA tensors only), or "auto" (nvdiffrast when importable
    and the tensors are on CUDA, else torch). Every output tensor is on `vertices.device`.
    """
    _validate(vertices, faces, intrinsics, image_size, near, backend)
    height, width = int(image_size[0]), int(image_size[1])
    device = vertices.device
    with torch.no_grad():
        verts = vertices.to(torch.float32)
        faces = faces.to(device=device, dtype=torch.int64)
        K = intrinsics.to(device=device, dtype=torch.float32).expand(verts.shape[0], 3, 3)
        faces_t = faces.T.contiguous()
        proj = _project(verts, K, near)
        setup = _select_faces(proj, faces_t, K, cull_backfaces)
        if _use_nvdiffrast(backend, device):
            return _rasterize_nvdiffrast(proj, faces_t, setup, height, width)
        return _rasterize_torch(proj, faces_t, setup, height, width)


def interpolate(fragments: Fragments, face_attributes: Tensor) -> Tensor:
    """Interpolate per-corner attributes [F,3,D] (or per frame [B,F,3,D]) to [B,H,W,D].

    Background pixels are zero.
    """
    if face_attributes.ndim not in (3, 4) or face_attributes.shape[-2] != 3:
        raise ValueError(
            f"face_attributes must be [F,3,D] or [B,F,3,D], got {tuple(face_attributes.shape)}"
        )
    face_id = fragments.face_id
    batch = face_id.shape[0]
    if face_attributes.ndim == 4 and face_attributes.shape[0] != batch:
        raise ValueError(
            f"face_attributes has {face_attributes.shape[0]} frames, fragments have {batch}"
        )
    attributes = face_attributes.to(device=face_id.device, dtype=torch.float32)
    return _interpolate(fragments, attributes, fragments.mask)


def _interpolate(fragments: Fragments, attributes: Tensor, mask: Tensor) -> Tensor:
    """`interpolate` of float32 attributes on the fragments' device, given their `mask`."""
    face_id = fragments.face_id
    covered = mask.reshape(-1).nonzero().squeeze(1)
    face = face_id.reshape(-1).index_select(0, covered)
    if attributes.ndim == 4:
        frame = torch.div(covered, face_id[0].numel(), rounding_mode="floor")
        corners = attributes[frame, face]
    else:
        corners = attributes.index_select(0, face)
    values = torch.einsum("nk,nkd->nd", fragments.bary.reshape(-1, 3).index_select(0, covered), corners)
    out = attributes.new_zeros(face_id.numel(), attributes.shape[-1])
    return out.index_copy_(0, covered, values).view(*face_id.shape, attributes.shape[-1])


def uv_map(fragments: Fragments, uv_coords: Tensor, uv_faces: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel UV coordinates [B,H,W,2] (zero on background) and the body mask [B,H,W].

    uv_coords [T,2] are the UV vertices; uv_faces [F,3] index them per mesh face.
    """
    if uv_coords.ndim != 2 or uv_coords.shape[1] != 2:
        raise ValueError(f"uv_coords must be [T,2], got {tuple(uv_coords.shape)}")
    if uv_faces.ndim != 2 or uv_faces.shape[1] != 3:
        raise ValueError(f"uv_faces must be [F,3], got {tuple(uv_faces.shape)}")
    device = fragments.face_id.device
    corners = uv_coords.to(device=device, dtype=torch.float32)[uv_faces.to(device=device, dtype=torch.int64)]
    mask = fragments.mask
    return _interpolate(fragments, corners, mask), mask


def scale_intrinsics(K: Tensor, sx: float, sy: float) -> Tensor:
    """Intrinsics [...,3,3] for the image resized by (sx, sy), keeping pixel centres at integers.

    An image point u maps to (u + 0.5) * sx - 0.5, so fx' = fx*sx, cx' = (cx+0.5)*sx - 0.5.
    """
    if K.ndim < 2 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be [...,3,3], got {tuple(K.shape)}")
    if not (0 < sx < float("inf") and 0 < sy < float("inf")):
        raise ValueError(f"sx and sy must be positive and finite, got {sx}, {sy}")
    scale = K.new_tensor([sx, sy, 1.0]).unsqueeze(-1)
    shift = K.new_tensor([0.5 * (sx - 1.0), 0.5 * (sy - 1.0), 0.0])
    scaled = K * scale
    scaled[..., :, 2] += shift * K[..., 2, 2].unsqueeze(-1)
    return scaled


def _validate(
    vertices: Tensor,
    faces: Tensor,
    intrinsics: Tensor,
    image_size: tuple[int, int],
    near: float,
    backend: str,
) -> None:
    if not isinstance(vertices, Tensor) or vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be a [B,V,3] tensor, got {_describe(vertices)}")
    if not vertices.is_floating_point():
        raise ValueError(f"vertices must be floating point, got {vertices.dtype}")
    if not bool(torch.isfinite(vertices).all()):
        raise ValueError("vertices must be finite, found NaN or inf")
    if not isinstance(faces, Tensor) or faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be a [F,3] tensor, got {_describe(faces)}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor, got {faces.dtype}")
    num_vertices = vertices.shape[1]
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ValueError(
            f"faces index out of range [0, {num_vertices}): min {int(faces.min())}, "
            f"max {int(faces.max())}"
        )
    _validate_intrinsics(intrinsics, vertices.shape[0])
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    if not near > 0 or near == float("inf"):
        raise ValueError(f"near must be a positive finite number, got {near}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def _validate_intrinsics(intrinsics: Tensor, batch: int) -> None:
    if not isinstance(intrinsics, Tensor) or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [3,3] or [B,3,3], got {_describe(intrinsics)}")
    if intrinsics.ndim not in (2, 3) or (intrinsics.ndim == 3 and intrinsics.shape[0] != batch):
        raise ValueError(
            f"intrinsics must be [3,3] or [{batch},3,3] for {batch} frames, "
            f"got {tuple(intrinsics.shape)}"
        )
    if not intrinsics.is_floating_point() or not bool(torch.isfinite(intrinsics).all()):
        raise ValueError(f"intrinsics must be finite floating point, got {intrinsics.dtype}")
    last_row = intrinsics[..., 2, :].to(torch.float64)
    if not bool((last_row == last_row.new_tensor([0.0, 0.0, 1.0])).all()) or bool(
        (intrinsics[..., 1, 0] != 0).any()
    ):
        raise ValueError("intrinsics must be upper triangular with last row (0, 0, 1)")
    if bool((intrinsics[..., 0, 0] * intrinsics[..., 1, 1] == 0).any()):
        raise ValueError("intrinsics must have non-zero focal lengths")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def _project(vertices: Tensor, K: Tensor, near: float) -> _Projection:
    """Image coordinates of every vertex; vertices at z <= near get placeholder coordinates."""
    z = vertices[..., 2]
    in_front = z > near
    safe_z = torch.where(in_front, z, torch.ones_like(z))
    x = vertices[..., 0] / safe_z
    y = vertices[..., 1] / safe_z
    u = K[:, 0, 0, None] * x + K[:, 0, 1, None] * y + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * y + K[:, 1, 2, None]
    return _Projection(u, v, z, in_front)


def _corners(
    proj: _Projection, faces_t: Tensor, frame: Tensor, face: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """u, v, z of the corners of each (frame, face), [3,N] each; faces_t is faces.T."""
    base = frame * proj.u.shape[1]
    index = [faces_t[k].index_select(0, face) + base for k in range(3)]
    u, v, z = (
        torch.stack([t.reshape(-1).index_select(0, i) for i in index]) for t in (proj.u, proj.v, proj.z)
    )
    return u, v, z


def _select_faces(proj: _Projection, faces_t: Tensor, K: Tensor, cull_backfaces: bool) -> _Faces:
    """Faces entirely in front of `near`, non-degenerate and, if culling, front-facing."""
    batch, num_faces = proj.u.shape[0], faces_t.shape[1]
    corner = faces_t.reshape(-1)
    u, v = (t.index_select(1, corner).view(batch, 3, num_faces) for t in (proj.u, proj.v))
    area2 = _edge(u[:, 0], v[:, 0], u[:, 1], v[:, 1], u[:, 2], v[:, 2])  # [B,F]
    in_front = proj.in_front.index_select(1, corner).view(batch, 3, num_faces).all(1)
    keep = in_front & (area2 != 0) & torch.isfinite(area2)
    if cull_backfaces:
        # Positive area in the y-down image means clockwise there: a back face when fx*fy > 0.
        orientation = torch.sign(K[:, 0, 0] * K[:, 1, 1])[:, None]
        keep &= area2 * orientation < 0
    flat = keep.view(-1).nonzero().squeeze(1)
    frame = torch.div(flat, num_faces, rounding_mode="floor")
    face = flat - frame * num_faces
    return _Faces(frame, face, *_corners(proj, faces_t, frame, face))


def _edge(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Edge function of a->b at p: twice the signed area of (a, b, p)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _rasterize_torch(
    proj: _Projection, faces_t: Tensor, setup: _Faces, height: int, width: int
) -> Fragments:
    batch = proj.u.shape[0]
    keys = torch.full((batch * height * width,), _EMPTY, dtype=torch.int64, device=proj.u.device)
    tiles = _tiles(setup, height, width)
    if tiles.shape[1]:
        _zbuffer(keys, setup, tiles, height, width)
    return _decode(keys, proj, faces_t, (batch, height, width))


def _tiles(setup: _Faces, height: int, width: int) -> Tensor:
    """Cut each face's box of covered pixel centres into tiles of at most _TILE^2 pixels.

    Returns [5,T] int64 rows: face row in `setup`, first column, first row, width, height.
    """
    x0, nx = _pixel_span(setup.x, width)
    y0, ny = _pixel_span(setup.y, height)
    cols = (nx.clamp_min(0) + _TILE - 1) // _TILE
    per_face = cols * ((ny.clamp_min(0) + _TILE - 1) // _TILE)
    face = torch.repeat_interleave(torch.arange(len(nx), device=nx.device), per_face)
    first = torch.cumsum(per_face, 0) - per_face
    x0, y0, nx, ny, cols, first = (t.index_select(0, face) for t in (x0, y0, nx, ny, cols, first))
    local = torch.arange(len(face), device=nx.device) - first
    dy = torch.div(local, cols, rounding_mode="floor")
    dx = (local - dy * cols) * _TILE
    dy = dy * _TILE
    return torch.stack([face, x0 + dx, y0 + dy, (nx - dx).clamp_max(_TILE), (ny - dy).clamp_max(_TILE)])


def _pixel_span(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """First pixel centre in [min, max] over the corners ([3,N]) and how many, clipped to the image."""
    low = torch.minimum(torch.minimum(coords[0], coords[1]), coords[2])
    high = torch.maximum(torch.maximum(coords[0], coords[1]), coords[2])
    first = torch.ceil(low.clamp(-1, size)).to(torch.int64).clamp_min(0)
    last = torch.floor(high.clamp(-1, size)).to(torch.int64).clamp_max(size - 1)
    return first, last - first + 1


def _edge_table(setup: _Faces) -> Tensor:
    """Per face [17,N]: 3 edges x (ax, ay, sdx, sdy), then the inverse-depth plane (x0, y0, w0, p, q).

    Edge k joins the corners other than k; inside the face, sdx * (py - ay) - sdy * (px - ax) >= 0.
    (ax, ay) is the edge's lexicographically smaller end and (sdx, sdy) its direction times the
    sign of the face's area, so two faces sharing an edge compute bitwise-opposite values at every
    pixel (watertight). 1/z at pixel (px, py) is w0 + p * (px - x0) + q * (py - y0).
    """
    x, y = setup.x, setup.y
    area2 = _edge(x[0], y[0], x[1], y[1], x[2], y[2])
    sign = torch.sign(area2)
    start, end = [1, 2, 0], [2, 0, 1]
    ax, ay, bx, by = x[start], y[start], x[end], y[end]
    swap = (bx < ax) | ((bx == ax) & (by < ay))
    edges = [torch.where(swap, bx, ax), torch.where(swap, by, ay), sign * (bx - ax), sign * (by - ay)]
    w = 1.0 / setup.z
    dw1, dw2 = w[1] - w[0], w[2] - w[0]
    p = -((y[0] - y[2]) * dw1 + (y[1] - y[0]) * dw2) / area2
    q = ((x[0] - x[2]) * dw1 + (x[1] - x[0]) * dw2) / area2
    # Slivers can have huge or non-finite slopes: bound them so per-pixel sums stay finite.
    p, q = (torch.nan_to_num(t, nan=0.0).clamp_(-_MAX_SLOPE, _MAX_SLOPE) for t in (p, q))
    return torch.cat([torch.stack(edges, 1).view(12, -1), torch.stack([x[0], y[0], w[0], p, q])])


def _bucket_index(extent: Tensor) -> Tensor:
    sizes = torch.tensor(_BUCKET_SIZES, device=extent.device)
    return torch.searchsorted(sizes, extent.contiguous())


def _step_scale(device: torch.device) -> int:
    return 1 if device.type == "cpu" else _GPU_STEP_SCALE


def _zbuffer(keys: Tensor, setup: _Faces, tiles: Tensor, height: int, width: int) -> None:
    """Scatter the depth keys of every tile's inside pixels into `keys`, bucket by bucket."""
    num_sizes = len(_BUCKET_SIZES)
    bucket = _bucket_index(tiles[4]) * num_sizes + _bucket_index(tiles[3])
    bucket, order = torch.sort(bucket, stable=True)
    tiles = tiles.index_select(1, order)
    row = tiles[0]
    table = _edge_table(setup).index_select(1, row)
    face = setup.face.index_select(0, row).to(torch.int32)
    ints = torch.cat([(setup.frame.index_select(0, row) * (height * width))[None], tiles[1:]])
    counts = torch.bincount(bucket, minlength=num_sizes**2).tolist()
    start = 0
    for index, count in enumerate(counts):
        bh, bw = _BUCKET_SIZES[index // num_sizes], _BUCKET_SIZES[index % num_sizes]
        step = max(1, _step_scale(keys.device) * MAX_PAIRS_PER_CHUNK // (bh * bw))
        for lo in range(start, start + count, step):
            hi = min(lo + step, start + count)
            _zbuffer_chunk(keys, table[:, lo:hi], face[lo:hi], ints[:, lo:hi], bh, bw, width)
        start += count


def _zbuffer_chunk(
    keys: Tensor, table: Tensor, face: Tensor, ints: Tensor, bh: int, bw: int, width: int
) -> None:
    """Z-buffer G tiles padded to bh x bw pixels, laid out [bh,bw,G] so the inner loops are long."""
    frame_base, tx0, ty0, tile_w, tile_h = ints
    # Padding repeats a tile's last row and column: duplicates never change an amin.
    rows = ty0 + torch.minimum(torch.arange(bh, device=keys.device)[:, None], tile_h - 1)  # [bh,G]
    cols = tx0 + torch.minimum(torch.arange(bw, device=keys.device)[:, None], tile_w - 1)  # [bw,G]
    py, px = rows.to(torch.float32), cols.to(torch.float32)
    inside = scratch = None
    for k in range(3):
        ax, ay, sdx, sdy = table[4 * k : 4 * k + 4]
        row_term = (sdx * (py - ay))[:, None]
        col_term = (sdy * (px - ax))[None]
        if inside is None:
            inside = row_term - col_term
            scratch = torch.empty_like(inside)
        else:
            torch.minimum(inside, torch.sub(row_term, col_term, out=scratch), out=inside)
    x0, y0, w0, p, q = table[12:17]
    inv_depth = torch.add((w0 + q * (py - y0))[:, None], (p * (px - x0))[None], out=scratch)
    high = _KEY_OFFSET - inv_depth.clamp_min_(0).view(torch.int32)
    # Outside pixels (negative min edge) get the key _EMPTY, set through the sign bit (integer
    # ops vectorise, masked writes do not); adding 0.0 turns an inclusive -0.0 into +0.0.
    outside = inside.add_(0.0).view(torch.int32).bitwise_right_shift_(31)  # -1 or 0
    low = outside | face
    high.bitwise_or_(outside.bitwise_and_(_EMPTY >> 32))
    # Little-endian int32 pairs (low, high) read as one int64 key: high << 32 | low.
    key = torch.stack([low, high], -1).view(torch.int64)
    pixel = (frame_base + rows * width)[:, None] + cols[None]
    keys.scatter_reduce_(0, pixel.view(-1), key.view(-1), "amin")


def _decode(keys: Tensor, proj: _Projection, faces_t: Tensor, shape: tuple[int, int, int]) -> Fragments:
    """Turn the z-buffer keys into fragments in place, a few image rows at a time."""
    batch, height, width = shape
    keys = keys.view(batch, height * width)
    # Zeroed window by window below, while the window is in cache.
    bary = torch.empty(batch, height * width, 3, device=keys.device)
    depth = torch.empty(batch, height * width, device=keys.device)
    step = max(1, _step_scale(keys.device) * _DECODE_SLICE // width) * width
    for frame in range(batch):
        for lo in range(0, height * width, step):
            window = keys[frame, lo : lo + step]
            # Sign-extending the low word gives the face id, and -1 for _EMPTY.
            window.bitwise_left_shift_(32).bitwise_right_shift_(32)
            index = window.ge(0).nonzero().squeeze(1)
            face = window.index_select(0, index)
            window_bary, window_depth = _barycentrics(proj, faces_t, frame, index + lo, face, width)
            bary[frame, lo : lo + step].zero_().index_copy_(0, index, window_bary)
            depth[frame, lo : lo + step].zero_().index_copy_(0, index, window_depth)
    return Fragments(keys.view(shape), bary.view(*shape, 3), depth.view(shape))


def _barycentrics(
    proj: _Projection, faces_t: Tensor, frame: int, pixel: Tensor, face: Tensor, width: int
) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics [N,3] and depth [N] of `face` at flat pixels of a frame."""
    row = torch.div(pixel, width, rounding_mode="floor")
    px = (pixel - row * width).to(torch.float32)
    py = row.to(torch.float32)
    corner = [faces_t[k].index_select(0, face) for k in range(3)]
    x, y, z = ([t[frame].index_select(0, c) for c in corner] for t in (proj.u, proj.v, proj.z))
    screen = torch.stack([_edge(x[i], y[i], x[j], y[j], px, py) for i, j in ((1, 2), (2, 0), (0, 1))])
    # Inclusive edge tests let a pixel sit a rounding error outside; clamp to the triangle.
    screen = (screen / screen.sum(0)).clamp_min_(0)
    weights = screen / (screen.sum(0) * torch.stack(z))
    total = weights.sum(0)
    return (weights / total).T, 1.0 / total


@functools.cache
def _nvdiffrast() -> ModuleType | None:
    try:
        import nvdiffrast.torch as dr
    except ImportError:
        return None
    return dr


@functools.cache
def _nvdiffrast_context(device: torch.device) -> object:
    return _nvdiffrast().RasterizeCudaContext(device=device)


def _use_nvdiffrast(backend: str, device: torch.device) -> bool:
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and _nvdiffrast() is not None
    if _nvdiffrast() is None:
        raise ImportError(
            "backend='nvdiffrast' needs the nvdiffrast package (https://github.com/NVlabs/nvdiffrast); "
            "use backend='torch' or 'auto' without it"
        )
    if device.type != "cuda":
        raise ValueError(f"backend='nvdiffrast' needs CUDA tensors, vertices are on {device}")
    return True


def _rasterize_nvdiffrast(
    proj: _Projection, faces_t: Tensor, setup: _Faces, height: int, width: int
) -> Fragments:
    """The same fragments from nvdiffrast's CUDA rasterizer.

    The selected faces go in range mode, one triangle range per frame, so near-plane dropping and
    culling match the torch backend. nvdiffrast samples output row i, column j at NDC
    ((2j+1)/W - 1, (2i+1)/H - 1) (row 0 at y = -1), so OpenCV image points map there without a
    flip. Its rast holds (b0, b1, z/w, triangle id + 1), b2 = 1 - b0 - b1. It snaps vertices to a
    sub-pixel grid and uses a top-left fill rule, so pixels within ~1/100 px of an edge between two
    faces may go to the neighbour. Not run in CI (no nvdiffrast there); checked against the torch
    backend on an H200 with nvdiffrast 0.4.0 by tests/test_rasterizer.py.
    """
    batch, num_vertices = proj.u.shape
    shape = (batch, height, width)
    if setup.face.numel() == 0:
        return Fragments(
            torch.full(shape, -1, dtype=torch.int64, device=proj.u.device),
            proj.u.new_zeros(*shape, 3),
            proj.u.new_zeros(shape),
        )
    near, far = 0.5 * float(setup.z.min()), 2.0 * float(setup.z.max())
    z = proj.z
    clip = torch.stack(
        [
            ((2 * proj.u + 1) / width - 1) * z,
            ((2 * proj.v + 1) / height - 1) * z,
            ((far + near) * z - 2 * far * near) / (far - near),
            z,
        ],
        -1,
    ).reshape(-1, 4)
    tri = (faces_t.index_select(1, setup.face) + setup.frame * num_vertices).T.to(torch.int32)
    counts = torch.bincount(setup.frame, minlength=batch)
    ranges = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1).to(torch.int32).cpu()
    dr = _nvdiffrast()
    rast, _ = dr.rasterize(
        _nvdiffrast_context(proj.u.device),
        clip.contiguous(),
        tri.contiguous(),
        (height, width),
        ranges=ranges,
        grad_db=False,
    )
    rast = rast.reshape(-1, 4)
    # Ids above 2^24 come as raw float bits offset by 0x4a800000 (nvdiffrast's encoding).
    encoded = rast[:, 3].contiguous()
    tri_id = torch.where(
        encoded <= 2.0**24,
        encoded.to(torch.int64),
        encoded.view(torch.int32).to(torch.int64) - 0x4A800000,
    )
    covered = tri_id > 0
    row = (tri_id - 1).clamp_min(0)
    face_id = torch.where(covered, setup.face[row], -1)
    b01 = rast[:, :2]
    bary = torch.cat([b01, 1 - b01.sum(1, keepdim=True)], 1) * covered[:, None]
    depth = (bary * setup.z[:, row].T).sum(1)
    return Fragments(face_id.view(shape), bary.view(*shape, 3), depth.view(shape))
