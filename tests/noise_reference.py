"""The articulated-noise build as it was before issue 14 made it fast, kept only as the reference the tests compare
the product code with (bitwise)."""

import torch

from models.noise_warp import WarpOperator


def reference_warp_operator(
    uv: torch.Tensor,
    mask: torch.Tensor,
    latent_frames: torch.Tensor,
    latent_shape: tuple[int, int, int],
    texture_size: tuple[int, int],
    rule: str = "aggregate",
    background: str = "static",
) -> WarpOperator:
    """`models.noise_warp.build_warp_operator` before issue 14: every render pixel, background included, through
    one `torch.unique`."""
    num_latent, height, width = latent_shape
    factor = uv.shape[1] // height
    if rule == "nearest":
        uv, mask = (
            uv[:, factor // 2 :: factor, factor // 2 :: factor],
            mask[:, factor // 2 :: factor, factor // 2 :: factor],
        )
        factor = 1
    num_texels = texture_size[0] * texture_size[1]
    num_background = height * width * (num_latent if background == "per_frame" else 1)
    num_sources = num_texels + num_background
    rows = torch.arange(height * factor) // factor
    cols = torch.arange(width * factor) // factor
    cell_in_frame = rows[:, None] * width + cols[None, :]
    cells = latent_frames[:, None, None] * (height * width) + cell_in_frame
    background_unit = cell_in_frame if background == "static" else cells
    col = (uv[..., 0] * texture_size[1]).long().clamp(0, texture_size[1] - 1)
    row = ((1.0 - uv[..., 1]) * texture_size[0]).long().clamp(0, texture_size[0] - 1)
    sources = torch.where(mask, row * texture_size[1] + col, num_texels + background_unit)
    pairs, counts = torch.unique((cells * num_sources + sources).reshape(-1), return_counts=True)
    row_of_pair = pairs // num_sources
    weights = counts.to(torch.float32)
    norms = torch.zeros(num_latent * height * width).index_add_(0, row_of_pair, weights.square())
    values = weights / norms.sqrt()[row_of_pair]
    indptr = torch.zeros(num_latent * height * width + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(row_of_pair, minlength=num_latent * height * width), 0)
    return WarpOperator(indptr, pairs % num_sources, values, latent_shape, texture_size, num_background)


def reference_uv_map(
    face_id: torch.Tensor, bary: torch.Tensor, uv_coords: torch.Tensor, uv_faces: torch.Tensor
) -> torch.Tensor:
    """`models.rasterizer.uv_map`'s UV maps `[B, H, W, 2]` from fragments, as computed before issue 14."""
    attributes = uv_coords[uv_faces.long()].to(torch.float32)
    covered = face_id.reshape(-1).ge(0).nonzero().squeeze(1)
    corners = attributes[face_id.reshape(-1)[covered]]
    values = torch.einsum("nk,nkd->nd", bary.reshape(-1, 3)[covered], corners)
    out = attributes.new_zeros(face_id.numel(), attributes.shape[-1])
    out[covered] = values
    return out.view(*face_id.shape, attributes.shape[-1])
