"""The larger toy variant on one GPU machine, from nothing (issue 12); prints one JSON line.

The README's toy chain with the project's own jobs, sized for a 16-core machine with one GPU and a fixed time:
synthetic training clips (`humanim synth`, the same seed and clips as the CPU chain), training rows
(configs/preprocess/toy-16cpu.yaml), the larger transformer's random init (configs/backbones/toy-cogvideox-large-init
.yaml), a short probe run of configs/train/toy-padaln-large.yaml to time a step, then the run itself with as many
steps as fit `--train-seconds`, or what is left of `--budget-seconds` for the whole script (written into that
config's `max_steps`, which the JSON reports: commit the same number), and `humanim backbone ship` into
weights/toy-cogvideox/variants/padaln-large. Steps whose output is already there are skipped. It edits that config
in place; `--cpu-smoke` (tiny sizes, 2 cores, no GPU: a check of the script, not a model) edits more of it, so run
that in a scratch clone (`PYTHONPATH=<clone>` when the virtual environment is another checkout's).

    python benchmarks/toy_gpu.py [--train-seconds 240] [--budget-seconds 480] [--cpu-smoke]

Measured on one H200 with 16 cores (issue 12): synth 26 s, preprocessing 38 s, 0.147 s per step of 16, 1900 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pipelines.io.config import load_config
from pipelines.io.training_rows import SUMMARY_NAME
from pipelines.training.config import TrainJobConfig
from pipelines.training.metrics import METRICS_NAME

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = ROOT / "configs" / "train" / "toy-padaln-large.yaml"
INIT_CONFIG = ROOT / "configs" / "backbones" / "toy-cogvideox-large-init.yaml"
PREPROCESS_CONFIG = ROOT / "configs" / "preprocess" / "toy-16cpu.yaml"
CLIPS, FRAMES = 320, 49  # README's toy chain
PROBE_STEPS = 40
VARIANT = "padaln-large"
# Besides its steps: the run's start and end (~50 s on the H200 machine) and the ship (~30 s there).
RUN_OVERHEAD_S = 150


def run(step: str, args: list[str], timings: dict[str, float]) -> None:
    """One product command, timed; the benchmark stops with its output when it fails."""
    start = time.perf_counter()
    print(f"[toy_gpu] {step}: {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    timings[step] = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"[toy_gpu] {step} failed (exit {result.returncode})")


def set_fields(path: Path, **fields: object) -> None:
    """Rewrite the first `key: value` of each key in a YAML config (flow mappings too) in place, keeping comments."""
    text = path.read_text()
    for key, value in fields.items():
        text, count = re.subn(rf"(\b{key}: )[^,}}\s#]+", rf"\g<1>{value}", text, count=1)
        if count != 1:
            raise ValueError(f"{path}: no `{key}:` to set")
    path.write_text(text)


def read_metrics(run_dir: Path) -> list[dict]:
    """A training run's logged metrics, one dict per logged step."""
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if line.strip()]


def seconds_per_step(rows: list[dict]) -> float:
    """Training seconds per step over a run's logged steps after the first (which holds the warm-up)."""
    first, last = ({"train_s": 0.0, "step": 0} if len(rows) == 1 else rows[0]), rows[-1]
    return (last["train_s"] - first["train_s"]) / (last["step"] - first["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=240.0, help="training time the run's steps must fit")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="wall time for the whole script: the run gets less training time when the steps before "
                             "it took long (RUN_OVERHEAD_S is kept for the run's start and end and the ship)")
    parser.add_argument("--max-steps", type=int, default=8000)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, no GPU: checks the script")
    args = parser.parse_args()
    clips, frames, probe_steps, preprocess = CLIPS, FRAMES, PROBE_STEPS, PREPROCESS_CONFIG
    if args.cpu_smoke:  # the 2-core chain's rows and resources
        clips, frames, probe_steps, preprocess = 4, 25, 4, ROOT / "configs" / "preprocess" / "toy.yaml"
        set_fields(TRAIN_CONFIG, use_gpu="false", cpus_per_worker=0.5, torch_threads=2, batch_size=2,
                   validation_rows=1, checkpoint_every_steps=2)

    start = time.perf_counter()
    timings: dict[str, float] = {}
    config = load_config(TrainJobConfig, TRAIN_CONFIG)  # where its rows, initial transformer and runs live
    init_dir = config.backbone_config().transformer.parent
    train_dir = ROOT / "data" / "synth" / "train"
    if not train_dir.is_dir():
        run("synth", ["-m", "ray_jobs.cli", "synth", "--out", str(train_dir), "--clips", str(clips), "--split",
                      "train", "--frames", str(frames), "--workers", str(max(1, (os.cpu_count() or 2) - 4))], timings)
    if not (Path(config.data.rows_dir) / SUMMARY_NAME).is_file():
        run("preprocess", ["-m", "ray_jobs.preprocess", "--config", str(preprocess)], timings)
    if not init_dir.is_dir():
        run("init", ["-m", "ray_jobs.cli", "backbone", "init", "--config", str(INIT_CONFIG), "--out", str(init_dir)],
            timings)

    set_fields(TRAIN_CONFIG, max_steps=probe_steps)
    run("probe", ["-m", "ray_jobs.train", "--config", str(TRAIN_CONFIG), "--run-name", f"{VARIANT}-probe"], timings)
    step_s = seconds_per_step(read_metrics(config.output_dir / f"{VARIANT}-probe"))
    train_seconds = args.train_seconds
    if args.budget_seconds is not None:
        train_seconds = min(train_seconds, args.budget_seconds - (time.perf_counter() - start) - RUN_OVERHEAD_S)
    steps = 6 if args.cpu_smoke else max(500, min(args.max_steps, int(train_seconds / step_s) // 100 * 100))
    set_fields(TRAIN_CONFIG, max_steps=steps)
    run("train", ["-m", "ray_jobs.train", "--config", str(TRAIN_CONFIG)], timings)
    run("ship", ["-m", "ray_jobs.cli", "backbone", "ship", "--train-config", str(TRAIN_CONFIG), "--name", VARIANT,
                 "--backbone", str(ROOT / "weights" / "toy-cogvideox")], timings)

    metrics = read_metrics(config.run_dir)
    print(json.dumps({
        "variant": VARIANT, "steps": steps, "batch_size": config.batch_size,
        "probe_seconds_per_step": round(step_s, 4), "seconds": timings,
        "train_s": round(metrics[-1]["train_s"], 1), "samples_per_s": round(metrics[-1]["samples_per_s"], 1),
        "peak_memory_mb": metrics[-1].get("peak_memory_mb"), "final_diffusion_loss": metrics[-1]["diffusion"],
        "diffusion_loss": {row["step"]: round(row["diffusion"], 4) for row in metrics[:: max(1, len(metrics) // 10)]},
        "cpu_smoke": args.cpu_smoke,
    }))


if __name__ == "__main__":
    main()
