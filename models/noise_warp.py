"""Articulated noise: a sparse linear warp from a UV noise texture (+ background units) to latent cells.

The operator `A` has one row per latent cell `[F_lat, h, w]` and one column per noise source: the
`Hq x Wq` texels of a noise texture on the body's UV map, then the background units. Every row has
unit L2 norm, so with i.i.d. N(0,1) sources every cell is exactly N(0,1); cells that share few
sources are nearly independent, and a body point keeps drawing on the same texels as it moves.
Channels are independent draws through the same operator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

WarpRule = Literal["aggregate", "nearest"]
BackgroundMode = Literal["static", "per_frame"]

VAE_TEMPORAL_FACTOR = 4
DEFAULT_SPATIAL_FACTOR = 8  # the VAE downsampling of every released backbone: pixels per latent cell side


def latent_num_frames(num_frames: int) -> int:
    """Latent frames of a video VAE that keeps the first frame alone, then compresses groups of 4."""
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_FACTOR:
        raise ValueError(f"num_frames must be 4k+1 (1, 5, ..., 49, 81, ...), got {num_frames}")
    return (num_frames - 1) // VAE_TEMPORAL_FACTOR + 1


def latent_frame_of(frame_index: torch.Tensor) -> torch.Tensor:
    """Latent frame of each video frame: 0 -> 0, 1..4 -> 1, 5..8 -> 2, ..."""
    return (frame_index + VAE_TEMPORAL_FACTOR - 1) // VAE_TEMPORAL_FACTOR


@dataclass
class WarpOperator:
    """A CSR matrix from noise sources to latent cells, plus the shapes needed to read it."""

    indptr: torch.Tensor  # [F_lat*h*w + 1] int64
    indices: torch.Tensor  # [nnz] int64, source ids (texels first, then background units)
    values: torch.Tensor  # [nnz] float32, unit L2 norm per row
    latent_shape: tuple[int, int, int]  # (F_lat, h, w)
    texture_size: tuple[int, int]  # (Hq, Wq)
    num_background: int

    @property
    def num_texels(self) -> int:
        return self.texture_size[0] * self.texture_size[1]

    @property
    def num_sources(self) -> int:
        return self.num_texels + self.num_background

    @property
    def num_cells(self) -> int:
        frames, height, width = self.latent_shape
        return frames * height * width

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> WarpOperator:
        return WarpOperator(
            self.indptr.to(device),
            self.indices.to(device),
            self.values.to(device),
            self.latent_shape,
            self.texture_size,
            self.num_background,
        )

    def _row_ids(self) -> torch.Tensor:
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(self.num_cells, device=self.device), counts)

    def sample_sources(self, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh i.i.d. N(0,1) noise sources `[num_sources, channels]`."""
        return torch.randn(self.num_sources, channels, generator=generator, device=self.device)

    def apply(self, sources: torch.Tensor) -> torch.Tensor:
        """Warp sources `[num_sources, C]` to latent noise `[F_lat, C, h, w]`."""
        if sources.ndim != 2 or sources.shape[0] != self.num_sources:
            raise ValueError(f"sources must have shape [{self.num_sources}, C], got {list(sources.shape)}")
        with warnings.catch_warnings():  # CSR support is "beta" in torch; the product is exact and tested
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(
                self.indptr,
                self.indices,
                self.values.to(sources.dtype),
                size=(self.num_cells, self.num_sources),
                check_invariants=False,  # built here or checked by from_arrays
            )
            cells = matrix @ sources
        frames, height, width = self.latent_shape
        return cells.reshape(frames, height, width, -1).permute(0, 3, 1, 2).contiguous()

    def sample(self, generator: torch.Generator | None = None, channels: int = 16) -> torch.Tensor:
        """One draw of articulated noise `[F_lat, C, h, w]`; every cell is exactly N(0,1)."""
        return self.apply(self.sample_sources(channels, generator))

    def adjoint(self, latent: torch.Tensor) -> torch.Tensor:
        """The exact transpose: latent `[F_lat, C, h, w]` -> sources `[num_sources, C]`."""
        frames, height, width = self.latent_shape
        if latent.ndim != 4 or (latent.shape[0], latent.shape[2], latent.shape[3]) != (frames, height, width):
            raise ValueError(f"latent must have shape [{frames}, C, {height}, {width}], got {list(latent.shape)}")
        cells = latent.permute(0, 2, 3, 1).reshape(self.num_cells, -1)
        weighted = cells[self._row_ids()] * self.values.to(latent.dtype)[:, None]
        sources = torch.zeros(self.num_sources, cells.shape[1], dtype=latent.dtype, device=latent.device)
        return sources.index_add_(0, self.indices, weighted)

    def texel_visible_frames(self) -> torch.Tensor:
        """For each texel, in how many latent frames some cell draws on it `[Hq, Wq]` (int64)."""
        frames, height, width = self.latent_shape
        frame_of_entry = self._row_ids() // (height * width)
        is_texel = self.indices < self.num_texels
        pairs = torch.unique(frame_of_entry[is_texel] * self.num_texels + self.indices[is_texel])
        counts = torch.bincount(pairs % self.num_texels, minlength=self.num_texels)
        return counts.reshape(self.texture_size)

    def to_uv(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent `[F_lat, C, h, w]` -> UV texture `[C, Hq, Wq]` and visibility `[Hq, Wq]` (bool).

        Each texel gets the transpose of the warp averaged over the latent frames in which it is
        visible, so the same surface point seen in several frames is pooled there (GMCL).
        """
        texels = self.adjoint(latent)[: self.num_texels]
        visible_frames = self.texel_visible_frames().reshape(-1)
        texture = texels / visible_frames.clamp(min=1).to(texels.dtype)[:, None]
        return texture.T.reshape(-1, *self.texture_size), (visible_frames > 0).reshape(self.texture_size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for Arrow/Parquet (int32 indices, float32 values)."""
        return {
            "indptr": self.indptr.cpu().numpy().astype(np.int64),
            "indices": self.indices.cpu().numpy().astype(np.int32),
            "values": self.values.cpu().numpy().astype(np.float32),
            "latent_shape": np.asarray(self.latent_shape, dtype=np.int32),
            "texture_size": np.asarray(self.texture_size, dtype=np.int32),
            "num_background": np.asarray(self.num_background, dtype=np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> WarpOperator:
        """Rebuild from `to_arrays()` output; checks the structure so a corrupt row fails loudly."""
        latent_shape = tuple(int(v) for v in np.asarray(arrays["latent_shape"]).reshape(-1))
        texture_size = tuple(int(v) for v in np.asarray(arrays["texture_size"]).reshape(-1))
        num_background = int(np.asarray(arrays["num_background"]))
        if len(latent_shape) != 3 or len(texture_size) != 2 or min(latent_shape + texture_size) < 1:
            raise ValueError(f"bad operator shapes: latent_shape={latent_shape}, texture_size={texture_size}")
        indptr = torch.as_tensor(np.asarray(arrays["indptr"], dtype=np.int64), device=device)
        indices = torch.as_tensor(np.asarray(arrays["indices"], dtype=np.int64), device=device)
        values = torch.as_tensor(np.asarray(arrays["values"], dtype=np.float32), device=device)
        operator = cls(indptr, indices, values, latent_shape, texture_size, num_background)
        if (
            indptr.numel() != operator.num_cells + 1
            or int(indptr[-1]) != indices.numel()
            or indices.numel() != values.numel()
        ):
            raise ValueError("operator arrays are inconsistent: indptr does not match indices/values")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= operator.num_sources):
            raise ValueError("operator indices are out of range of its noise sources")
        return operator


def _body_cells(
    mask: torch.Tensor, latent_frames: torch.Tensor, latent_grid: tuple[int, int], factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of every body pixel of `mask` `[B, H, W]`, and the latent cell (operator row) it falls in."""
    _, render_h, render_w = mask.shape
    height, width = latent_grid
    pixels = mask.reshape(-1).nonzero().squeeze(1)
    frame = pixels // (render_h * render_w)
    in_frame = pixels - frame * (render_h * render_w)
    row = in_frame // render_w
    cell_in_frame = row // factor * width + (in_frame - row * render_w) // factor
    return pixels, latent_frames.index_select(0, frame) * (height * width) + cell_in_frame


def _texel_ids(uv: torch.Tensor, texture_size: tuple[int, int]) -> torch.Tensor:
    """Texel of each UV coordinate; v=0 is the bottom row of the texture (OBJ convention)."""
    tex_h, tex_w = texture_size
    col = (uv[..., 0] * tex_w).long().clamp(0, tex_w - 1)
    row = ((1.0 - uv[..., 1]) * tex_h).long().clamp(0, tex_h - 1)
    return row * tex_w + col


def _nearest_pixels(uv: torch.Tensor, mask: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the pixel nearest each cell's centre (the paper's rule), at latent resolution."""
    centre = factor // 2
    return uv[:, centre::factor, centre::factor], mask[:, centre::factor, centre::factor]


def build_warp_operator(
    uv: torch.Tensor,
    mask: torch.Tensor,
    latent_frames: torch.Tensor,
    latent_shape: tuple[int, int, int],
    texture_size: tuple[int, int],
    rule: WarpRule = "aggregate",
    background: BackgroundMode = "static",
) -> WarpOperator:
    """Build the warp from rendered UV maps.

    Args:
        uv: `[B, H, W, 2]` UV coordinates per render pixel (B rendered video frames).
        mask: `[B, H, W]` bool, body pixels.
        latent_frames: `[B]` latent frame each rendered frame belongs to (several frames may share one).
        latent_shape: `(F_lat, h, w)`; H and W must be the same integer multiple of h and w.
        texture_size: `(Hq, Wq)` of the noise texture.
        rule: "aggregate" weights every texel (or background unit) a cell's pixels see by its pixel
            count; "nearest" takes the single source seen at the pixel nearest the cell centre.
        background: "static" gives one background unit per latent cell position shared by all
            frames (static camera); "per_frame" gives fresh background units per latent frame.
    """
    num_latent, height, width = latent_shape
    factor = uv.shape[1] // height
    if uv.ndim != 4 or uv.shape[-1] != 2 or factor < 1 or uv.shape[1:3] != (height * factor, width * factor):
        raise ValueError(f"uv must be [B, h*s, w*s, 2] for latent grid {height}x{width}, got {list(uv.shape)}")
    if mask.shape != uv.shape[:3] or latent_frames.shape != uv.shape[:1]:
        raise ValueError("mask must be [B, H, W] and latent_frames [B], matching uv")
    if rule == "nearest":
        uv, mask = _nearest_pixels(uv, mask, factor)
        factor = 1
    device = uv.device
    latent_frames = latent_frames.to(device=device, dtype=torch.int64)
    if latent_frames.numel() and (int(latent_frames.min()) < 0 or int(latent_frames.max()) >= num_latent):
        raise ValueError(
            f"latent_frames must lie in [0, {num_latent}), got {int(latent_frames.min())}..{int(latent_frames.max())}"
        )
    frames_per_latent = torch.bincount(latent_frames, minlength=num_latent)
    if bool((frames_per_latent == 0).any()):
        raise ValueError("some latent cells have no rendered frame; latent_frames must cover every latent frame")
    num_cells = num_latent * height * width
    num_texels = texture_size[0] * texture_size[1]
    num_background = height * width * (num_latent if background == "per_frame" else 1)
    num_sources = num_texels + num_background

    # Only body pixels are gathered (a few % of a frame): a cell's background pixels all see the same unit, so
    # they are counted, not listed. Keys sort by cell, then source, and background units follow the texels.
    pixels, body_cell = _body_cells(mask, latent_frames, (height, width), factor)
    texel = _texel_ids(uv.reshape(-1, 2).index_select(0, pixels), texture_size)
    texel_keys, texel_counts = torch.unique(body_cell * num_sources + texel, return_counts=True)
    cell_pixels = (frames_per_latent * factor**2).repeat_interleave(height * width)
    background_counts = cell_pixels - torch.bincount(body_cell, minlength=num_cells)
    background_cell = background_counts.nonzero().squeeze(1)
    unit = background_cell if background == "per_frame" else background_cell % (height * width)
    pairs, order = torch.sort(torch.cat([texel_keys, background_cell * num_sources + num_texels + unit]))
    counts = torch.cat([texel_counts, background_counts.index_select(0, background_cell)]).index_select(0, order)

    row_of_pair = pairs // num_sources
    weights = counts.to(torch.float32)
    norms = torch.zeros(num_cells, device=device).index_add_(0, row_of_pair, weights.square())
    values = weights / norms.sqrt()[row_of_pair]
    indptr = torch.zeros(num_cells + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(row_of_pair, minlength=num_cells), 0)
    return WarpOperator(indptr, pairs % num_sources, values, latent_shape, texture_size, num_background)


def stack_latent_frames(parts: list[WarpOperator], background: BackgroundMode = "static") -> WarpOperator:
    """One operator from operators built for consecutive runs of latent frames (same grid, texture and rule),
    equal to building it over all the frames at once: a cell's row depends only on its own latent frame.
    `background` is the mode they were built with: "per_frame" background units are renumbered to follow
    their frames."""
    if not parts:
        raise ValueError("parts: need at least one operator")
    first = parts[0]
    _, height, width = first.latent_shape
    if any(part.latent_shape[1:] != (height, width) or part.texture_size != first.texture_size for part in parts):
        raise ValueError("parts: every operator must share the latent grid (h, w) and the texture size")
    indptr, indices, values = [first.indptr[:1]], [], []
    frames = nnz = 0
    for part in parts:
        ids = part.indices
        if background == "per_frame":
            ids = torch.where(ids >= part.num_texels, ids + frames * height * width, ids)
        indptr.append(part.indptr[1:] + nnz)
        indices.append(ids)
        values.append(part.values)
        frames += part.latent_shape[0]
        nnz += int(part.indptr[-1])
    num_background = height * width * (frames if background == "per_frame" else 1)
    return WarpOperator(
        torch.cat(indptr), torch.cat(indices), torch.cat(values), (frames, height, width), first.texture_size,
        num_background,
    )


def degrade(warped: torch.Tensor, fresh: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """Mix fresh i.i.d. noise into warped noise at level gamma, keeping unit variance.

    `(gamma * fresh + (1 - gamma) * warped) / sqrt(gamma^2 + (1 - gamma)^2)`; gamma broadcasts
    against the leading dimensions (a scalar, or one value per sample).
    """
    gamma = _as_gamma(gamma, warped)
    return (gamma * fresh + (1 - gamma) * warped) / torch.sqrt(gamma.square() + (1 - gamma).square())


def undegrade(noisy: torch.Tensor, fresh: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """Invert `degrade` given the same fresh noise; undefined at gamma = 1 (no warped part left)."""
    gamma = _as_gamma(gamma, noisy)
    if bool((gamma >= 1).any()):
        raise ValueError("cannot undo degradation at gamma = 1: the warped noise has zero weight")
    return (noisy * torch.sqrt(gamma.square() + (1 - gamma).square()) - gamma * fresh) / (1 - gamma)


def _as_gamma(gamma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    gamma = torch.as_tensor(gamma, dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(gamma).all()) or bool((gamma < 0).any()) or bool((gamma > 1).any()):
        raise ValueError(f"gamma must be in [0, 1], got {gamma.tolist()}")
    return gamma.reshape(gamma.shape + (1,) * (like.ndim - gamma.ndim))
