"""A reference image for the demo: the posed template body, shaded, on a grey background."""

from __future__ import annotations

import numpy as np
import torch

from models.body_model import BodyModel
from models.motion import Motion
from models.rasterizer import rasterize, scale_intrinsics

BACKGROUND = (0.55, 0.57, 0.6)
# Colour per SMPL joint group: legs (trousers), torso and arms (shirt), head/hands/feet (skin, shoes).
_PALETTE = {
    (1, 2, 4, 5): (0.18, 0.22, 0.45),
    (0, 3, 6, 9, 13, 14, 16, 17, 18, 19): (0.75, 0.25, 0.2),
    (12, 15, 20, 21, 22, 23): (0.87, 0.68, 0.55),
    (7, 8, 10, 11): (0.15, 0.12, 0.1),
}


def _vertex_colours(body: BodyModel) -> torch.Tensor:
    """[V,3] colour of each vertex from the joint that skins it most."""
    joint_colour = torch.zeros(24, 3)
    for joints, colour in _PALETTE.items():
        joint_colour[list(joints)] = torch.tensor(colour)
    return joint_colour[body.smpl.lbs_weights.argmax(dim=1).cpu()]


def render_reference_image(motion: Motion, body: BodyModel, size: tuple[int, int], frame: int = 0) -> np.ndarray:
    """uint8 `[H, W, 3]`: the body in `frame` of `motion`, flat colours with head-on Lambert shading."""
    index = slice(frame, frame + 1)
    with torch.no_grad():
        vertices = body(
            *(torch.from_numpy(getattr(motion, key)[index]) for key in ("global_orient", "body_pose", "betas", "transl"))
        ).vertices
    intrinsics = scale_intrinsics(
        torch.from_numpy(motion.K[index]), size[1] / motion.image_size[1], size[0] / motion.image_size[0]
    )
    fragments = rasterize(vertices, body.faces, intrinsics, size, cull_backfaces=True)
    corners = vertices[0][body.faces]  # [F,3,3]
    normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    facing = (-torch.nn.functional.normalize(normals, dim=1)[:, 2]).clamp(min=0)  # camera looks along +z
    face = fragments.face_id[0].clamp(min=0)
    vertex_colour = _vertex_colours(body)[body.faces[face]]  # [H,W,3 corners,3]
    shaded = (fragments.bary[0][..., None] * vertex_colour).sum(-2) * (0.35 + 0.65 * facing[face])[..., None]
    image = torch.where(fragments.mask[0][..., None], shaded, torch.tensor(BACKGROUND))
    return (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()
