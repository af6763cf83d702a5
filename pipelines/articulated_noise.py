"""Motion -> posed body -> UV renders -> warp operator, and a preview a person can look at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.body_model import BodyModel
from models.motion import Motion, MotionError
from models.noise_settings import NoiseSettings
from models.noise_warp import (
    DEFAULT_SPATIAL_FACTOR,
    VAE_TEMPORAL_FACTOR,
    WarpOperator,
    build_warp_operator,
    latent_frame_of,
    latent_num_frames,
    stack_latent_frames,
)
from models.paths import ProjectPath
from models.rasterizer import rasterize, scale_intrinsics, uv_map
from pipelines.io.config import validate_config

# Latent frames rendered at once for generation: 8 (29 video frames) keeps a 480x720 build to a few hundred MB.
OPERATOR_CHUNK_LATENT_FRAMES = 8


class BodyConfig(BaseModel):
    """Which body model to pose: the generated template unless a user's SMPL file is named."""

    model_config = ConfigDict(extra="forbid")

    model_path: ProjectPath | None = Field(None, description="SMPL model .npz; unset uses the generated template")
    uv_path: ProjectPath | None = Field(None, description="UV layout (.obj or .npz) for a real SMPL model")


class NoiseConfig(NoiseSettings):
    """How articulated noise is built for a clip: the model's `NoiseSettings` on a clip's grid."""

    num_frames: int = Field(49, ge=1, le=4097, description="video frames, 4k+1")
    height: int = Field(480, ge=1, le=4096, description="video height in pixels, a multiple of spatial_factor")
    width: int = Field(720, ge=1, le=4096, description="video width in pixels, a multiple of spatial_factor")
    spatial_factor: int = Field(
        DEFAULT_SPATIAL_FACTOR, ge=1, le=64, description="the backbone VAE's pixels per latent cell side"
    )
    channels: int = Field(16, ge=1, le=256, description="latent channels of the backbone")

    @model_validator(mode="after")
    def _check_grid(self) -> NoiseConfig:
        latent_num_frames(self.num_frames)
        for name in ("height", "width"):
            if getattr(self, name) % self.spatial_factor:
                raise ValueError(f"{name} must be a multiple of {self.spatial_factor}, got {getattr(self, name)}")
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        factor = self.spatial_factor
        return latent_num_frames(self.num_frames), self.height // factor, self.width // factor

    @property
    def render_size(self) -> tuple[int, int]:
        _, height, width = self.latent_shape
        return height * self.supersample, width * self.supersample


@dataclass
class NoiseRender:
    """What the operator was built from: the rendered frames and their UV maps at render size."""

    frame_indices: torch.Tensor  # [B] video frames rendered
    latent_frames: torch.Tensor  # [B] latent frame of each
    uv: torch.Tensor  # [B, Hr, Wr, 2]
    mask: torch.Tensor  # [B, Hr, Wr] bool
    face_id: torch.Tensor  # [B, Hr, Wr] int64, -1 on background
    bary: torch.Tensor  # [B, Hr, Wr, 3]
    depth: torch.Tensor  # [B, Hr, Wr] camera z of the visible surface
    vertices: torch.Tensor  # [B, V, 3] camera frame
    intrinsics: torch.Tensor  # [B, 3, 3] for the render size


def rendered_frames(num_frames: int, group_frames: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Video frames to render and the latent frame each belongs to.

    The VAE keeps frame 0 alone and folds frames 4k-3..4k into latent frame k. "centre" renders one
    frame per latent frame, nearest its group's centre (0, 2, 6, 10, ...); "all" renders every frame
    and lets a latent cell pool the texels seen over its whole group.
    """
    num_latent = latent_num_frames(num_frames)
    if group_frames == "all":
        frames = torch.arange(num_frames)
    else:
        frames = (torch.arange(num_latent) * VAE_TEMPORAL_FACTOR - 2).clamp(min=0)
    return frames, latent_frame_of(frames)


def _motion_tensors(motion: Motion, frames: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    index = frames.numpy()
    return {
        key: torch.from_numpy(np.ascontiguousarray(getattr(motion, key)[index])).to(device)
        for key in ("global_orient", "body_pose", "betas", "transl")
    }


def render_motion(
    motion: Motion,
    body: BodyModel,
    config: NoiseConfig,
    device: torch.device | str = "cpu",
    latent_range: tuple[int, int] | None = None,
) -> NoiseRender:
    """Pose the body for the frames the operator needs (those of latent frames [start, stop) of `latent_range`,
    else all) and rasterize them at render size."""
    if motion.num_frames < config.num_frames:
        raise MotionError(
            f"motion has {motion.num_frames} frames but num_frames={config.num_frames} were requested"
        )
    device = torch.device(device)
    frames, latent_frames = rendered_frames(config.num_frames, config.group_frames)
    if latent_range is not None:
        keep = (latent_frames >= latent_range[0]) & (latent_frames < latent_range[1])
        frames, latent_frames = frames[keep], latent_frames[keep]
    with torch.no_grad():
        vertices = body.to(device)(**_motion_tensors(motion, frames, device)).vertices
    render_h, render_w = config.render_size
    source_h, source_w = motion.image_size
    intrinsics = scale_intrinsics(
        torch.from_numpy(motion.K[frames.numpy()]).to(device), render_w / source_w, render_h / source_h
    )
    fragments = rasterize(vertices, body.faces, intrinsics, (render_h, render_w), cull_backfaces=True)
    uv, mask = uv_map(fragments, body.uv_coords, body.uv_faces)
    return NoiseRender(
        frame_indices=frames,
        latent_frames=latent_frames.to(device),
        uv=uv,
        mask=mask,
        face_id=fragments.face_id,
        bary=fragments.bary,
        depth=fragments.depth,
        vertices=vertices,
        intrinsics=intrinsics,
    )


def build_motion_operator(
    motion: Motion, body: BodyModel, config: NoiseConfig, device: torch.device | str = "cpu"
) -> tuple[WarpOperator, NoiseRender]:
    """The warp operator of the first `config.num_frames` frames of a motion."""
    render = render_motion(motion, body, config, device)
    return _warp_operator(render, config, (0, config.latent_shape[0])), render


def _warp_operator(render: NoiseRender, config: NoiseConfig, latent_range: tuple[int, int]) -> WarpOperator:
    """The operator of latent frames [start, stop) from their render."""
    start, stop = latent_range
    _, height, width = config.latent_shape
    return build_warp_operator(
        render.uv,
        render.mask,
        render.latent_frames - start,
        (stop - start, height, width),
        (config.texture_size, config.texture_size),
        rule=config.rule,
        background=config.background,
    )


def video_noise_operator(
    motion: Motion,
    body: BodyModel,
    options: dict,
    num_frames: int,
    resolution: tuple[int, int],
    device: torch.device | str = "cpu",
    chunk_latent_frames: int = OPERATOR_CHUNK_LATENT_FRAMES,
) -> WarpOperator:
    """The operator for generating `num_frames` frames at `resolution` (H, W) from `motion`: ONE operator over
    the whole video (one texture), so every window of a long video samples a slice of the same noise.
    `options` are the other `NoiseConfig` fields (texture_size, supersample, rule, background, group_frames,
    and the backbone's spatial_factor).

    Built `chunk_latent_frames` latent frames at a time and stacked (the same operator as one build), so the
    renders held at once, and the memory, do not grow with the video's length."""
    config = validate_config(
        NoiseConfig,
        {**options, "num_frames": num_frames, "height": resolution[0], "width": resolution[1]},
        source="noise options",
    )
    num_latent = config.latent_shape[0]
    parts = []
    for start in range(0, num_latent, chunk_latent_frames):
        chunk = (start, min(start + chunk_latent_frames, num_latent))
        parts.append(_warp_operator(render_motion(motion, body, config, device, chunk), config, chunk))
    return stack_latent_frames(parts, config.background)


def _to_video_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of `[B, h, w, C]` to `[B, H, W, C]`."""
    rows = torch.arange(size[0], device=image.device) * image.shape[1] // size[0]
    cols = torch.arange(size[1], device=image.device) * image.shape[2] // size[1]
    return image[:, rows][:, :, cols]


def preview_frames(render: NoiseRender, noise: torch.Tensor, video_size: tuple[int, int]) -> np.ndarray:
    """Side-by-side preview per latent frame: UV map (u, v, mask as RGB) | noise channels 0-2.

    Returns uint8 `[F_lat, H, 2W, 3]`; the noise is shown at latent resolution, enlarged.
    """
    first_of_latent = torch.ones_like(render.latent_frames, dtype=torch.bool)
    first_of_latent[1:] = render.latent_frames[1:] != render.latent_frames[:-1]
    uv = render.uv[first_of_latent]
    mask = render.mask[first_of_latent].to(uv.dtype)[..., None]
    uv_rgb = torch.cat([uv * mask, mask], dim=-1)
    noise_rgb = ((noise[:, :3].permute(0, 2, 3, 1).clamp(-2.5, 2.5) + 2.5) / 5.0).to(uv.dtype)
    if noise_rgb.shape[-1] < 3:
        noise_rgb = noise_rgb[..., :1].expand(*noise_rgb.shape[:-1], 3)
    panels = torch.cat([_to_video_size(uv_rgb, video_size), _to_video_size(noise_rgb, video_size)], dim=2)
    return (panels * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
