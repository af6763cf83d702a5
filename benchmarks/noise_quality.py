"""Statistics of articulated noise on the demo motions; prints one JSON line at the end.

For i.i.d. noise, the paper's nearest-pixel rule and the default (texel aggregation), at each
texture size tried: mean, std, KS statistic against N(0,1), mean |lag-1 spatial autocorrelation|
over body cells, temporal correlation of the same surface point in consecutive latent frames
(correspondence from the mesh itself), and the same for static background cells.

    python benchmarks/noise_quality.py [--texture-sizes 128 256 512] [--samples 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import stats

from models.body_model import BodyModel, load_body_model
from models.noise_warp import build_warp_operator
from pipelines.articulated_noise import NoiseConfig, NoiseRender, render_motion
from pipelines.demo.motions import DEMO_MOTIONS, make_demo_motion

TARGETS = {"abs_mean": 0.01, "std": (0.99, 1.01), "ks": 0.005, "lag1": 0.05, "temporal_corr": 0.5}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


class Correspondence:
    """Which latent cells to compare, derived once per motion from its render."""

    def __init__(self, render: NoiseRender, faces: torch.Tensor, factor: int) -> None:
        centre = factor // 2
        self.body = render.mask[:, centre::factor, centre::factor]  # [F, h, w] centre pixel on the body
        cells_bg = ~render.mask.reshape(*self.body.shape[:1], self.body.shape[1], factor, self.body.shape[2], factor).any(dim=(2, 4))
        self.static_background = cells_bg[:-1] & cells_bg[1:]
        self.pairs = self._surface_pairs(render, faces, factor, centre)

    def _surface_pairs(self, render: NoiseRender, faces: torch.Tensor, factor: int, centre: int) -> torch.Tensor:
        """(frame, row, col, row', col') of body cells whose centre point is visible in the next frame."""
        face = render.face_id[:, centre::factor, centre::factor]
        bary = render.bary[:, centre::factor, centre::factor]
        num_frames = face.shape[0]
        pairs = []
        for frame in range(num_frames - 1):
            rows, cols = torch.nonzero(face[frame] >= 0, as_tuple=True)
            corners = render.vertices[frame + 1][faces[face[frame, rows, cols]]]  # [N, 3, 3]
            point = (bary[frame, rows, cols, :, None] * corners).sum(1)
            pixel = point @ render.intrinsics[frame + 1].T
            x, y = (pixel[:, 0] / pixel[:, 2]).round().long(), (pixel[:, 1] / pixel[:, 2]).round().long()
            full_h, full_w = render.mask.shape[1:]
            inside = (x >= 0) & (x < full_w) & (y >= 0) & (y < full_h)
            x, y, point, rows, cols = x[inside], y[inside], point[inside], rows[inside], cols[inside]
            # visible in the next frame: on the body there, and not hidden behind another part
            seen = render.mask[frame + 1, y, x] & ((render.depth[frame + 1, y, x] - point[:, 2]).abs() < 0.02)
            frame_col = torch.full_like(rows[seen], frame)
            pairs.append(torch.stack([frame_col, rows[seen], cols[seen], y[seen] // factor, x[seen] // factor], 1))
        return torch.cat(pairs)

    def temporal_corr(self, noise: torch.Tensor) -> float:
        f, r, c, r2, c2 = self.pairs.T
        return _pearson(noise[:, f, :, r, c], noise[:, f + 1, :, r2, c2])

    def bg_temporal_corr(self, noise: torch.Tensor) -> float:
        frames = noise.shape[1] - 1
        mask = self.static_background
        return _pearson(noise[:, :frames].permute(0, 2, 1, 3, 4)[:, :, mask], noise[:, 1:].permute(0, 2, 1, 3, 4)[:, :, mask])

    def lag1(self, noise: torch.Tensor) -> float:
        """Mean over latent frames and both directions of |corr| between neighbouring body cells."""
        values = []
        for frame in range(noise.shape[1]):
            body, x = self.body[frame], noise[:, frame]
            horizontal = body[:, :-1] & body[:, 1:]
            vertical = body[:-1] & body[1:]
            if horizontal.sum() > 10:
                values.append(abs(_pearson(x[..., :-1][..., horizontal], x[..., 1:][..., horizontal])))
            if vertical.sum() > 10:
                values.append(abs(_pearson(x[..., :-1, :][..., vertical], x[..., 1:, :][..., vertical])))
        return float(np.mean(values))


def _summary(draws: list[tuple[torch.Tensor, Correspondence]]) -> dict[str, float]:
    flat = torch.cat([noise.reshape(-1) for noise, _ in draws]).double()
    return {
        "mean": round(float(flat.mean()), 5),
        "std": round(float(flat.std()), 5),
        "ks": round(float(stats.kstest(flat.numpy(), "norm").statistic), 5),
        "lag1": round(float(np.mean([c.lag1(n) for n, c in draws])), 4),
        "temporal_corr": round(float(np.mean([c.temporal_corr(n) for n, c in draws])), 4),
        "bg_temporal_corr": round(float(np.mean([c.bg_temporal_corr(n) for n, c in draws])), 4),
    }


def _texel_footprint(render: NoiseRender, texture: int) -> float:
    """Render pixels per distinct texel seen, over body pixels (how large a texel looks on screen)."""
    seen = []
    for frame in range(render.uv.shape[0]):
        uv = render.uv[frame][render.mask[frame]]
        texels = (uv[:, 0] * texture).long() + texture * ((1 - uv[:, 1]) * texture).long()
        seen.append(uv.shape[0] / max(1, texels.unique().numel()))
    return round(float(np.mean(seen)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texture-sizes", type=int, nargs="+", default=[128, 192, 256, 384, 512])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--group-frames", default="centre", choices=("centre", "all"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    started = time.perf_counter()
    default = NoiseConfig(group_frames=args.group_frames)
    body: BodyModel = load_body_model()
    motions = {name: make_demo_motion(name, default.num_frames) for name in DEMO_MOTIONS}
    renders = {name: render_motion(motion, body, default, args.device) for name, motion in motions.items()}
    # correspondences are measured between one rendered frame per latent frame
    probe_config = default.model_copy(update={"group_frames": "centre"})
    probes = renders if args.group_frames == "centre" else {
        name: render_motion(motion, body, probe_config, args.device) for name, motion in motions.items()
    }
    correspondences = {
        name: Correspondence(render, body.faces.to(args.device), default.supersample) for name, render in probes.items()
    }

    def measure(rule: str, texture: int | None) -> dict[str, float]:
        draws = []
        for name, render in renders.items():
            generator = torch.Generator(args.device).manual_seed(0)
            if rule == "iid":
                noise = [torch.randn(*default.latent_shape[:1], args.channels, *default.latent_shape[1:], generator=generator, device=args.device) for _ in range(args.samples)]
            else:
                operator = build_warp_operator(render.uv, render.mask, render.latent_frames, default.latent_shape, (texture, texture), rule, default.background)
                noise = [operator.sample(generator, args.channels) for _ in range(args.samples)]
            draws.append((torch.stack(noise).cpu(), correspondences[name]))
        return _summary(draws)

    sweep = {
        str(size): {
            "render_px_per_texel": float(np.mean([_texel_footprint(r, size) for r in probes.values()])),
            "default": measure("aggregate", size),
            "nearest": measure("nearest", size),
        }
        for size in args.texture_sizes
    }
    result = {
        "benchmark": "noise_quality",
        "frames": default.num_frames,
        "height": default.height,
        "width": default.width,
        "channels": args.channels,
        "supersample": default.supersample,
        "group_frames": args.group_frames,
        "default_texture_size": default.texture_size,
        "motions": sorted(DEMO_MOTIONS),
        "samples_per_motion": args.samples,
        "iid": measure("iid", None),
        "nearest": measure("nearest", default.texture_size),
        "default": measure("aggregate", default.texture_size),
        "sweep": sweep,
        "default_beats_nearest_at_every_size": all(
            s["default"]["temporal_corr"] > s["nearest"]["temporal_corr"] for s in sweep.values()
        ),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
