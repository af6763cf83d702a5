"""Generation speed and memory; prints one JSON line.

CPU, tiny CogVideoX 1.5 at 32x32 with an 81-frame window (21 latent frames), one thread: seconds per
denoising step per window, `long_ratio` = time per output frame at 321 frames / at 81 frames (target
<= 1.5), and how much each generation raises the peak RSS (Linux /proc): flat with length for the windowed
denoising and decoding, since windows run one at a time.

The full-size GPU figures (the CogVideoX-5B-I2V transformer with random weights: step time, MFU, memory, PadaLN,
step caching, compiled blocks) are benchmarks/gpu.py's, built from this script's `full_size_pipeline`.

Then, on the trained toy model shipped in weights/toy-cogvideox (when there), speed against quality per setting:
caching off, First Block Cache at 3 thresholds and compiled blocks, on held-out synthetic people rendered in memory
(`benchmarks/step_cache.py`'s measurement: seconds per video, speed-up, PSNR against the uncached video for the same
noise, silhouette IoU against the truth), with `cache_speedup` / `cache_psnr_db` of the recommended cache setting.

    python benchmarks/generation.py [--steps 8] [--toy-clips 4]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from full_size_configs import COGVIDEOX_5B_I2V  # next to this script
from step_cache import measure as measure_step_cache  # next to this script

from models.backbones import BackboneConfig, build_adapter, load_backbone_config
from models.body_model import load_body_model
from pipelines.demo.motions import make_demo_motion
from pipelines.demo.synth import SIZE, draw_clip
from pipelines.evaluation.heldout import render_heldout_clip
from pipelines.generation.animation import AnimationPipeline
from pipelines.generation.long_video import plan_windows

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbones"
TOY = CONFIGS / "toy-cogvideox.yaml"
TOY_THRESHOLDS = [0.05, 0.1, 0.2]


def timed_generation(pipeline: AnimationPipeline, image: np.ndarray, motion, frames: int, steps: int,
                     sync: bool = False, **options) -> tuple[float, float]:
    """Wall time of one generation and the median time of one denoising step (between progress callbacks)."""
    stamps = []

    def stamp(done: int, total: int) -> None:
        if sync:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    pipeline(image, "a person walking", motion, num_frames=frames, num_inference_steps=steps, guidance_scale=6.0,
             seed=0, callback=stamp, **options)
    if sync:
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    return total, statistics.median(np.diff(stamps))


def tiny_long_video_pipeline() -> AnimationPipeline:
    """Tiny CogVideoX 1.5 at 32x32 with the released 81-frame window (21 latent frames)."""
    settings = load_backbone_config(CONFIGS / "tiny-cogvideox1.5.yaml").model_dump()
    return AnimationPipeline(build_adapter(BackboneConfig.model_validate({**settings, "num_frames": 81})))


def tiny_inputs() -> tuple[np.ndarray, object]:
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), make_demo_motion("walk", 321)


def cpu_long_video(steps: int) -> dict[str, float]:
    pipeline = tiny_long_video_pipeline()
    image, motion = tiny_inputs()
    window = pipeline.adapter.latent_num_frames(81)
    timed_generation(pipeline, image, motion, 81, 2)  # warm-up
    result: dict[str, float] = {}
    for frames in (81, 321):
        # The fastest of 3: the CI-size machine's 2 cores are shared, and a slow outlier is not the code's.
        total, step = min(timed_generation(pipeline, image, motion, frames, steps) for _ in range(3))
        windows = len(plan_windows(pipeline.adapter.latent_num_frames(frames), window))
        result.update({
            f"cpu_s_{frames}": round(total, 3),
            f"cpu_windows_{frames}": windows,
            f"cpu_s_per_step_per_window_{frames}": round(step / windows, 5),
        })
    result["long_ratio"] = round((result["cpu_s_321"] / 321) / (result["cpu_s_81"] / 81), 3)
    return result


def rss_mb(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def cpu_memory(steps: int) -> dict[str, float]:
    """Peak RSS growth of one generation per length: freed memory is handed back to the OS (malloc_trim) and the
    peak reset (/proc/self/clear_refs) before each. With i.i.d. noise it isolates windowed denoising + decoding
    from the articulated-noise operator build, which renders every latent frame's body at once."""
    libc = ctypes.CDLL("libc.so.6")
    pipeline = tiny_long_video_pipeline()
    image, motion = tiny_inputs()
    pipeline(image, "a person", motion, num_frames=321, num_inference_steps=1, seed=0)  # warm-up
    result = {}
    for articulated, suffix in ((True, ""), (False, "_iid_noise")):
        for frames in (81, 321):
            libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            before = rss_mb("VmRSS")
            pipeline(image, "a person", motion, num_frames=frames, num_inference_steps=steps,
                     articulated_noise=articulated, seed=0)
            result[f"cpu_peak_rss_growth_mb_{frames}{suffix}"] = round(rss_mb("VmHWM") - before, 1)
    result["cpu_peak_rss_mb"] = round(rss_mb("VmHWM"), 1)
    return result


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA), so wall times measure it."""
    if device == "cuda":
        torch.cuda.synchronize()


def full_size_pipeline(body, device: str = "cuda", transformer: dict = COGVIDEOX_5B_I2V) -> AnimationPipeline:
    """The real 5B I2V transformer (random bf16 weights; `transformer`: another config of it, e.g. fewer and
    narrower blocks) with a one-layer T5 of its text width and the tiny VAE, at the transformer's learned size."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from models.backbones import CogVideoXAdapter

    tiny = build_adapter(load_backbone_config(CONFIGS / "tiny-cogvideox.yaml"))
    factor = tiny.spatial_factor
    with torch.device(device):
        model = CogVideoXTransformer3DModel(**transformer).to(torch.bfloat16)
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tiny.pipeline.tokenizer), d_model=transformer["text_embed_dim"], d_kv=64,
                     d_ff=256, num_layers=1, num_heads=2)
        )
    components = {**tiny.pipeline.components, "transformer": model, "text_encoder": text_encoder}
    config = BackboneConfig(family="cogvideox", variant="1.0", path="random-weights", dtype="bfloat16",
                            resolution=(transformer["sample_height"] * factor, transformer["sample_width"] * factor),
                            num_frames=transformer["sample_frames"])
    return AnimationPipeline(CogVideoXAdapter(CogVideoXImageToVideoPipeline(**components), config, device), body=body)


def toy_speed_quality(count: int) -> dict:
    """Step caching and compiled blocks on the shipped toy model, `count` held-out people (the synthetic test
    split's first clips, rendered in memory); `toy_note` instead when no model is shipped."""
    config = load_backbone_config(TOY)
    if not (config.path / "variants" / "shipped.json").is_file():
        return {"toy_note": f"no trained model in {config.path}: step caching and compile not measured"}
    body = load_body_model()
    clips = [render_heldout_clip(draw_clip(0, "test", index, config.num_frames, SIZE), body, config.resolution)
             for index in range(count)]
    measured = measure_step_cache(config, clips, body, TOY_THRESHOLDS, compile_blocks=True)
    return {"toy_" + key if key in ("model", "clips", "settings", "recommended") else key: value
            for key, value in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per timed generation (>= 2)")
    parser.add_argument("--toy-clips", type=int, default=4, help="held-out people for the toy model's settings "
                        "(0: skip them)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: a step is timed between two progress callbacks")
    torch.set_num_threads(1)
    result = {"benchmark": "generation", "cpu_threads": 1, "steps": args.steps, **cpu_long_video(args.steps),
              **cpu_memory(args.steps)}
    if args.toy_clips:
        torch.set_num_threads(2)  # as the toy's own figures (README) were measured
        result.update(toy_speed_quality(args.toy_clips))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
