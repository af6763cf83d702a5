"""Serve load: concurrent clients against the HTTP API with the tiny CogVideoX backbone; prints one JSON line.

Starts a local Ray and the humanim Serve app (auth on, tiny CogVideoX at 32x32, 9 frames, 2 steps), then
`--clients` clients on loopback each run `--requests` jobs in a row: submit, long-poll the job until it ends
(GET ?wait_s=), fetch the MP4. Bounded by `--timeout` seconds in all.

The service's own overhead of a job is its end-to-end time (POST sent -> MP4 received) minus the
generation time its record reports (the replica's time on inputs, denoising and MP4 encoding): HTTP,
auth, validation, storage, dispatch, batch waits, queueing behind other jobs and the long poll's wake-up.
`wait_ms` is the part from acceptance to the replica starting the job (dispatch + queueing).
Then `--poll-flood` threads long-poll (wait_s=30) one running job at once while /healthz is probed: past
`limits.max_waiting_polls` the ingress answers 503 with Retry-After, so `poll_flood.healthz_ms.max` stays small.
Targets: `lost` 0, `overhead_ms.p99` < 100, `poll_flood.healthz_errors` 0.

    python benchmarks/serve_load.py [--clients 4] [--requests 5] [--replicas 2] [--poll-flood 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "cancelled"}


def _inputs() -> dict[str, tuple[str, bytes]]:
    from pipelines.demo.motions import make_demo_motion

    image, motion = io.BytesIO(), io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image, "PNG")
    np.savez(motion, **make_demo_motion("walk", 9).to_arrays())
    return {"image": ("person.png", image.getvalue()), "motion": ("walk.npz", motion.getvalue())}


def _args(storage: str, key: str, replicas: int) -> dict:
    return {
        "storage_uri": storage,
        "backbones": {"tiny-cogvideox": {"config": "configs/backbones/tiny-cogvideox.yaml", "device": "cpu"}},
        "noise_options": {"texture_size": 32},
        "defaults": {"steps": 2, "guidance": 1.0},
        "auth": {"required": True, "api_keys": [key], "api_keys_env": None},
        "jobs": {"heartbeat_interval_s": 1, "lease_timeout_s": 10, "reconcile_interval_s": 2},
        "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.1}},
        "generation": {
            "num_replicas": replicas, "max_ongoing_requests": 8,
            "batch": {"max_batch_size": 4, "batch_wait_timeout_s": 0.005}, "ray_actor_options": {"num_cpus": 0.2},
        },
        "long_video": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered) * 1000, 1),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
    }


class Client:
    """One client's closed loop of jobs against `base`."""

    def __init__(self, base: str, key: str, files: dict, deadline: float):
        self.base, self.deadline, self.files = base, deadline, files
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.results: list[dict] = []

    def job(self, seed: int) -> dict:
        start = time.perf_counter()
        response = self.session.post(f"{self.base}/v1/videos", data={"seed": seed}, files=self.files, timeout=30)
        if response.status_code != 202:
            return {"error": f"POST {response.status_code}"}
        job_id = response.json()["id"]
        while time.monotonic() < self.deadline:
            wait_s = max(0.0, min(10.0, self.deadline - time.monotonic()))
            response = self.session.get(f"{self.base}/v1/videos/{job_id}", params={"wait_s": wait_s}, timeout=30)
            if response.status_code == 503:  # the ingress holds its share of long polls: as a client should
                time.sleep(float(response.headers["Retry-After"]))
                continue
            job = response.json()
            if job["status"] in TERMINAL:
                break
        else:
            return {"lost": job_id}
        if job["status"] != "succeeded":
            return {"error": f"{job['status']}: {job['error']}"}
        video = self.session.get(f"{self.base}/v1/videos/{job_id}/content", timeout=30)
        end = time.perf_counter()
        if video.status_code != 200 or not video.content:
            return {"error": f"content {video.status_code}"}
        return {
            "e2e": end - start,
            "overhead": end - start - job["generation_s"],
            "wait": job["started_at"] - job["created_at"],
            "generation": job["generation_s"],
        }

    def run(self, count: int, first_seed: int) -> list[dict]:
        for index in range(count):
            if time.monotonic() >= self.deadline:
                self.results.append({"error": "not started: out of time"})
                continue
            self.results.append(self.job(first_seed + index))
        return self.results


def poll_flood(base: str, key: str, files: dict, polls: int) -> dict:
    """`polls` concurrent long polls of one running job while /healthz is probed ten times."""
    headers = {"Authorization": f"Bearer {key}"}
    data = {"steps": 100, "articulated_noise": "false"}
    job_id = requests.post(f"{base}/v1/videos", data=data, files=files, headers=headers, timeout=30).json()["id"]

    def poll(_: int) -> int:
        url = f"{base}/v1/videos/{job_id}"
        return requests.get(url, params={"wait_s": 30}, headers=headers, timeout=60).status_code

    healthz, errors = [], 0
    with ThreadPoolExecutor(polls) as pool:
        statuses = [pool.submit(poll, index) for index in range(polls)]
        time.sleep(0.5)  # the polls are in
        for _ in range(10):
            start = time.perf_counter()
            try:
                errors += requests.get(f"{base}/healthz", timeout=5).status_code != 200
            except requests.RequestException:
                errors += 1
            healthz.append(time.perf_counter() - start)
        requests.delete(f"{base}/v1/videos/{job_id}", headers=headers, timeout=10)  # ends the waiting polls
        codes = [status.result() for status in statuses]
    return {"polls": polls, "busy_503": codes.count(503), "healthz_ms": _percentiles(healthz),
            "healthz_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5, help="jobs per client")
    parser.add_argument("--replicas", type=int, default=2, help="generation replicas")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the measured phase")
    parser.add_argument("--poll-flood", type=int, default=200,
                        help="concurrent long polls of one job (0: none); the ingress here holds 128 at most")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serve.app import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    files = _inputs()
    with tempfile.TemporaryDirectory(prefix="humanim-serve-") as storage:
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(_args(storage, key, args.replicas)), name="humanim-bench", route_prefix="/")
            warmup = Client(base, key, files, time.monotonic() + args.timeout)
            with ThreadPoolExecutor(2 * args.replicas) as pool:  # every replica loads its pipeline
                list(pool.map(warmup.job, range(2 * args.replicas)))
            deadline = time.monotonic() + args.timeout
            clients = [Client(base, key, files, deadline) for _ in range(args.clients)]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                runs = list(pool.map(lambda i: clients[i].run(args.requests, 1000 * (i + 1)), range(args.clients)))
            elapsed = time.perf_counter() - start
            flood = poll_flood(base, key, files, args.poll_flood) if args.poll_flood else None
        finally:
            serve.shutdown()
            ray.shutdown()
    results = [result for run in runs for result in run]
    done = [result for result in results if "e2e" in result]
    print(json.dumps({
        "benchmark": "serve_load",
        "clients": args.clients,
        "requests": len(results),
        "generation_replicas": args.replicas,
        "succeeded": len(done),
        "requests_per_s": round(len(done) / elapsed, 2),
        "overhead_ms": _percentiles([result["overhead"] for result in done]),
        "wait_ms": _percentiles([result["wait"] for result in done]),
        "e2e_ms": _percentiles([result["e2e"] for result in done]),
        "generation_ms": _percentiles([result["generation"] for result in done]),
        "errors": sum("error" in result for result in results),
        "lost": sum("lost" in result for result in results),
        "error_samples": sorted({result["error"] for result in results if "error" in result})[:3],
        "poll_flood": flood,
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
