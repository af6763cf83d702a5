"""Time to build the articulated-noise operator and to draw one sample; prints one JSON line.

49 frames at 480x720 of the demo walk on a SMPL-size mesh: on one CPU thread, and on the GPU
when CUDA is present (where it also checks that CUDA renders the same UV maps as the CPU).

    python benchmarks/noise_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from models.body_model import load_body_model
from models.smpl_template import SMPL_SIZE_DETAIL
from pipelines.articulated_noise import NoiseConfig, build_motion_operator
from pipelines.demo.motions import make_demo_motion


def _timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(device: str, config: NoiseConfig, repeats: int) -> dict[str, object]:
    body = load_body_model(detail=SMPL_SIZE_DETAIL).to(device)
    motion = make_demo_motion("walk", config.num_frames)
    build_s, (operator, render) = _timed(lambda: build_motion_operator(motion, body, config, device), device, repeats)
    generator = torch.Generator(device).manual_seed(0)
    sample_s, _ = _timed(lambda: operator.sample(generator, config.channels), device, repeats * 4)
    return {
        "build_s": round(build_s, 4),
        "sample_s": round(sample_s, 4),
        "nnz": int(operator.values.numel()),
        "render": render,
        "vertices": body.num_vertices,
        "faces": int(body.faces.shape[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = NoiseConfig()
    torch.set_num_threads(1)
    cpu = measure("cpu", config, args.repeats)
    result = {
        "benchmark": "noise_speed",
        "frames": config.num_frames,
        "height": config.height,
        "width": config.width,
        "render_size": list(config.render_size),
        "rendered_frames": int(cpu["render"].uv.shape[0]),
        "texture_size": config.texture_size,
        "mesh_vertices": cpu["vertices"],
        "mesh_faces": cpu["faces"],
        "nnz": cpu["nnz"],
        "cpu_threads": torch.get_num_threads(),
        "cpu_build_s": cpu["build_s"],
        "cpu_sample_s": cpu["sample_s"],
    }
    if torch.cuda.is_available():
        torch.set_num_threads(4)
        gpu = measure("cuda", config, args.repeats)
        same_face = (gpu["render"].face_id.cpu() == cpu["render"].face_id).float().mean()
        both = gpu["render"].mask.cpu() & cpu["render"].mask
        uv_error = (gpu["render"].uv.cpu()[both] - cpu["render"].uv[both]).abs().max()
        result.update(
            gpu=torch.cuda.get_device_name(),
            gpu_build_s=gpu["build_s"],
            gpu_sample_s=gpu["sample_s"],
            cuda_cpu_face_id_agreement=round(float(same_face), 6),
            cuda_cpu_uv_max_abs_diff=float(uv_error),
            cuda_cpu_nnz=[cpu["nnz"], gpu["nnz"]],
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
