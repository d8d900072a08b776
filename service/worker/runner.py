"""The worker: load and warm up the models, then run jobs through its engine until told to stop.

Lifecycle
---------
1. **Start.** The heartbeat (state ``loading``) and the health port come up first, so an
   orchestrator sees a live, not-ready process while models load.
2. **Load and warm up** every model of the repository that opens (in a thread, so the
   heartbeat goes on), then state ``ready``: only now does ``/readyz`` answer 200 and
   ``worker --check`` exit 0.
3. **Jobs**, one on the engine at a time (each job's own state is an :class:`ActiveJob`,
   each job an asyncio task): receive
   (which also takes over jobs of dead workers) -> start -> read the uploads from the
   blob store and decode them -> tiled inference in a thread -> encode a float32 OpenEXR
   -> write it to the blob store -> mark the job succeeded and ack (``complete``). A
   store fault or Redis refusing a write fails the attempt with that as the reason (the
   job is retried up to ``max_attempts``), never as a lost worker. After every tile batch the
   inference thread reports to the event loop: progress on the record and a check for
   cancellation. Every heartbeat also ``touch``-es the job in hand, so a live worker
   keeps its job however slow a tile batch is; only a dead worker's job (or a hung one,
   without progress for ``job_stall_seconds``) is re-delivered.
   **Pipelining** (``prefetch_jobs`` > 0): the engine is the scarce part, so a job holds
   one of ``1 + prefetch_jobs`` slots from its claim until its engine turn ends, and a new
   job is claimed only when a slot is free, i.e. when the engine is about to be free.
   So while one job's tile batches run, up to ``prefetch_jobs`` more are being read and
   decoded and then wait for the engine (in claim order), and finished ones are encoded
   and stored beside it (at most ``1 + prefetch_jobs`` of those). A prefetched job is
   ``running`` in its record; the heartbeat renews its claim like the running one's, a
   cancel is seen while it waits, and a dead worker's prefetched jobs are re-delivered
   like any other. ``prefetch_jobs = 0`` holds the slot to the job's end: one job at a
   time, start to end.
   **Cross-job batching** (``batch_delay_ms`` > 0): the jobs in hand do not take turns on
   the engine but run their tile loops together through one
   :class:`~service.engines.batching.BatchingEngine` per model, which packs their tile
   batches (same tile shape and EV stops) into engine calls of up to the tile batch.
   Heartbeats (:mod:`service.worker.heartbeat`) and the blob sweeper
   (:mod:`service.storage.lifecycle`) run beside the loop.
4. **SIGTERM/SIGINT: drain.** Stop taking jobs; prefetched jobs that have not reached
   the engine are handed back at once (``release``: re-delivered at once, no attempt
   spent) so another worker can start them now; the job on the engine may finish within
   ``drain_seconds``, counted from the signal; at that deadline it is handed back even mid
   tile batch or mid decode: those run in a daemon thread the worker stops waiting for
   (:mod:`service.worker.threads`), so the process exits at the deadline, not a tile
   batch later. Results being encoded and stored are finished. A second signal hands
   every job back at once. Exit 0.
5. **Engine fault** (CUDA error and the like): the job is failed with ``retry=True`` (it
   goes back to the queue unless it was its last attempt) and the process exits with
   :data:`EXIT_ENGINE_FAULT` for its supervisor to restart it with a fresh device context.

How a failed job is judged: a ``ServiceError`` that is not ``retryable`` (bad input:
undecodable pixels that slipped past the API's header checks, an impossible tile size, a
model this worker lacks) fails it at once and for good; anything else is retried up to
``max_attempts``, then dead-lettered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from functools import partial
from typing import Any, Final

from redis.exceptions import RedisError

from service.config import Settings
from service.engines.base import Engine
from service.engines.batching import BatchingEngine
from service.engines.pipeline import reconstruct
from service.engines.registry import ServedModel
from service.engines.runtime import keep_freed_memory
from service.errors import BadRequest, ServiceError
from service.exposures import ExposureSet
from service.imaging import encode_exr
from service.metrics import Outcome, Stage, WorkerMetrics, gpu_memory_collector
from service.queue import Broker, Delivery, JobRecord, JobState, open_broker, refuses_writes
from service.queue.jobs import StageTimings
from service.storage import StoreUnavailable, result_name
from service.storage.lifecycle import sweep, sweep_interval
from service.worker.faults import is_engine_fault
from service.worker.health import HealthServer, build_health_app
from service.worker.heartbeat import Heartbeat
from service.worker.job import ActiveJob, Cancelled, HandedBack, JobStopped, Lost, read_exposures
from service.worker.metered import MeteredEngine
from service.worker.models import ModelNotServed, ModelSet, load_models, warm_up
from service.worker.threads import run_until_handed_back

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
#: Exit status after an engine fault: the supervisor restarts the worker.
EXIT_ENGINE_FAULT: Final = 3
#: Longest a blocking receive waits, so that a stop request is noticed within a second.
RECEIVE_BLOCK_MS: Final = 1000
#: How long the inference thread waits for a progress report to reach Redis; past that
#: it goes on computing (a slow Redis must not stall the GPU) and reports next batch.
PROGRESS_REPORT_TIMEOUT_SECONDS: Final = 10.0
#: Pauses between tries while Redis is unreachable.
REDIS_BACKOFF_SECONDS: Final = (0.5, 1.0, 2.0, 5.0)
#: How often a job waiting for the engine checks whether it was cancelled, taken over or
#: is to be handed back, and how often the loop waiting for a free slot checks for a stop.
WAIT_POLL_SECONDS: Final = 0.25


class WorkerState(str, Enum):
    """Where a worker is in its life (announced in its heartbeat)."""

    LOADING = "loading"
    """Loading and warming up models; takes no jobs yet."""
    READY = "ready"
    """Takes jobs."""
    DRAINING = "draining"
    """Told to stop: takes no new job, finishing (or handing back) the one in hand."""
    STOPPED = "stopped"
    """The loop has ended."""


class Worker:
    """One worker process's loop over the queue. Run it with ``await worker.run()``."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        *,
        models: ModelSet | None = None,
        metrics: WorkerMetrics | None = None,
        health_port: int | None = None,
    ) -> None:
        """``models`` skips loading the repository (tests, benchmarks); ``health_port``
        overrides ``settings.worker_metrics_port`` (-1: no health port)."""
        self.settings = settings
        self.broker = broker
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.worker_id = settings.worker_id
        self.state = WorkerState.LOADING
        self.exit_code = EXIT_OK
        self.health_port: int | None = None
        self._wanted_port = settings.worker_metrics_port if health_port is None else health_port
        self._models = models
        self._started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._jobs: dict[str, ActiveJob] = {}
        """The jobs in hand (being decoded, waiting for or on the engine, being stored)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._engine = asyncio.Lock()
        """Held by the job whose tile batches are running: one at a time (unless batching)."""
        self._batchers: dict[str, BatchingEngine] = {}
        """Per model, with ``batch_delay_ms`` > 0: the engine all jobs in hand share."""
        self._slots = asyncio.Semaphore(1 + settings.prefetch_jobs)
        """Jobs claimed and not yet through the engine (see the module docstring)."""
        self._in_hand = asyncio.Semaphore(2 * (1 + settings.prefetch_jobs))
        """All jobs in hand: bounds the results waiting to be encoded and stored."""
        self._claim_lock = asyncio.Lock()
        self.heartbeat = Heartbeat(
            broker,
            settings,
            self.metrics,
            info=self._heartbeat_info,
            after_beat=self._keep_job,
            ready=lambda: self.not_ready_reason() is None,
        )

    # ------------------------------------------------------------------ health

    @property
    def models(self) -> ModelSet | None:
        return self._models

    def not_ready_reason(self) -> str | None:
        """None when the worker takes jobs; otherwise why it does not (for /readyz)."""
        if self.state is WorkerState.LOADING:
            return "loading and warming up models"
        if self.state is not WorkerState.READY:
            return f"worker is {self.state.value}"
        if self._models is None or not self._models.served:
            reasons = "; ".join(
                f"{name}: {why}"
                for name, why in (self._models.unavailable if self._models else {}).items()
            )
            return f"no model can serve here ({reasons or 'empty model repository'})"
        if not self.heartbeat.redis_ok:
            return "Redis (the job queue) is unreachable"
        for job in list(self._jobs.values()):
            stalled = job.stalled_seconds(self.settings.job_stall_seconds)
            if stalled is not None:
                return f"job {job.job_id} made no progress for {stalled:.0f} s"
        return None

    @property
    def _running(self) -> ActiveJob | None:
        """The job on the engine (else the oldest in hand), for the heartbeat and the log."""
        jobs = list(self._jobs.values())
        return next((j for j in jobs if j.holds_engine), jobs[0] if jobs else None)

    def _heartbeat_info(self) -> dict[str, Any]:
        reason = self.not_ready_reason()
        models = self._models
        return {
            "ready": reason is None,
            "state": self.state.value,
            "reason": reason,
            "models": models.describe(self.state is WorkerState.READY) if models else {},
            "unavailable": dict(models.unavailable) if models else {},
            "default_model": models.default if models else None,
            "job": running.job_id if (running := self._running) else None,
            "jobs": list(self._jobs),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "metrics_port": self.health_port,
            "started_at": self._started_at,
        }

    async def _keep_job(self) -> None:
        """Keep the job in hand from being re-delivered while this worker lives.

        Touched with every heartbeat, not only after each tile batch, so that a tile
        batch slower than the visibility timeout does not hand a healthy job to a second
        worker; only a dead worker (or a hung one: no progress for ``job_stall_seconds``)
        loses its job.
        """
        async with self._claim_lock:
            for job in list(self._jobs.values()):
                if not self._keeps(job):
                    continue
                try:
                    owned = await self.broker.touch(job.delivery)
                except (RedisError, OSError) as exc:
                    log.warning("job %s: could not renew its claim (%s)", job.job_id, exc)
                    return
                if not owned and job.claimed:
                    job.lost.set()

    @staticmethod
    async def _end_task(task: asyncio.Task[None]) -> None:
        """Cancel ``task`` until it has ended.

        Never trust one ``cancel()`` of a task that talks to Redis: redis-py's asyncio
        client occasionally swallows a cancellation that lands mid-command (measured here
        with 8.1: about 3 in 100 cancelled SETs completed instead; redis-py issues #2028,
        #2551), and a task whose only cancel was lost would keep the worker from exiting.
        """
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Stop taking jobs; the job on the engine has ``drain_seconds`` (a second call:
        none), prefetched ones are handed back at once.

        Safe to call from any thread (a signal handler, a test, a supervisor thread): the
        request is carried over to the worker's own event loop.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self.request_stop)
                return
        if self._stopping.is_set():
            log.warning("second stop request: handing the jobs in hand back now")
            for job in self._jobs.values():
                job.hand_back()
            return
        self._stopping.set()
        if self.state is not WorkerState.STOPPED:
            self.state = WorkerState.DRAINING
        if not self._jobs:
            log.info("stopping: no job in hand")
        for job in self._jobs.values():
            if not job.engine_started:
                log.info("draining: handing prefetched job %s back", job.job_id)
                job.hand_back()
            elif job.drain_timer is None:
                log.info(
                    "draining: job %s may finish within %s s",
                    job.job_id,
                    self.settings.drain_seconds,
                )
                job.drain_timer = asyncio.get_running_loop().call_later(
                    self.settings.drain_seconds, job.hand_back
                )

    async def run(self) -> int:
        """Serve until :meth:`request_stop` or an engine fault; returns the exit status."""
        self._loop = asyncio.get_running_loop()
        health = await self._start_health()  # first, so the first heartbeat names its port
        heartbeat = asyncio.create_task(self.heartbeat.run())
        sweeper = asyncio.create_task(self._sweep_loop())
        try:
            if self._models is None:
                self._models = await asyncio.to_thread(load_models, self.settings)
            await asyncio.to_thread(warm_up, self._models)
            self.metrics.set_models({n: m.describe() for n, m in self._models.served.items()})
            if not self._stopping.is_set():
                await self._ensure_group()
                self.state = WorkerState.READY
                await self.heartbeat.beat()  # tell the API now, not at the next interval
                if self._batching and self.settings.prefetch_jobs == 0:
                    log.warning(
                        "HDR_BATCH_DELAY_MS is set but HDR_PREFETCH_JOBS is 0: with one job"
                        " in hand there are no other jobs' tiles to pack"
                    )
                log.info(
                    "worker %s ready: serves %s (default %s)",
                    self.worker_id,
                    ", ".join(sorted(self._models.served)) or "nothing",
                    self._models.default,
                )
            while self._taking_jobs():
                if not self._models.served:  # not ready; the heartbeat says why
                    await self._pause(self.settings.heartbeat_interval_seconds)
                    continue
                if not await self._acquire(self._in_hand, self._taking_jobs):
                    break
                if not await self._acquire(self._slots, self._taking_jobs):
                    self._in_hand.release()
                    break
                delivery = await self._receive()
                if delivery is None:
                    self._slots.release()
                    self._in_hand.release()
                    continue
                # In hand from now, before its task first runs: the next receive must
                # already count it among the entries this worker holds.
                job = ActiveJob(delivery, holds_slot=True)
                self._jobs[job.job_id] = job
                task = asyncio.create_task(self._handle(job), name=delivery.job_id)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception as exc:
            if not is_engine_fault(exc):
                raise
            log.critical("engine fault outside a job: %s", exc, exc_info=True)
            self.exit_code = EXIT_ENGINE_FAULT
        finally:
            if self.exit_code != EXIT_OK:  # the engine is gone: jobs waiting for it go back
                for job in self._jobs.values():
                    if not job.engine_started:
                        job.hand_back()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            self.state = WorkerState.STOPPED
            await self._end_task(sweeper)
            await self._end_task(heartbeat)
            await self.heartbeat.retire()
            if health is not None:
                await health.stop()
        log.info("worker %s stopped (exit status %s)", self.worker_id, self.exit_code)
        return self.exit_code

    def _taking_jobs(self) -> bool:
        return not self._stopping.is_set() and self.exit_code == EXIT_OK

    @staticmethod
    async def _acquire(
        primitive: asyncio.Lock | asyncio.Semaphore,
        keep_waiting: Callable[[], bool | Awaitable[bool]],
    ) -> bool:
        """Acquire ``primitive`` unless ``keep_waiting`` (asked every
        :data:`WAIT_POLL_SECONDS`) says to give up; True when acquired.

        One acquiring task waits throughout, so the waiter keeps its place in the FIFO
        order of the lock: prefetched jobs reach the engine in the order they were claimed.
        """
        acquiring = asyncio.ensure_future(primitive.acquire())
        acquired = False
        try:
            while True:
                done, _ = await asyncio.wait({acquiring}, timeout=WAIT_POLL_SECONDS)
                if done:
                    acquired = True
                    return True
                verdict = keep_waiting()
                if not (verdict if isinstance(verdict, bool) else await verdict):
                    return False
        finally:
            if not acquired:
                if not acquiring.done():
                    acquiring.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acquiring
                if not acquiring.cancelled():  # acquired just as we gave up
                    primitive.release()

    async def _start_health(self) -> HealthServer | None:
        if self._wanted_port < 0:
            return None
        server = HealthServer(
            build_health_app(self), self.settings.worker_metrics_host, self._wanted_port
        )
        try:
            await server.start()
        except OSError as exc:
            log.error(
                "cannot serve metrics and health on %s:%s (%s); running without them",
                self.settings.worker_metrics_host,
                self._wanted_port,
                exc,
            )
            return None
        self.health_port = server.port
        return server

    async def _sweep_loop(self) -> None:
        """Delete the blobs of expired jobs now and then (see service.storage.lifecycle).

        Every worker sweeps; a failed sweep (store or Redis away) is logged and retried at
        the next interval.
        """
        interval = sweep_interval(
            self.settings.sweep_interval_seconds, self.settings.job_ttl_seconds
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await sweep(
                    self.broker.store, self.broker.existing_jobs, self.settings.job_ttl_seconds
                )
            except (StoreUnavailable, RedisError, OSError) as exc:
                log.warning("blob sweep failed (%s); next in %s s", exc, interval)

    async def _redis_retry(self, attempt: int, exc: BaseException) -> None:
        self.heartbeat.redis_ok = False
        pause = REDIS_BACKOFF_SECONDS[min(attempt, len(REDIS_BACKOFF_SECONDS) - 1)]
        if attempt == 0:
            log.warning("Redis unreachable (%s); retrying", exc)
        await self._pause(pause)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _ensure_group(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self.broker.ensure_group(self._served_models())
                return
            except (RedisError, OSError) as exc:
                await self._redis_retry(attempt, exc)
                attempt += 1

    def _served_models(self) -> list[str]:
        """The models whose job streams this worker reads: those it serves, and no
        other, so that it never receives a job it cannot run."""
        return sorted(self._models.served) if self._models else []

    def _keeps(self, job: ActiveJob) -> bool:
        """Whether the worker keeps ``job`` claimed: from its start until it is settled,
        unless it is hung (no progress for ``job_stall_seconds``), which lets it go."""
        return job.claimed and job.stalled_seconds(self.settings.job_stall_seconds) is None

    def _held_entries(self) -> set[str]:
        """Entries of the jobs in hand, received and not yet settled: after a Redis stall
        longer than the visibility timeout, this worker's own take-over must not start
        one a second time (a hung job is let go, so it is re-delivered, here too)."""
        limit = self.settings.job_stall_seconds
        return {
            job.delivery.entry_id
            for job in self._jobs.values()
            if not job.settling and job.stalled_seconds(limit) is None
        }

    async def _receive(self) -> Delivery | None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                delivery = await self.broker.receive(
                    self.worker_id,
                    block_ms=RECEIVE_BLOCK_MS,
                    models=self._served_models(),
                    held=self._held_entries(),
                )
            except (RedisError, OSError) as exc:
                await self._redis_retry(attempt, exc)
                attempt += 1
                continue
            if delivery is not None and self._stopping.is_set():
                # Received while being told to stop: not ours to start any more.
                await self._settle(partial(self.broker.release, delivery), delivery)
                return None
            return delivery
        return None

    async def _settle(self, step: Callable[[], Awaitable[Any]], delivery: Delivery) -> Any:
        """Record a job's end in Redis, retrying while Redis is briefly away.

        The heartbeat stops renewing the claim first (under the claim lock, so no renewal
        is in flight): ``release`` and a retrying ``fail`` age the entry on purpose, and a
        late renewal would undo that. Gives up after about the visibility timeout: by
        then the job is re-delivered anyway, and holding on would only delay this worker.
        """
        async with self._claim_lock:
            job = self._jobs.get(delivery.job_id)
            if job is not None and job.delivery is delivery:
                job.settling = True
        deadline = time.monotonic() + self.settings.visibility_timeout_seconds
        attempt = 0
        while True:
            try:
                return await step()
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "could not record the end of job %s (%s); it will be re-delivered",
                        delivery.job_id,
                        exc,
                    )
                    return None
                pause = REDIS_BACKOFF_SECONDS[min(attempt, len(REDIS_BACKOFF_SECONDS) - 1)]
                attempt += 1
                await asyncio.sleep(pause)

    # ------------------------------------------------------------------ one job

    async def _handle(self, job: ActiveJob) -> None:
        """Run one delivered job to its end, whatever happens, and count the outcome.

        The job holds a slot (taken by the loop before receiving it) until its engine
        turn ends, or to its end when nothing is prefetched.
        """
        assert self._models is not None
        delivery = job.delivery
        try:
            outcome = await self._attempt(job, self._models)
        except RedisError as exc:
            log.error(
                "job %s: Redis failed mid-job (%s); it will be re-delivered", delivery.job_id, exc
            )
            self.heartbeat.redis_ok = False
            return
        except Exception:
            # _attempt settles every failure of the job; this is a bug in the worker, and
            # the job is re-delivered after the visibility timeout.
            log.exception("job %s: unexpected error in the worker", delivery.job_id)
            return
        finally:
            job.end()
            self._free_slot(job)
            self._in_hand.release()
            if self._jobs.get(job.job_id) is job:
                del self._jobs[job.job_id]
        if outcome is not None:
            self.metrics.jobs.labels(outcome=outcome.value).inc()

    async def _attempt(self, job: ActiveJob, models: ModelSet) -> Outcome | None:
        """One attempt; returns its outcome (None: the job did not start here)."""
        delivery = job.delivery
        job_id = delivery.job_id
        record = await self.broker.get(job_id)
        try:
            name, model = models.pick(record.model if record else None)
        except ModelNotServed as exc:
            fail = partial(self.broker.fail, delivery, str(exc), retry=False)
            await self._settle(fail, delivery)
            return Outcome.FAILED
        started = await self.broker.start(delivery, self.worker_id, model.engine.backend)
        if started is None:
            return None
        job.start_recorded = True
        job.model = name
        log.info(
            "job %s: attempt %s on %s (%sx%s)",
            job_id,
            delivery.attempts,
            name,
            started.width,
            started.height,
        )
        try:
            return await self._run(job, started, name, model)
        except Cancelled:
            await self._settle(partial(self.broker.mark_cancelled, delivery), delivery)
            log.info("job %s cancelled between tile batches", job_id)
            return Outcome.CANCELLED
        except HandedBack:
            await self._settle(partial(self.broker.release, delivery), delivery)
            return Outcome.HANDED_BACK
        except Lost:
            log.warning("job %s was taken over by another worker; dropping it", job_id)
            return Outcome.LOST
        except (StoreUnavailable, RedisError) as exc:
            # The store, or Redis refusing a write (maxmemory), failed this attempt: the
            # job is retried (per max_attempts) with that as its reason; a server that
            # answered is not a lost worker. Any other Redis error ends the loop's turn.
            if isinstance(exc, StoreUnavailable):
                reason = exc.message
            elif refuses_writes(exc):
                reason = f"Redis refused a write: {exc}"
            else:
                raise
            log.warning("job %s: %s", job_id, reason)
            return await self._fail_attempt(delivery, reason)
        except Exception as exc:
            if isinstance(exc, ServiceError) and not exc.retryable:  # bad input: for good
                fail = partial(self.broker.fail, delivery, exc.message, retry=False)
                await self._settle(fail, delivery)
                return Outcome.FAILED
            reason = f"{type(exc).__name__}: {exc}"
            if is_engine_fault(exc):
                log.critical("job %s: engine fault, exiting: %s", job_id, reason)
                self.exit_code = EXIT_ENGINE_FAULT
                await self._settle(
                    partial(self.broker.fail, delivery, f"engine fault: {reason}", retry=True),
                    delivery,
                )
                return Outcome.ENGINE_FAULT
            log.exception("job %s failed", job_id)
            return await self._fail_attempt(delivery, reason)

    async def _fail_attempt(self, delivery: Delivery, reason: str) -> Outcome:
        """Fail this attempt, to be retried while attempts remain (else the job fails)."""
        state = await self._settle(
            partial(self.broker.fail, delivery, reason, retry=True), delivery
        )
        return Outcome.RETRIED if state is JobState.QUEUED else Outcome.FAILED

    async def _run(
        self, job: ActiveJob, record: JobRecord, name: str, model: ServedModel
    ) -> Outcome:
        """Decode, infer, encode, store: the happy path of :meth:`_attempt`."""
        params = record.params
        if params is None:
            raise BadRequest(f"job {record.id} has no parameters")
        queue_wait = None
        if record.started_at is not None:
            queue_wait = max(0.0, record.started_at - record.created_at)

        began = time.perf_counter()
        exposures = await run_until_handed_back(
            job.overdue,
            partial(read_exposures, self.broker.store, record.id, params, self.settings.max_pixels),
            f"decode {record.id}",
        )
        decode_seconds = time.perf_counter() - began

        try:
            plan = model.plan(exposures.height, exposures.width, params.tile_size)
        except ValueError as exc:
            raise BadRequest(f"tile_size: {exc}") from exc
        delivery = job.delivery

        try:
            began = time.perf_counter()
            hdr = await run_until_handed_back(
                job.overdue,
                partial(
                    reconstruct,
                    self._engine_for(name, model),
                    exposures,
                    plan,
                    model.tile_batch,
                    self._progress_bridge(job),
                    _Turn(self, job, len(plan)),
                ),
                f"inference {record.id}",
            )
            inference = time.perf_counter() - began - job.turn_wait
        finally:
            self._leave_engine(job)

        began = time.perf_counter()
        result = await asyncio.to_thread(encode_exr, hdr, "float32")
        del hdr
        encode_seconds = time.perf_counter() - began

        # The result goes to the store before the record says succeeded: a job never
        # succeeds without its result. A store fault here fails this attempt with the
        # store's message (StoreUnavailable, see _attempt); the job is retried.
        began = time.perf_counter()
        await asyncio.to_thread(self.broker.store.put, result_name(record.id), result)
        del result
        timings = StageTimings(
            queue_wait=queue_wait,
            decode=decode_seconds,
            inference=inference,
            encode=encode_seconds,
            store=time.perf_counter() - began,
        )
        began = time.perf_counter()
        stored = await self._settle(
            partial(self.broker.complete, delivery, timings, exposures.width, exposures.height),
            delivery,
        )
        store = time.perf_counter() - began
        if not stored:
            log.info("job %s: result not stored (finished elsewhere or cancelled)", record.id)
            return Outcome.LOST
        self._observe(job, name, record, exposures, len(plan), timings, store, inference)
        return Outcome.SUCCEEDED

    async def _engine_turn(self, job: ActiveJob, tiles: int) -> None:
        """Wait (in claim order) until the engine is free, then hold it for ``job``.

        While it waits the job is kept alive (no stall: waiting is not hanging) and
        checked for a cancel, a take-over and a hand-back, which end the wait. Raises
        the :class:`JobStopped` that ends the job, else reports its progress (0 tiles).
        """
        began = time.perf_counter()

        async def keep_waiting() -> bool:
            if job.lost.is_set() or job.handback.is_set():
                return False
            try:
                if await self.broker.is_cancel_requested(job.job_id):
                    return False
            except (RedisError, OSError) as exc:  # asked again at the next poll
                log.warning("job %s: cancel flag not read (%s)", job.job_id, exc)
            job.last_progress = time.monotonic()
            return True

        if not self._batching and not await self._acquire(self._engine, keep_waiting):
            if job.lost.is_set():
                raise Lost()
            if job.handback.is_set():
                raise HandedBack()
            raise Cancelled()
        job.holds_engine = job.engine_started = True
        job.turn_wait = time.perf_counter() - began
        self.metrics.prefetch_wait_seconds.observe(job.turn_wait)
        job.last_progress = time.monotonic()
        if not self._taking_jobs() and job.drain_timer is None:
            # Told to stop (or the engine faulted) before this job was in hand, so
            # request_stop did not see it: it is not ours to start any more.
            job.hand_back()
        stop = await self._report(job, 0, tiles)
        if stop is not None:
            raise stop

    def _leave_engine(self, job: ActiveJob) -> None:
        """End ``job``'s engine turn (once): the next job may start its engine calls, and
        with prefetching one more job may be claimed."""
        if job.holds_engine:
            job.holds_engine = False
            if not self._batching:
                self._engine.release()
        if self.settings.prefetch_jobs > 0:
            self._free_slot(job)

    @property
    def _batching(self) -> bool:
        return self.settings.batch_delay_ms > 0

    def _engine_for(self, name: str, model: ServedModel) -> Engine:
        """The engine a job's tiles go to: metered; shared and packing when batching."""
        if not self._batching:
            return MeteredEngine(model.engine, self.metrics)
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = BatchingEngine(
                MeteredEngine(model.engine, self.metrics),
                model.tile_batch,
                self.settings.batch_delay_ms / 1000,
            )
            if not batcher.batch_invariant:
                log.info(
                    "model %s: its %s engine on %s is not batch-invariant; a job packed with"
                    " others may differ from its solo result in the last float bits",
                    name,
                    batcher.backend,
                    batcher.device,
                )
        return batcher

    def _free_slot(self, job: ActiveJob) -> None:
        if job.holds_slot:
            job.holds_slot = False
            self._slots.release()

    def _observe(
        self,
        job: ActiveJob,
        name: str,
        record: JobRecord,
        exposures: ExposureSet,
        tiles: int,
        timings: StageTimings,
        store: float,
        inference: float,
    ) -> None:
        stages = timings.as_dict()
        stages[Stage.STORE.value] = stages.get(Stage.STORE.value, 0.0) + store
        for stage, seconds in stages.items():
            self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
        self.metrics.job_seconds.observe(max(0.0, time.time() - record.created_at))
        pixels = exposures.width * exposures.height
        self.metrics.pixels.labels(model=name).inc(pixels)
        self.metrics.tiles.labels(model=name).inc(max(0, tiles - job.tiles_reported))
        job.tiles_reported = tiles
        if inference > 0:
            self.metrics.throughput.labels(model=name).set(pixels / inference)
        log.info(
            "job %s succeeded: %sx%s, %s tiles, %s",
            record.id,
            exposures.width,
            exposures.height,
            tiles,
            ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()),
        )

    # ------------------------------------------------------------------ progress

    async def _report(self, job: ActiveJob, done: int, total: int) -> JobStopped | None:
        """Record progress, keep the job ours, and say whether it must stop."""
        job.last_progress = time.monotonic()
        if job.model is not None and done > job.tiles_reported:
            self.metrics.tiles.labels(model=job.model).inc(done - job.tiles_reported)
            job.tiles_reported = done
        await self.broker.progress(job.job_id, done, total)
        if job.lost.is_set() or not await self.broker.touch(job.delivery):
            return Lost()
        if await self.broker.is_cancel_requested(job.job_id):
            return Cancelled()
        if job.handback.is_set():
            return HandedBack()
        return None

    def _progress_bridge(self, job: ActiveJob) -> Callable[[int, int], None]:
        """The ``on_progress`` of :func:`reconstruct`: runs in the inference thread.

        It hands each report to the event loop and waits for the verdict; raising here
        is how a cancel, a hand-back or a take-over stops the run between tile batches.
        A report that fails (Redis away) is logged and inference goes on.
        """
        loop = asyncio.get_running_loop()

        def on_progress(done: int, total: int) -> None:
            if job.lost.is_set():
                raise Lost()
            if job.handback.is_set():
                raise HandedBack()
            future = asyncio.run_coroutine_threadsafe(self._report(job, done, total), loop)
            try:
                verdict = future.result(timeout=PROGRESS_REPORT_TIMEOUT_SECONDS)
            except (RedisError, OSError, concurrent.futures.TimeoutError) as exc:
                if isinstance(exc, RedisError) and refuses_writes(exc):
                    raise  # Redis refuses writes (maxmemory): the result could not be recorded
                future.cancel()
                log.warning("job %s: progress not recorded (%s)", job.job_id, exc)
                return
            if verdict is not None:
                raise verdict

        return on_progress


class _Turn:
    """The :class:`~service.engines.pipeline.EngineTurn` of one job: the inference thread
    builds its first tile batch, then waits here for the engine (on the worker's loop),
    and gives the engine up as soon as its last engine call returns, so the next job's
    calls start while this one blends its last tiles."""

    def __init__(self, worker: Worker, job: ActiveJob, tiles: int) -> None:
        self._worker = worker
        self._job = job
        self._tiles = tiles
        self._loop = asyncio.get_running_loop()

    def enter(self) -> None:
        turn = self._worker._engine_turn(self._job, self._tiles)
        asyncio.run_coroutine_threadsafe(turn, self._loop).result()

    def leave(self) -> None:
        self._loop.call_soon_threadsafe(self._worker._leave_engine, self._job)


# ---------------------------------------------------------------------- process entry points


async def serve_worker(settings: Settings) -> int:
    """The ``hdr-service worker`` process: signals, GPU metrics, the loop; exit status."""
    keep_freed_memory()
    async with open_broker(settings, client_name=f"hdr-worker:{settings.worker_id}") as broker:
        worker = Worker(settings, broker)
        gpu_memory_collector(worker.metrics.registry)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        return await worker.run()
