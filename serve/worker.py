"""Running jobs on a generation replica: inputs from storage, generation under a lease, the MP4 back to storage.

A running job's record is kept fresh by a `Lease`: a thread that rewrites it (heartbeat and progress) every
`heartbeat_interval_s` and notices a take-over (the reconciler retried or failed the job); every denoising step also
wakes it to look for a cancel request, so a cancel stops the generation a step or two after DELETE, not a heartbeat.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.paths import project_path, resolve_location
from pipelines.generation.animation import AnimationPipeline
from pipelines.io.motion import motion_from_npz_bytes
from pipelines.io.video import write_video
from serve.config import ServeConfig
from serve.jobs import JobRecord, JobStore, Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRef:
    """What a generation replica is sent: a job and the attempt it should run."""

    id: str
    attempt: int


class JobStopped(Exception):
    """The job must stop: its client cancelled it (`cancelled`), or it was retried or failed elsewhere."""

    def __init__(self, cancelled: bool):
        super().__init__("cancelled" if cancelled else "taken over")
        self.cancelled = cancelled


class Lease:
    """Holds a running record: heartbeats and progress from a thread; `step` raises JobStopped when told to stop."""

    def __init__(self, store: JobStore, record: JobRecord, interval_s: float):
        self.store, self.record, self.interval_s = store, record, interval_s
        self._progress = record.progress
        self._stopped: JobStopped | None = None
        self._done = threading.Event()
        self._stepped = threading.Event()  # set by each step: look for a cancel request now
        self._thread = threading.Thread(target=self._beat_until_done, name=f"lease-{record.id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._stepped.set()
        self._thread.join()

    def step(self, done: int, total: int) -> None:
        """The pipeline's progress callback: raises JobStopped once the lease thread has seen a stop; never waits
        for storage itself."""
        self._progress = Progress(done=done, total=total)
        if self._stopped is not None:
            raise self._stopped
        self._stepped.set()

    def _beat_until_done(self) -> None:
        """Heartbeats every `interval_s`; in between, a cancel check after each step (checks coalesce when steps
        come faster than storage answers)."""
        next_beat = time.monotonic() + self.interval_s
        while True:
            self._stepped.wait(max(0.0, next_beat - time.monotonic()))
            self._stepped.clear()
            if self._done.is_set():
                return
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval_s
                    self._beat()
                elif self._stopped is None and self.store.cancel_requested(self.record.id):
                    self._stopped = JobStopped(cancelled=True)
            except Exception:  # a storage hiccup: the next beat tries again
                logger.exception("heartbeat of job %s failed", self.record.id)

    def _beat(self) -> None:
        current = self.store.record(self.record.id)
        if current is None or current.finished or current.attempt != self.record.attempt:
            self._stopped = JobStopped(cancelled=False)
        elif self.store.cancel_requested(self.record.id):
            self._stopped = JobStopped(cancelled=True)
        else:
            self.record = self.record.moved(heartbeat_at=time.time(), progress=self._progress)
            self.store.save(self.record)

    @property
    def progress(self) -> Progress:
        return self._progress


def _failure(err: Exception) -> str:
    """The reason a job failed, for its client: input errors as they are, others with their type."""
    return str(err) if isinstance(err, ValueError) else f"generation error: {type(err).__name__}: {err}"


class GenerationWorker:
    """Runs jobs with one loaded pipeline (swapped when a job names another backbone)."""

    def __init__(self, config: ServeConfig, name: str):
        self.config, self.name = config, name
        self.store = JobStore(resolve_location(config.storage_uri))
        self._loaded: tuple[str, AnimationPipeline] | None = None

    def _pipeline(self, backbone: str) -> AnimationPipeline:
        if self._loaded is None or self._loaded[0] != backbone:
            self._loaded = None  # free the old one first (GPU memory)
            entry = self.config.backbones[backbone]
            device = entry.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            pipeline = AnimationPipeline.from_config(
                entry.backbone_config(),
                lora=None if entry.lora is None else project_path(entry.lora),
                padaln=None if entry.padaln is None else project_path(entry.padaln),
                device=device,
                noise_options=self.config.noise_options,
            )
            self._loaded = backbone, pipeline
        return self._loaded[1]

    def _generate(self, record: JobRecord, lease: Lease) -> bytes:
        """The job's MP4."""
        params, job = record.params, record.id

        def stored(name: str) -> bytes | None:
            return self.store.input(job, name) if name in params.inputs else None

        def array(name: str) -> np.ndarray | None:
            data = stored(name)
            return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)

        motion = stored("motion.npz")
        motion = None if motion is None else motion_from_npz_bytes(motion)
        output = self._pipeline(params.backbone)(
            array("image.npy"),
            params.prompt,
            motion,
            array("pose_video.npy"),
            negative_prompt=params.negative_prompt,
            num_frames=params.num_frames,
            resolution=params.resolution,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            gamma=params.gamma,
            seed=params.seed,
            articulated_noise=params.articulated_noise,
            long_video=self.config.defaults.long_video,
            fps=params.fps,
            callback=lease.step,
            mask=array("mask.npy"),
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "video.mp4"
            write_video(path, output.frames, output.fps)
            return path.read_bytes()

    def run(self, record: JobRecord) -> str:
        """Run one job to its end (or until it is taken over); returns the status it ended in."""
        if self.store.cancel_requested(record.id):
            self.store.finish(record.moved(status="cancelled", finished_at=time.time()))
            return "cancelled"
        started = time.time()
        record = record.moved(
            status="running", worker=self.name, started_at=started, heartbeat_at=started,
            progress=Progress(done=0, total=record.params.steps), error=None,
        )
        self.store.save(record)
        clock = time.perf_counter()
        lease = Lease(self.store, record, self.config.jobs.heartbeat_interval_s)
        try:
            with lease:
                video = self._generate(record, lease)
            seconds = time.perf_counter() - clock
            self.store.write_result(record.id, video)
            final = lease.record.moved(status="succeeded", progress=lease.progress, generation_s=seconds)
        except JobStopped as stop:
            if not stop.cancelled:
                return "taken over"
            final = lease.record.moved(status="cancelled", progress=lease.progress)
        except Exception as err:
            logger.exception("job %s failed", record.id)
            final = lease.record.moved(status="failed", progress=lease.progress, error=_failure(err))
        self.store.finish(final.moved(finished_at=time.time()))
        return final.status

    def run_batch(self, jobs: Iterable[JobRef]) -> list[str]:
        """Run a batch: compatible jobs (same backbone, resolution, frames, steps) back to back on one loaded
        pipeline, groups in order of first arrival. Returns each job's final status, in the order given."""
        jobs = list(jobs)
        statuses = {job: "skipped" for job in jobs}
        records = {}
        for job in jobs:
            record = self.store.record(job.id)
            # Gone, finished, or an older attempt than the record's: someone else has it.
            if record is not None and not record.finished and record.attempt == job.attempt:
                records[job] = record
        rank: dict[tuple, int] = {}
        for record in records.values():
            rank.setdefault(record.params.batch_key(), len(rank))
        logger.info("batch of %d jobs: %d to run in %d compatible groups", len(jobs), len(records), len(rank))
        for job, record in sorted(records.items(), key=lambda item: rank[item[1].params.batch_key()]):
            statuses[job] = self.run(record)
        return [statuses[job] for job in jobs]
