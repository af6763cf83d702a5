"""The ingress's job logic, free of Ray and HTTP: submit, look up, cancel, fetch, dispatch and reconcile.

Every accepted job ends succeeded, failed (with a reason) or cancelled:
- a dispatch that fails (its replica died) retries the job until `jobs.max_attempts`, then fails it;
- the reconciler, run in every ingress, retries or fails running jobs whose heartbeat is older than
  `jobs.lease_timeout_s` (a replica lost without anyone waiting on it, e.g. after an ingress restart), fails
  jobs running longer than `jobs.max_run_s`, and adopts queued jobs whose ingress is gone.
Storage calls block, so they run in threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable

from serve.config import ServeConfig
from serve.jobs import JobRecord, JobStore, Progress, idempotent_job_id, new_job_id
from serve.requests import BackboneInfo, Submission, Upload, parse_submission
from serve.retargeting import Retargeter

logger = logging.getLogger(__name__)
Dispatcher = Callable[[JobRecord], Awaitable[object]]
WAIT_POLL_S = 0.25
CLAIM_WAIT_S = 10.0  # how long a request waits for the record of a job another request claimed its key for


class JobNotFound(LookupError):
    """No such job for this client."""


class JobConflict(Exception):
    """The job is not in a state that allows the request."""


class ServiceBusy(Exception):
    """This replica holds as many long polls as it may; the client should poll again after `retry_after_s`."""

    retry_after_s = 1


class ReplicaLost(Exception):
    """A dispatch failed because the replica running the job is gone."""


class JobService:
    """Jobs as the HTTP API sees them, dispatched through `dispatch` (a Serve handle call in the app)."""

    def __init__(
        self, config: ServeConfig, store: JobStore, backbones: dict[str, BackboneInfo], dispatch: Dispatcher,
        owner: str, retargeter: Retargeter | None = None,
    ):
        self.config, self.store, self.backbones, self.owner = config, store, backbones, owner
        self.retargeter = retargeter  # the estimator and body that retarget motions (serve.retargeting)
        self._dispatch_call = dispatch
        self._in_flight: dict[str, asyncio.Task] = {}
        self._waiting_polls = 0
        self._key_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self.last_reconcile: float | None = None

    # Requests

    async def submit(self, client: str, upload: Upload, idempotency_key: str | None) -> tuple[JobRecord, bool]:
        """Accept a job (RequestError when the request is refused); returns it and whether it already existed."""
        if idempotency_key is None:
            return await self._create(client, upload), False
        lock = self._key_locks.setdefault((client, idempotency_key), asyncio.Lock())
        async with lock:  # one claim per key in this ingress; the store's claim settles it between ingresses
            fingerprint = upload.fingerprint()
            known = await asyncio.to_thread(self.store.idempotent_job, client, idempotency_key)
            if known is None:
                submission = await asyncio.to_thread(
                    parse_submission, upload, self.backbones, self.config, self.retargeter
                )
                job_id = idempotent_job_id(client, idempotency_key)
                claim = self.store.claim_idempotency, client, idempotency_key, job_id, fingerprint
                known = await asyncio.to_thread(*claim)
                if known is None:
                    try:
                        return await self._accept(client, submission, job_id), False
                    except BaseException:  # no job behind the claim: free the key for a retry
                        await asyncio.to_thread(self.store.release_idempotency, client, idempotency_key)
                        raise
            job_id, known_fingerprint = known
            if known_fingerprint != fingerprint:
                raise JobConflict("Idempotency-Key: already used for a different request")
            return await self._claimed_job(client, idempotency_key, job_id), True

    async def _claimed_job(self, client: str, key: str, job_id: str) -> JobRecord:
        """The job another request claimed the key for, once its record exists (it is being written)."""
        deadline = time.monotonic() + CLAIM_WAIT_S
        while (record := await asyncio.to_thread(self.store.record, job_id)) is None:
            if time.monotonic() > deadline:
                claimed_at = await asyncio.to_thread(self.store.idempotency_claimed_at, client, key)
                if claimed_at is not None and time.time() - claimed_at > self.config.jobs.lease_timeout_s:
                    await asyncio.to_thread(self.store.release_idempotency, client, key)  # its ingress died
                raise JobConflict("Idempotency-Key: a request with this key is still being accepted; retry")
            await asyncio.sleep(WAIT_POLL_S)
        if record.client != client:
            raise JobNotFound(f"no job {job_id}")
        return record

    async def _create(self, client: str, upload: Upload) -> JobRecord:
        submission = await asyncio.to_thread(
            parse_submission, upload, self.backbones, self.config, self.retargeter
        )
        return await self._accept(client, submission, new_job_id())

    async def _accept(self, client: str, submission: Submission, job_id: str) -> JobRecord:
        """Store a checked submission as job `job_id` and dispatch it."""
        now = time.time()
        record = JobRecord(
            id=job_id, client=client, status="queued", deployment=submission.deployment,
            params=submission.params, created_at=now, updated_at=now, owner=self.owner,
        )
        await asyncio.to_thread(self.store.create, record, submission.inputs)
        self._dispatch(record)
        return record

    async def get(self, client: str, job_id: str, wait_s: float = 0.0) -> JobRecord:
        """The job; with `wait_s`, once it has finished or after that long (a long poll): at once when this
        ingress dispatched it, else by re-reading the record every `WAIT_POLL_S`. At most
        `limits.max_waiting_polls` wait at once (ServiceBusy past it), so waiting never takes every slot."""
        if wait_s <= 0:
            return await self._wait(client, job_id, 0.0)
        limit = self.config.limits.max_waiting_polls
        if self._waiting_polls >= limit:
            raise ServiceBusy(f"wait_s: {limit} long polls are already waiting on this replica; poll again shortly")
        self._waiting_polls += 1
        try:
            return await self._wait(client, job_id, wait_s)
        finally:
            self._waiting_polls -= 1

    async def _wait(self, client: str, job_id: str, wait_s: float) -> JobRecord:
        deadline = time.monotonic() + wait_s
        while True:
            record = await asyncio.to_thread(self.store.record, job_id)
            if record is None or record.client != client:
                raise JobNotFound(f"no job {job_id}")
            left = deadline - time.monotonic()
            if record.finished or left <= 0:
                return record
            dispatch = self._in_flight.get(job_id)
            if dispatch is None:
                await asyncio.sleep(min(left, WAIT_POLL_S))
            else:  # its dispatch call returns once the replica has written the final record
                await asyncio.wait({dispatch}, timeout=min(left, WAIT_POLL_S))

    async def cancel(self, client: str, job_id: str) -> JobRecord:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        record = await self.get(client, job_id)
        if record.status == "cancelled":
            return record
        if record.finished:
            raise JobConflict(f"job {job_id} already {record.status}")
        await asyncio.to_thread(self.store.request_cancel, job_id)
        if record.status == "queued":
            record = record.moved(status="cancelled", finished_at=time.time())
            await asyncio.to_thread(self.store.finish, record)
        return record

    async def content(self, client: str, job_id: str) -> bytes:
        record = await self.get(client, job_id)
        if record.status != "succeeded":
            raise JobConflict(f"job {job_id} is {record.status}; its video exists once it has succeeded")
        video = await asyncio.to_thread(self.store.result, job_id)
        if video is None:
            raise JobNotFound(f"job {job_id} succeeded but its video is gone from storage")
        return video

    # Dispatch

    def _dispatch(self, record: JobRecord) -> None:
        self._in_flight[record.id] = asyncio.get_running_loop().create_task(self._run(record))

    async def _run(self, record: JobRecord) -> None:
        try:
            await self._dispatch_call(record)
        except Exception as err:
            reason = str(err) if isinstance(err, ReplicaLost) else f"dispatch failed: {type(err).__name__}: {err}"
            logger.warning("job %s attempt %d: %s", record.id, record.attempt, reason)
            await self._lost(record.id, record.attempt, reason)
        finally:
            if self._in_flight.get(record.id) is asyncio.current_task():
                del self._in_flight[record.id]

    async def _lost(self, job_id: str, attempt: int, reason: str) -> None:
        """The replica running `attempt` is gone: retry the job, or fail it once attempts are used up."""
        record = await asyncio.to_thread(self.store.record, job_id)
        if record is None or record.finished or record.attempt != attempt:
            return
        if await asyncio.to_thread(self.store.cancel_requested, job_id):
            await asyncio.to_thread(self.store.finish, record.moved(status="cancelled", finished_at=time.time()))
        elif attempt < self.config.jobs.max_attempts:
            retry = record.moved(
                status="queued", attempt=attempt + 1, owner=self.owner, worker=None, heartbeat_at=None,
                started_at=None, progress=Progress(),
            )
            await asyncio.to_thread(self.store.save, retry)
            self._dispatch(retry)
        else:
            error = f"{reason} (after {attempt} attempts)"
            failed = record.moved(status="failed", finished_at=time.time(), error=error)
            await asyncio.to_thread(self.store.finish, failed)

    # Reconciliation

    def _scan(self) -> tuple[list[tuple[JobRecord, str]], list[JobRecord]]:
        """One pass over the active jobs: (lost running jobs with the reason, orphaned queued jobs)."""
        jobs, now = self.config.jobs, time.time()
        self.store.beat(self.owner)
        lost, orphans = [], []
        for job_id in self.store.active():
            record = self.store.record(job_id)
            if record is None:  # a submission that never completed (its client got no 202)
                created = self.store.active_since(job_id)
                if created is None or now - created > jobs.lease_timeout_s:
                    self.store.forget(job_id)
            elif record.finished:  # its holder stopped between writing the record and dropping the marker
                self.store.forget(job_id)
            elif record.status == "running":
                silent = now - (record.heartbeat_at or record.started_at or record.created_at)
                if silent > jobs.lease_timeout_s:
                    lost.append((record, f"generation replica lost: no heartbeat for {silent:.0f} s"))
                elif now - (record.started_at or now) > (limit := record.params.max_run_s or jobs.max_run_s):
                    self.store.request_cancel(job_id)
                    self.store.finish(record.moved(
                        status="failed", finished_at=now, error=f"timed out: ran longer than {limit:g} s"
                    ))
            elif job_id not in self._in_flight and (
                record.owner == self.owner or not self.store.owner_alive(record.owner, jobs.lease_timeout_s)
            ):
                orphans.append(record)
        return lost, orphans

    async def reconcile(self) -> None:
        """Beat this ingress's heartbeat, then settle lost and orphaned jobs."""
        lost, orphans = await asyncio.to_thread(self._scan)
        for record, reason in lost:
            await self._lost(record.id, record.attempt, reason)
        for record in orphans:
            adopted = record.moved(owner=self.owner)
            await asyncio.to_thread(self.store.save, adopted)
            self._dispatch(adopted)
        self.last_reconcile = time.time()

    async def reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                logger.exception("reconciling jobs failed")
            await asyncio.sleep(self.config.jobs.reconcile_interval_s)

    def ready(self) -> bool:
        """Storage answered within the last few reconcile intervals."""
        return self.last_reconcile is not None and (
            time.time() - self.last_reconcile < 3 * self.config.jobs.reconcile_interval_s
        )
