"""Job records, inputs and results on any `pyarrow.fs` filesystem, written atomically (temp file + move).

Layout under the storage URI:

    jobs/<id>/record.json     the job's state (rewritten by whoever holds the job)
    jobs/<id>/<input>         inputs as .npy/.npz (never pickle), written once at submission
    jobs/<id>/cancel          marker: a client asked to cancel
    jobs/<id>/video.mp4       the result
    active/<id>               marker: the job is not finished (what the reconciler scans)
    ingresses/<owner>.json    each ingress replica's heartbeat (queued jobs live while their owner does)
    idempotency/<hash>.json   Idempotency-Key -> job id, per client; created only if absent (the claim)

Claiming an Idempotency-Key is atomic on a local or shared file system (a hard link, which fails when the name
exists). pyarrow has no conditional put for object stores (s3://, gs://), so there two ingresses racing on one key
can both claim it; the job id is derived from the client and the key, so both then write the same job (one record),
though it may be generated twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from typing import Any, Literal

import pyarrow.fs as pafs
from pydantic import BaseModel, Field

from pipelines.generation.photo import PhotoIntake
from pipelines.generation.photo_retarget import RetargetSummary

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Deployment = Literal["generation", "long_video"]
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)
RESULT_NAME = "video.mp4"


def new_job_id() -> str:
    """A server-generated job id: uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def idempotent_job_id(client: str, key: str) -> str:
    """The job id a client's Idempotency-Key names: concurrent claims of one key converge on one job."""
    return hashlib.sha256(f"job\n{client}\n{key}".encode()).hexdigest()[:32]


def check_job_id(job_id: str) -> str:
    """`job_id` if it is a server-generated id, else ValueError (no path can be smuggled in)."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(f"job id must be 32 lowercase hex digits, got {job_id!r}")
    return job_id


class Progress(BaseModel):
    """Denoising steps done out of the total."""

    done: int = 0
    total: int = 0


class GenerationParams(BaseModel):
    """What a job generates, resolved at submission (defaults filled in, seed drawn)."""

    backbone: str
    prompt: str
    negative_prompt: str
    num_frames: int
    resolution: tuple[int, int]
    steps: int
    guidance: float
    gamma: float
    seed: int
    articulated_noise: bool
    fps: float | None = Field(None, description="None: the pipeline's default")
    max_run_s: float | None = Field(None, description="how long it may run; None: jobs.max_run_s")
    inputs: list[str] = Field(description="input files stored with the job (image.npy, motion.npz, pose_video.npy)")
    photo: PhotoIntake | None = Field(None, description="how the reference photo was fitted: its box and method")
    retarget: RetargetSummary | None = Field(
        None, description="whether the motion was retargeted onto the photo's person (or why not), and the fit"
    )

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with the same key can run in one batch."""
        return self.backbone, self.resolution, self.num_frames, self.steps


class JobRecord(BaseModel):
    """The state of one job."""

    id: str
    client: str
    status: Status
    deployment: Deployment
    params: GenerationParams
    created_at: float
    updated_at: float
    attempt: int = 1
    owner: str = Field(description="the ingress replica that dispatches it while queued")
    worker: str | None = Field(None, description="the replica running it")
    heartbeat_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Field(default_factory=Progress)
    error: str | None = None
    generation_s: float | None = Field(
        None, description="a succeeded job's time on its replica: inputs, denoising, MP4"
    )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def moved(self, **changes: Any) -> JobRecord:
        """A copy with `changes` and a fresh `updated_at`."""
        return self.model_copy(update={**changes, "updated_at": time.time()})


class Storage:
    """Bytes and JSON at paths under a `pyarrow.fs` URI; every write is a temp file moved into place."""

    def __init__(self, uri: str):
        self.filesystem, self.root = pafs.FileSystem.from_uri(uri)
        self.root = self.root.rstrip("/")

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def write(self, relative: str, data: bytes) -> None:
        path = self._path(relative)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        self.filesystem.move(temporary, path)

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Write the file only if it does not exist yet; False when it did. Atomic on local file systems; on others
        a check then a write (see the module docstring)."""
        if not isinstance(self.filesystem, pafs.LocalFileSystem):
            if self.exists(relative):
                return False
            self.write(relative, data)
            return True
        path = self._path(relative)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as file:
            file.write(data)
        try:
            os.link(temporary, path)  # complete content under the final name, or FileExistsError
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            with self.filesystem.open_input_stream(self._path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def exists(self, relative: str) -> bool:
        return self.filesystem.get_file_info(self._path(relative)).type == pafs.FileType.File

    def delete(self, relative: str) -> None:
        try:
            self.filesystem.delete_file(self._path(relative))
        except FileNotFoundError:
            pass

    def names(self, relative: str) -> list[str]:
        """File names directly under a folder (none when it does not exist); temp files left out."""
        selector = pafs.FileSelector(self._path(relative), allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        return [info.base_name for info in infos if info.type == pafs.FileType.File and ".tmp-" not in info.base_name]

    def write_json(self, relative: str, value: Any) -> None:
        self.write(relative, json.dumps(value).encode())

    def read_json(self, relative: str) -> Any:
        data = self.read(relative)
        return None if data is None else json.loads(data)


class JobStore:
    """Jobs on a `Storage`: the only code that knows the layout in the module docstring."""

    def __init__(self, uri: str):
        self.storage = Storage(uri)

    @staticmethod
    def _job(job_id: str, name: str) -> str:
        return f"jobs/{check_job_id(job_id)}/{name}"

    def create(self, record: JobRecord, inputs: dict[str, bytes]) -> None:
        """Store a new job: inputs, then the active marker, then the record (what makes it visible)."""
        for name, data in inputs.items():
            self.storage.write(self._job(record.id, name), data)
        self.storage.write_json(f"active/{record.id}", {"created_at": record.created_at})
        self.save(record)

    def record(self, job_id: str) -> JobRecord | None:
        data = self.storage.read_json(self._job(job_id, "record.json"))
        return None if data is None else JobRecord.model_validate(data)

    def save(self, record: JobRecord) -> None:
        self.storage.write_json(self._job(record.id, "record.json"), record.model_dump(mode="json"))

    def finish(self, record: JobRecord) -> None:
        """Save a terminal record and drop the job from the active set."""
        self.save(record)
        self.storage.delete(f"active/{record.id}")

    def active(self) -> list[str]:
        """Ids of jobs not known to be finished."""
        return [name for name in self.storage.names("active") if _JOB_ID.match(name)]

    def active_since(self, job_id: str) -> float | None:
        """When an active job was created (None when its marker is gone)."""
        marker = self.storage.read_json(f"active/{check_job_id(job_id)}")
        return None if marker is None else float(marker["created_at"])

    def forget(self, job_id: str) -> None:
        """Drop an active marker whose submission never completed."""
        self.storage.delete(f"active/{check_job_id(job_id)}")

    def input(self, job_id: str, name: str) -> bytes:
        data = self.storage.read(self._job(job_id, name))
        if data is None:
            raise FileNotFoundError(f"job {job_id} has no input {name}")
        return data

    def write_result(self, job_id: str, video: bytes) -> None:
        self.storage.write(self._job(job_id, RESULT_NAME), video)

    def result(self, job_id: str) -> bytes | None:
        return self.storage.read(self._job(job_id, RESULT_NAME))

    def request_cancel(self, job_id: str) -> None:
        self.storage.write(self._job(job_id, "cancel"), b"")

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(self._job(job_id, "cancel"))

    @staticmethod
    def _idempotency(client: str, key: str) -> str:
        digest = hashlib.sha256(f"{client}\n{key}".encode()).hexdigest()
        return f"idempotency/{digest}.json"

    def idempotent_job(self, client: str, key: str) -> tuple[str, str] | None:
        """(job id, request fingerprint) a client's Idempotency-Key already names."""
        entry = self.storage.read_json(self._idempotency(client, key))
        return None if entry is None else (entry["job_id"], entry["fingerprint"])

    def claim_idempotency(self, client: str, key: str, job_id: str, fingerprint: str) -> tuple[str, str] | None:
        """Claim a client's Idempotency-Key for a job about to be created: None when this call claimed it, else
        the (job id, fingerprint) that holds it."""
        entry = json.dumps({"job_id": job_id, "fingerprint": fingerprint, "claimed_at": time.time()}).encode()
        while not self.storage.create_exclusive(self._idempotency(client, key), entry):
            holder = self.idempotent_job(client, key)
            if holder is not None:  # else released since: claim again
                return holder
        return None

    def idempotency_claimed_at(self, client: str, key: str) -> float | None:
        entry = self.storage.read_json(self._idempotency(client, key))
        return None if entry is None else float(entry.get("claimed_at", 0.0))

    def release_idempotency(self, client: str, key: str) -> None:
        """Drop a claim whose job was never created (its ingress died between claiming and creating)."""
        self.storage.delete(self._idempotency(client, key))

    def beat(self, owner: str) -> None:
        """Record that ingress `owner` is alive now."""
        self.storage.write_json(f"ingresses/{owner}.json", {"heartbeat_at": time.time()})

    def owner_alive(self, owner: str, lease_timeout_s: float) -> bool:
        beat = self.storage.read_json(f"ingresses/{owner}.json")
        return beat is not None and time.time() - float(beat["heartbeat_at"]) < lease_timeout_s
