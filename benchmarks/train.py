"""Fine-tuning speed and memory on this machine; prints one JSON line.

CPU: the job on configs/train/tiny-cpu.yaml (2 Ray Train workers, DeepSpeed ZeRO-2 over gloo, the tiny CogVideoX
with LoRA, PadaLN and the motion decoder), on rows the preprocessing job makes from synthetic videos of the demo
motions: samples/s (the median of the per-step figures after the first, whose figure includes starting the data
pipeline) and each worker's peak RSS. Checkpoints and validation are left out of the per-step figures.

CUDA (when present): one GPU, the CogVideoX-5B-I2V transformer built from its real config with random bf16 weights
(benchmarks/generation.py's full-size pipeline: tiny VAE and one-layer T5 around it), a fresh LoRA, gradient
checkpointing, bf16 DeepSpeed ZeRO-2 on one process, batch 1 at 49 x 480 x 720 (latents [1, 13, 16, 60, 90]):
seconds per optimizer step and peak memory, against the published ~20 GB of a batch-1 LoRA with checkpointing.

    python benchmarks/train.py [--steps 40] [--gpu-steps 5] [--lora-rank 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipelines.io.config import load_config
from pipelines.preprocess.config import VideoJobConfig
from pipelines.training.config import TrainJobConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"
GPU_CONFIG = ROOT / "configs" / "train" / "cogvideox-5b-lora.yaml"
VIDEOS_CONFIG = ROOT / "configs" / "preprocess" / "videos-tiny.yaml"
PUBLISHED_LORA_MEMORY_GB = 20.0  # CogVideoX-5B-I2V LoRA fine-tuning, batch 1, rank 16-256, gradient checkpointing


def cpu_training(work: Path, steps: int) -> dict[str, object]:
    import ray

    # benchmarks/preprocess.py, next to this script
    from preprocess import write_synthetic_videos

    from ray_jobs.preprocess import run_videos
    from ray_jobs.train import run

    videos = load_config(VideoJobConfig, VIDEOS_CONFIG, {"videos": work / "videos", "output_dir": str(work / "rows")})
    (work / "videos").mkdir()
    write_synthetic_videos(work / "videos", 3, videos.num_frames * videos.clips.max_clips_per_video)
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = run_videos(videos)["clips_written"]
    config = load_config(TrainJobConfig, TINY_CONFIG, {
        "output_dir": work / "train",
        "data": {"rows_dir": str(work / "rows"), "validation_rows": 0},
        "max_steps": steps,
        "checkpoint_every_steps": steps,
        "validation": {"every_steps": None},
    })
    started = time.perf_counter()
    run(config)
    seconds = time.perf_counter() - started
    metrics = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    workers = config.resources.num_workers
    return {
        "cpu_config": str(TINY_CONFIG.relative_to(ROOT)),
        "cpu_workers": workers,
        "cpu_cores": os.cpu_count(),
        "cpu_rows": rows,
        "cpu_steps": steps,
        "cpu_batch_size": config.batch_size,
        "samples_per_s": round(statistics.median(row["samples_per_s"] for row in metrics[1:]), 3),
        "peak_rss_mb_per_worker": [round(last[f"peak_memory_mb_rank{rank}"], 1) for rank in range(workers)],
        "cpu_run_s": round(seconds, 1),
        "cpu_loss_first_last": [round(metrics[0]["loss"], 4), round(last["loss"], 4)],
    }


def gpu_lora_step(work: Path, steps: int, lora_rank: int, batch_size: int = 1, device: str = "cuda",
                  transformer: dict | None = None) -> dict[str, object]:
    """The LoRA step on one process at the transformer's learned size (`transformer`: a config of the 5B I2V
    architecture, default the real one; `device` cpu only to check the code path, over gloo)."""
    import torch.distributed as dist

    # benchmarks/full_size_configs.py and generation.py, next to this script
    from full_size_configs import COGVIDEOX_5B_I2V
    from generation import full_size_pipeline, synchronize

    from models.backbones import LoraSettings
    from models.body_model import load_body_model
    from pipelines.articulated_noise import NoiseConfig, build_motion_operator
    from pipelines.demo.motions import make_demo_motion
    from pipelines.training.engine import build_engine, build_modules, optimizer_step
    from pipelines.training.step import make_training_batch

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    config = load_config(TrainJobConfig, GPU_CONFIG, {
        "output_dir": work / "gpu",
        "data": {"rows_dir": str(work / "unused")},
        "batch_size": batch_size,
        "lora": {"rank": lora_rank, "alpha": lora_rank},
        "resources": {"num_workers": 1, "use_gpu": cuda, "cpus_per_worker": 1},
    })
    body = load_body_model().to(device)
    adapter = full_size_pipeline(body, device, transformer or COGVIDEOX_5B_I2V).adapter
    adapter.config = adapter.config.model_copy(update={"lora": LoraSettings(rank=lora_rank, alpha=lora_rank)})
    _, modules = build_modules(config, adapter)
    engine = build_engine(modules, config)

    frames, (height, width) = adapter.num_frames, adapter.resolution
    motion = make_demo_motion("walk", frames)
    noise = NoiseConfig(num_frames=frames, height=height, width=width)
    operator, render = build_motion_operator(motion, body, noise, device)
    video = torch.rand(batch_size, frames, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # Operators on the CPU, where the step's generator draws (as the job's collation puts them).
    batch = make_training_batch(adapter, video.to(device), ["a person walking"] * batch_size,
                                [(operator.to("cpu"), render)] * batch_size)
    # Training reads stored text embeddings: the text encoder and the input video leave the GPU.
    adapter.pipeline.text_encoder.to("cpu")
    del video, render
    if cuda:
        torch.cuda.empty_cache()
    times = []
    for step in range(1, steps + 3):
        if step == 3 and cuda:  # two warm-up steps
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        started = time.perf_counter()
        optimizer_step(engine, [batch], config, step, 0)
        synchronize(device)
        times.append(time.perf_counter() - started)
    trained = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
    dist.destroy_process_group()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else device,
        "gpu_latents": list(batch.latents.shape),
        "gpu_lora_rank": lora_rank,
        "gpu_trained_parameters": trained,
        "gpu_s_per_step": round(statistics.median(times[2:]), 3),
        "gpu_peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "gpu_published_reference_gb": PUBLISHED_LORA_MEMORY_GB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the CPU run (>= 2)")
    parser.add_argument("--gpu-steps", type=int, default=5, help="timed steps on the GPU, after 2 warm-up steps")
    parser.add_argument("--lora-rank", type=int, default=128, help="LoRA rank of the GPU step")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: the first step's figure includes starting the data pipeline")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="humanim-train-bench-"))
    result: dict[str, object] = {"benchmark": "train", **cpu_training(work, args.steps)}
    if torch.cuda.is_available():
        result.update(gpu_lora_step(work, args.gpu_steps, args.lora_rank))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
