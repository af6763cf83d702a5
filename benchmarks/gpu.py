"""Every GPU figure in one call (issue 14); prints one JSON line. About 5 minutes on one H200 (budget: 8).

- noise: the articulated-noise operator build and one sample for 49 x 480 x 720 on CUDA
  (benchmarks/noise_speed.py's `measure`, SMPL-size template).
- generation: the CogVideoX-5B-I2V transformer from its published config with random bf16 weights, tiny VAE and
  one-layer T5 around it (benchmarks/generation.py's `full_size_pipeline`), 49 x 480 x 720 with classifier-free
  guidance (batch 2): seconds per step, peak memory and MFU against a bf16 matmul timed here; then the same with
  PadaLN (its overhead), with step caching (`--cache-threshold`; random weights say nothing about the cache's
  quality, and how often it hits is theirs, not a trained model's; its MFU counts the uncached FLOPs: an effective
  figure), with compiled blocks (inductor; the first generation's extra seconds are the compile time) and with both.
- training: the 5B LoRA training step (benchmarks/train.py's `gpu_lora_step`: DeepSpeed ZeRO-2 on one process,
  gradient checkpointing) at configs/train/cogvideox-5b-lora.yaml's LoRA rank and rows per GPU by default: seconds
  per step and peak memory. One process holds all gradients and optimizer state, which ZeRO-2 shards over the
  job's 8 GPUs: an upper bound for a worker of that job.

A section that fails records `<section>_error` and the others still run. Nothing is downloaded or read from disk.
`--cpu-smoke` runs every section's code on the CPU at tiny sizes (2 narrow blocks, 32 x 32, 9 frames): a check
that the script works, not a measurement.

    python benchmarks/gpu.py [--steps 8] [--cache-threshold 0.2] [--lora-rank R] [--train-batch B] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# next to this script
from full_size_configs import COGVIDEOX_5B_I2V
from generation import full_size_pipeline, synchronize, timed_generation
from noise_speed import measure
from train import GPU_CONFIG, gpu_lora_step

from models.backbones.config import CompileSettings, StepCacheSettings
from models.body_model import BodyModel, load_body_model
from models.padaln import PadaLN
from pipelines.articulated_noise import NoiseConfig
from pipelines.demo.motions import make_demo_motion
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.config import load_config
from pipelines.training.config import TrainJobConfig

SPATIAL_FACTOR = 8  # CogVideoX's VAE (and the tiny one around the full-size transformer)


@dataclass(frozen=True)
class Setup:
    """Where and at what size the sections run."""

    device: str
    transformer: dict  # a CogVideoX I2V transformer config: the published 5B one, or a tiny one of its architecture
    matmul_size: int  # side of the bf16 matmul that stands for the device's peak throughput

    @property
    def num_frames(self) -> int:
        return self.transformer["sample_frames"]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.transformer["sample_height"] * SPATIAL_FACTOR, self.transformer["sample_width"] * SPATIAL_FACTOR


FULL_SIZE = Setup("cuda", COGVIDEOX_5B_I2V, 8192)
CPU_SMOKE = Setup(
    "cpu",
    {**COGVIDEOX_5B_I2V, "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "text_embed_dim": 32,
     "time_embed_dim": 32, "sample_frames": 9, "sample_height": 4, "sample_width": 4},
    256,
)


def transformer_flops(config: dict, latent_frames: int, height: int, width: int, batch: int) -> float:
    """Forward FLOPs of the CogVideoX transformer (multiply-add = 2 FLOPs), per block over S = text + video tokens:
    QKV and output projections 8*S*D^2, QK^T and AV 4*S^2*D, MLP (D -> 4D -> D) 16*S*D^2; i.e.
    layers * batch * (24*S*D^2 + 4*S^2*D). Patch embedding, norms' modulation and the output projection add
    well under 0.1% and are left out."""
    patch = config["patch_size"]
    video = latent_frames * (height // patch) * (width // patch)
    tokens = config["max_text_seq_length"] + video
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    return config["num_layers"] * batch * (24 * tokens * dim**2 + 4 * tokens**2 * dim)


def matmul_peak_flops(device: str, size: int, repeats: int = 10) -> float:
    """Measured bf16 matmul throughput (FLOP/s) on random data."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_memory_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def noise_figures(setup: Setup, repeats: int) -> dict[str, object]:
    height, width = setup.resolution
    config = NoiseConfig(num_frames=setup.num_frames, height=height, width=width)
    figures = measure(setup.device, config, repeats)
    return {"noise_build_s": figures["build_s"], "noise_sample_s": figures["sample_s"], "noise_nnz": figures["nnz"]}


class Generation:
    """One full-size pipeline, timed as it is and then with each generation option over the same transformer."""

    def __init__(self, setup: Setup, body: BodyModel, steps: int):
        self.setup, self.body, self.steps = setup, body, steps
        self.pipeline = full_size_pipeline(body, setup.device, setup.transformer)
        self.adapter = self.pipeline.adapter
        self.image = np.random.default_rng(0).integers(0, 256, (*setup.resolution, 3), dtype=np.uint8)
        self.motion = make_demo_motion("walk", setup.num_frames)

    def timed(self, pipeline: AnimationPipeline) -> dict[str, float]:
        """A warm-up generation of 2 steps (its wall time), then the median step of a timed one and the peak
        memory of that one."""
        frames, sync = self.setup.num_frames, self.setup.device == "cuda"
        warmup, _ = timed_generation(pipeline, self.image, self.motion, frames, 2, sync=sync)
        reset_peak_memory(self.setup.device)
        _, step = timed_generation(pipeline, self.image, self.motion, frames, self.steps, sync=sync)
        return {"warmup_s": warmup, "step_s": step, "peak_memory_gib": peak_memory_gib(self.setup.device)}

    def with_options(self, **options: object) -> AnimationPipeline:
        """A pipeline over the same transformer with these backbone config options applied to it: compiled blocks
        and the step cache stay on the transformer until removed."""
        self.adapter.config = self.adapter.config.with_options(**options)
        return AnimationPipeline(self.adapter, body=self.body)


def generation_figures(generation: Generation, cache_threshold: float) -> dict[str, object]:
    setup = generation.setup
    base = generation.timed(generation.pipeline)
    latent_frames = generation.adapter.latent_num_frames(setup.num_frames)
    height, width = (side // generation.adapter.spatial_factor for side in setup.resolution)
    flops = transformer_flops(setup.transformer, latent_frames, height, width, batch=2)
    peak_flops = matmul_peak_flops(setup.device, setup.matmul_size)
    result: dict[str, object] = {
        "gen_s_per_step_cfg": round(base["step_s"], 4),
        "gen_peak_memory_gib": base["peak_memory_gib"],
        "gen_tflops_per_step": round(flops / 1e12, 3),
        "gen_matmul_peak_tflops": round(peak_flops / 1e12, 1),
        "gen_mfu": round(flops / base["step_s"] / peak_flops, 3),
    }

    padaln = PadaLN.for_adapter(generation.adapter)
    posed = AnimationPipeline(generation.adapter, padaln, generation.body)
    step = generation.timed(posed)["step_s"]
    padaln.detach()
    result.update(gen_s_per_step_padaln=round(step, 4), padaln_overhead=round(step / base["step_s"] - 1, 4))

    def option(name: str, pipeline: AnimationPipeline) -> dict[str, float]:
        figures = generation.timed(pipeline)
        result.update({
            f"gen_s_per_step_{name}": round(figures["step_s"], 4),
            f"{name}_speedup": round(base["step_s"] / figures["step_s"], 3),
            f"gen_mfu_{name}": round(flops / figures["step_s"] / peak_flops, 3),  # cached: the uncached FLOPs
            f"gen_peak_memory_gib_{name}": figures["peak_memory_gib"],
        })
        return figures

    cache = StepCacheSettings(threshold=cache_threshold)
    runs: list[int] = []  # runs of the last DiT block (a cached step skips it); not countable inside compiled blocks
    handle = generation.adapter.blocks[-1].norm1.register_forward_hook(lambda *_: runs.append(1))
    option("cache", generation.with_options(cache=cache))
    handle.remove()
    calls_per_step = 1 if generation.adapter.guidance_in_one_batch else 2
    result.update(cache_setting=f"first_block:{cache_threshold}",
                  cache_blocks_run=round(len(runs) / ((2 + generation.steps) * calls_per_step), 3))
    generation.adapter.transformer.disable_cache()

    compiled = option("compile", generation.with_options(cache=None, compile=CompileSettings(mode="blocks")))
    result["compile_first_generation_extra_s"] = round(compiled["warmup_s"] - base["warmup_s"], 1)
    # The blocks are compiled already: this pipeline only adds the cache around them.
    option("compile_cache", generation.with_options(cache=cache, compile=CompileSettings()))
    return result


def training_figures(setup: Setup, steps: int, lora_rank: int, batch_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="humanim-gpu-bench-") as work:
        figures = gpu_lora_step(Path(work), steps, lora_rank, batch_size, setup.device, setup.transformer)
    return {f"train_{key.removeprefix('gpu_')}": value for key, value in figures.items() if key != "gpu"}


def run_section(result: dict[str, object], name: str, section: Callable[[], dict[str, object]]) -> None:
    """Add a section's figures to `result`, or `<name>_error` when it fails (the other sections still run)."""
    started = time.perf_counter()
    try:
        result.update(section())
    except Exception as err:  # noqa: BLE001 -- one failed figure must not cost the GPU time of the others
        traceback.print_exc()
        result[f"{name}_error"] = f"{type(err).__name__}: {err}"
    result[f"{name}_section_s"] = round(time.perf_counter() - started, 1)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    train = load_config(TrainJobConfig, GPU_CONFIG, {"data": {"rows_dir": "unused"}})
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per timed generation (>= 2)")
    parser.add_argument("--noise-repeats", type=int, default=5)
    parser.add_argument("--cache-threshold", type=float, default=0.2, help="first_block threshold (README's)")
    parser.add_argument("--train-steps", type=int, default=1, help="timed training steps, after 2 warm-up steps")
    parser.add_argument("--lora-rank", type=int, default=train.backbone_config().lora.rank)
    parser.add_argument("--train-batch", type=int, default=train.micro_batch_size, help="rows per step")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section on the CPU at tiny sizes")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: a step is timed between two progress callbacks")
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); it measures GPU "
                 "figures only. --cpu-smoke checks the script on the CPU.")
    setup = CPU_SMOKE if args.cpu_smoke else FULL_SIZE
    torch.set_num_threads(1 if args.cpu_smoke else 8)
    result: dict[str, object] = {
        "benchmark": "gpu", "device": torch.cuda.get_device_name() if setup.device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__, "frames": setup.num_frames, "resolution": list(setup.resolution),
        "steps": args.steps,
    }
    body = load_body_model().to(setup.device)
    run_section(result, "noise", lambda: noise_figures(setup, args.noise_repeats))
    run_section(result, "generation", lambda: generation_figures(Generation(setup, body, args.steps),
                                                                 args.cache_threshold))
    torch._dynamo.reset()  # the compiled blocks' code holds on to the generation transformer
    if setup.device == "cuda":
        result["memory_left_before_training_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    run_section(result, "training", lambda: training_figures(setup, args.train_steps, args.lora_rank, args.train_batch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
