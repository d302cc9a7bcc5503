"""Device workers from the parent's side: spawn, talk, watch, replace.

Each compute device gets a `Device` (lives as long as the daemon: its spec,
the models that should be resident on it, the current worker) and a
`DeviceActor` under the `devices` supervisor, which owns one worker process
per incarnation:

    devices (supervisor, one_for_one, backoff + restart intensity)
    ├── cpu:0   DeviceActor ── socketpair ──▶ python -m neuron.worker --device cpu:0
    └── cpu:1   DeviceActor ── socketpair ──▶ python -m neuron.worker --device cpu:1

A `WorkerProcess` is one incarnation's process. Its reader task routes
frames: step tokens to each sequence's `TokenStream`, replies to the job
waiting for them, heartbeats to statistics. Its watchdog kills the process
when it goes silent (no frame within `heartbeat` seconds: stopped or hung)
or stalls (sequences in flight but no step within `step` seconds). When the
process ends for any reason, every sequence and job it held fails at once
with `WorkerDied`, the actor crashes, and the supervisor starts a new
worker, which loads the device's desired models again.

Not for: deciding which model goes where (the model registry) or HTTP.
The parent never imports torch; it exchanges only token ids with workers.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

import actors
from neuron.errors import (
    JobFailed,
    SequenceFailed,
    WorkerDied,
    WorkerStartFailed,
    WorkerUnavailable,
)
from protocol import worker as wire
from protocol.ids import ModelId

log = logging.getLogger(__name__)

_seq_ids = itertools.count(1)
_job_ids = itertools.count(1)


@attrs.frozen
class DeviceSpec:
    """A compute device as configured: `cpu:N` or `cuda:N`."""

    id: str
    threads: int = 1  # torch threads (cpu devices)
    memory_budget_bytes: int | None = None
    max_batch_size: int = 16


@attrs.frozen
class WorkerTimeouts:
    ready: float = 120.0  # spawn → WorkerReady
    heartbeat_interval: float = 0.5  # the worker's heartbeat period
    heartbeat: float = 5.0  # no frame at all for this long → kill
    step: float = 60.0  # sequences in flight, no step for this long → kill
    shutdown: float = 5.0  # Shutdown frame → exit, else SIGTERM
    terminate: float = 3.0  # SIGTERM → exit, else SIGKILL
    load: float = 1800.0  # LoadModel → ModelLoaded


@attrs.frozen
class ModelPlacement:
    """What it takes to (re)load a model on a device."""

    model_id: ModelId
    path: str
    dtype: str = "auto"
    max_sequences: int | None = None
    kv_cache_bytes: int | None = None
    prefix_cache_bytes: int | None = None  # None: the worker sizes it; 0: off
    # A tensor-parallel model: this rank's place (set per formation) and its group.
    tensor_parallel: wire.TensorParallel | None = None
    group: Any = attrs.field(default=None, eq=False, repr=False)  # TensorParallelGroup

    def job(self) -> wire.LoadModel:
        return wire.LoadModel(
            wire.JobId(next(_job_ids)), self.model_id, self.path, self.dtype,
            self.max_sequences, self.kv_cache_bytes, self.tensor_parallel,
            prefix_cache_bytes=self.prefix_cache_bytes,
        )  # fmt: skip


class WorkerExited(Exception):
    """A worker process ended; its actor crashes so the supervisor replaces it."""


# ------------------------------------------------------------------ sequences


class TokenStream:
    """One sequence's tokens, step by step: `async for tokens in stream`.

    Yields `wire.SequenceTokens` (new ids, `finish_reason` on the last) and
    raises `WorkerDied` / `SequenceFailed` if the sequence ends in error.
    `aclose()` cancels a sequence that has not finished. `cached_tokens` is
    how many prompt tokens the worker's prefix cache supplied (set before the
    first tokens arrive; 0 on a miss).
    """

    def __init__(self, worker: WorkerProcess, seq_id: wire.SeqId) -> None:
        self.seq_id = seq_id
        self._worker = worker
        self._send, self._receive = trio.open_memory_channel[Any](math.inf)
        self.finished = False
        # `wire.TokenLogprobs` per token, in order, when the sequence asked for them:
        # each step's arrive before its tokens (take them as the tokens come).
        self.logprobs: collections.deque[wire.TokenLogprobs] = collections.deque()
        self.cached_tokens = 0

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> wire.SequenceTokens:
        if self.finished:
            raise StopAsyncIteration
        item = await self._receive.receive()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finish_reason is not None:
            self.finished = True
        return item

    async def aclose(self) -> None:
        """Cancel the sequence if it is still running (also from a cancelled scope)."""
        if not self.finished:
            self.finished = True
            with trio.CancelScope(shield=True):
                await self._worker.cancel(self.seq_id)

    def _deliver(self, item: wire.SequenceTokens | BaseException) -> None:
        self._send.send_nowait(item)


# ------------------------------------------------------------------ one process


class _PendingJob:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None

    def settle(self, result: Any) -> None:
        self.result = result
        self.done.set()


class WorkerProcess:
    """One worker process: spawn it, route its frames, watch it, stop it."""

    def __init__(self, spec: DeviceSpec, timeouts: WorkerTimeouts) -> None:
        self.spec = spec
        self.timeouts = timeouts
        self.process: trio.Process | None = None
        self.ready: wire.WorkerReady | None = None
        self.statistics: dict[ModelId, wire.EngineStatistics] = {}
        self._stream: trio.SocketStream | None = None
        self._reader: wire.MessageReader | None = None
        self._send_lock = trio.Lock()
        self._jobs: dict[wire.JobId, _PendingJob] = {}
        self._sequences: dict[wire.SeqId, TokenStream] = {}
        self._dead: WorkerDied | None = None
        self.on_heartbeat: Callable[[], None] | None = None  # after `statistics` is updated
        self._last_frame = self._last_progress = trio.current_time()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def in_flight(self) -> int:
        return len(self._sequences)

    async def start(self) -> wire.WorkerReady:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await trio.lowlevel.open_process(
                self._command(child_sock.fileno()),
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self._environment(),
            )
        finally:
            child_sock.close()
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_sock))
        self._reader = wire.MessageReader(self._stream)
        try:
            return await self._handshake()
        except BaseException:  # cancelled (the daemon stopping) before ready: no orphan
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeouts.terminate):
                await self.kill_and_reap()
            raise

    def _command(self, fd: int) -> list[str]:
        return [
            sys.executable, "-m", "neuron.worker", "--fd", str(fd), "--device", self.spec.id,
            "--threads", str(self.spec.threads),
            "--heartbeat-interval", str(self.timeouts.heartbeat_interval),
            "--max-batch-size", str(self.spec.max_batch_size),
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.spec.id.startswith("cpu"):
            # Idle OpenMP threads sleep instead of spinning: a spinning thread takes
            # the core the parent or a busy neighbour needs, and every parallel
            # region then waits for it (bench/threads.py: 8x slower decode on a
            # busy box). An operator's own OMP_WAIT_POLICY wins.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    async def _handshake(self) -> wire.WorkerReady:
        assert self._reader is not None
        with trio.move_on_after(self.timeouts.ready):
            first = await self._reader.receive()
            if isinstance(first, wire.WorkerReady):
                self.ready = first
                self._last_frame = self._last_progress = trio.current_time()
                log.info("worker ready device=%s pid=%s", self.spec.id, first.pid)
                return first
            await self.kill_and_reap()
            raise WorkerStartFailed(f"worker for {self.spec.id} sent {first!r} before ready")
        await self.kill_and_reap()
        raise WorkerStartFailed(f"worker for {self.spec.id} not ready in {self.timeouts.ready}s")

    # -- running ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Route frames and watch the process until it ends; then fail what it held."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog, nursery.cancel_scope)
                await self._read_frames()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.kill_and_reap()
            self._fail_everything()
        raise WorkerExited(f"worker {self.spec.id} exited ({self.exit_description()})")

    async def _read_frames(self) -> None:
        assert self._reader is not None
        while (message := await self._reader.receive()) is not None:
            self._last_frame = trio.current_time()
            self._dispatch(message)

    def _dispatch(self, message: wire.Message) -> None:
        match message:
            case wire.StepTokens(sequences=sequences):
                self._last_progress = self._last_frame
                for tokens in sequences:
                    self._deliver(tokens.seq_id, tokens, final=tokens.finish_reason is not None)
            case wire.PrefixReused(seq_id=seq_id, cached_tokens=cached):
                if (stream := self._sequences.get(seq_id)) is not None:
                    stream.cached_tokens = cached
            case wire.StepLogprobs(entries=entries):
                for entry in entries:
                    if (stream := self._sequences.get(entry.seq_id)) is not None:
                        stream.logprobs.append(entry)
            case wire.SequenceFailed(seq_id=seq_id, kind="peer_lost", message=text):
                # The group is restarted as if this worker died: the same error, whichever
                # the parent notices first (the dead rank's exit or the lead's report).
                died = WorkerDied(f"a tensor-parallel rank failed: {text}")
                self._deliver(seq_id, died, final=True)
            case wire.SequenceFailed(seq_id=seq_id, kind=kind, message=text, retriable=retry):
                self._deliver(seq_id, SequenceFailed(kind, text, retriable=retry), final=True)
            case wire.Heartbeat(models=models):
                self.statistics = {m.model_id: m for m in models}
                if self.on_heartbeat is not None:
                    self.on_heartbeat()
            case _ if pending := self._jobs.pop(getattr(message, "job_id", -1), None):
                pending.settle(message)
            case _:
                log.warning("unexpected frame device=%s message=%r", self.spec.id, message)

    def _deliver(self, seq_id: wire.SeqId, item: Any, *, final: bool) -> None:
        stream = self._sequences.pop(seq_id, None) if final else self._sequences.get(seq_id)
        if stream is not None:
            stream._deliver(item)

    async def _watchdog(self, scope: trio.CancelScope) -> None:
        period = min(self.timeouts.heartbeat, self.timeouts.step) / 4
        while True:
            due = trio.current_time() + period
            await trio.sleep_until(due)
            now = trio.current_time()
            if now - due > period:
                # This process itself did not run for a while (stopped, suspended,
                # starved): the worker's frames of that time are unread, not missing.
                # Judge at the next tick, once the reader has caught up.
                continue
            if now - self._last_frame > self.timeouts.heartbeat:
                reason = f"silent for {now - self._last_frame:.1f}s"
            elif self._sequences and now - self._last_progress > self.timeouts.step:
                reason = f"no engine step for {now - self._last_progress:.1f}s"
            else:
                continue
            log.error("killing worker device=%s pid=%s: %s", self.spec.id, self.pid, reason)
            self._dead = WorkerDied(f"worker for {self.spec.id} was killed: {reason}")
            scope.cancel()
            return

    def _fail_everything(self) -> None:
        died = self._dead or WorkerDied(
            f"worker for {self.spec.id} exited ({self.exit_description()})"
        )
        self._dead = died
        sequences, self._sequences = self._sequences, {}
        for stream in sequences.values():
            stream._deliver(died)
        jobs, self._jobs = self._jobs, {}
        for pending in jobs.values():
            pending.settle(died)

    def exit_description(self) -> str:
        code = self.process.returncode if self.process else None
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    # -- talking ------------------------------------------------------------------------

    async def _send(self, message: wire.Message) -> None:
        """Send one frame whole: a frame cut in half would corrupt the stream, so
        the send is shielded, and one that cannot finish in time kills the worker."""
        if self._dead is not None:
            raise self._dead
        assert self._stream is not None
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                with trio.move_on_after(self.timeouts.heartbeat) as sending:
                    try:
                        await wire.send_message(self._stream, message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise WorkerDied(f"worker for {self.spec.id} is gone") from exc
        if sending.cancelled_caught:
            self._dead = WorkerDied(f"worker for {self.spec.id} stopped reading its socket")
            if self.process is not None and self.process.returncode is None:
                self.process.kill()
            raise self._dead

    async def request(self, job: Any) -> Any:
        """Send a job with a `job_id`; return its reply or raise its failure.

        No timeout of its own: callers bound it (`trio.fail_after`)."""
        pending = self._jobs[job.job_id] = _PendingJob()
        try:
            await self._send(job)
            await pending.done.wait()
        finally:
            self._jobs.pop(job.job_id, None)
        if isinstance(pending.result, BaseException):
            raise pending.result
        if isinstance(pending.result, wire.JobFailed):
            r = pending.result
            raise JobFailed(r.kind, r.message, retriable=r.retriable)
        return pending.result

    async def generate(
        self,
        model_id: ModelId,
        prompt: tuple[int, ...],
        sampling: wire.SamplingParams,
        inputs: Mapping[str, wire.RawTensor] | None = None,
    ) -> TokenStream:
        """Start a sequence; `inputs`: extra CPU tensors (a vision model's images)."""
        seq_id = wire.SeqId(next(_seq_ids))
        stream = TokenStream(self, seq_id)
        if not self._sequences:
            self._last_progress = trio.current_time()
        self._sequences[seq_id] = stream
        try:
            await self._send(wire.Generate(seq_id, model_id, prompt, sampling, inputs or {}))
        except BaseException:
            self._sequences.pop(seq_id, None)
            raise
        return stream

    async def cancel(self, seq_id: wire.SeqId) -> None:
        """Ask the worker to drop a sequence; its slot frees at the next step."""
        if self._sequences.pop(seq_id, None) is None or self._dead is not None:
            return
        with contextlib.suppress(WorkerDied):  # the sequence went with the worker
            await self._send(wire.CancelSequence(seq_id))

    # -- stopping -----------------------------------------------------------------------

    async def stop(self) -> None:
        """The stop ladder: Shutdown → wait → SIGTERM → wait → SIGKILL. Bounded."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            await self.kill_and_reap()
            return
        with trio.move_on_after(self.timeouts.shutdown):
            with trio.move_on_after(1):
                await self._send(wire.Shutdown())
            await proc.wait()
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(self.timeouts.terminate):
                await proc.wait()
        await self.kill_and_reap()

    async def kill_and_reap(self) -> None:
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)


# ------------------------------------------------------------------ the device


class Device:
    """A compute device for the daemon's whole life, across worker restarts.

    Holds what should be resident (`desired`) so that a replacement worker
    loads it again, and the current worker while one is up. Operations on a
    device with no live worker raise `WorkerUnavailable` (retriable).
    """

    def __init__(self, spec: DeviceSpec, timeouts: WorkerTimeouts) -> None:
        self.spec = spec
        self.timeouts = timeouts
        self.worker: WorkerProcess | None = None
        self.desired: dict[ModelId, ModelPlacement] = {}
        self.resident: dict[ModelId, wire.ModelLoaded] = {}
        self.load_errors: dict[ModelId, str] = {}
        # Tensor-parallel groups this device is a rank of (neuron.tensor_parallel).
        self.groups: dict[ModelId, Any] = {}
        self.incarnations = 0
        self._changed = trio.Event()

    @property
    def id(self) -> str:
        return self.spec.id

    def _live_worker(self) -> WorkerProcess:
        if self.worker is None:
            raise WorkerUnavailable(f"device {self.id} has no live worker (restarting)")
        return self.worker

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait for the next change of worker or resident models."""
        await self._changed.wait()

    async def load(self, placement: ModelPlacement) -> wire.ModelLoaded:
        self.desired[placement.model_id] = placement
        return await self._load_on(self._live_worker(), placement)

    async def _load_on(self, worker: WorkerProcess, placement: ModelPlacement):
        try:
            with trio.fail_after(self.timeouts.load):
                loaded = await worker.request(placement.job())
        except JobFailed as exc:
            self.load_errors[placement.model_id] = exc.message
            if exc.kind != "bad_request":
                self.desired.pop(placement.model_id, None)
            raise
        self.load_errors.pop(placement.model_id, None)
        self.resident[placement.model_id] = loaded
        self._notify()
        return loaded

    async def unload(self, model_id: ModelId) -> wire.ModelUnloaded:
        self.desired.pop(model_id, None)
        worker = self._live_worker()
        job = wire.UnloadModel(wire.JobId(next(_job_ids)), model_id)
        try:
            with trio.fail_after(self.timeouts.load):
                return await worker.request(job)
        finally:
            self.resident.pop(model_id, None)
            self._notify()

    async def generate(
        self,
        model_id: ModelId,
        prompt: tuple[int, ...],
        sampling: wire.SamplingParams,
        inputs: Mapping[str, wire.RawTensor] | None = None,
    ) -> TokenStream:
        worker = self._live_worker()
        if model_id not in self.resident:
            raise WorkerUnavailable(f"model {model_id!r} is not resident on {self.id}")
        return await worker.generate(model_id, prompt, sampling, inputs)

    # -- incarnations (called by DeviceActor) --------------------------------------------

    def attach(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.resident = {}
        self.incarnations += 1
        self._notify()

    def detach(self) -> None:
        if self.worker is None:
            return
        self.worker = None
        self.resident = {}
        self._notify()
        for group in list(self.groups.values()):
            group.member_lost(self)  # one rank gone fails the whole group

    async def restore(self, worker: WorkerProcess) -> None:
        """Load the desired models on a new worker, one by one; log what fails. A
        tensor-parallel model is re-formed by its rank 0's device, once every rank
        has a worker again (after the single-device models)."""
        placements = list(self.desired.values())
        for placement in sorted(placements, key=lambda p: p.group is not None):
            try:
                if placement.group is None:
                    await self._load_on(worker, placement)
                elif placement.group.lead is self:
                    await placement.group.restore()
            except (JobFailed, WorkerDied, WorkerUnavailable) as exc:
                log.error("reload failed device=%s model=%s: %s", self.id,
                          placement.model_id, exc)  # fmt: skip


class DeviceActor(actors.Actor):
    """Supervises one incarnation of a device's worker process."""

    kind = "device"

    def __init__(self, device: Device) -> None:
        self.device = device
        self.worker = WorkerProcess(device.spec, device.timeouts)
        timeouts = device.timeouts
        self.stop_timeout = timeouts.shutdown + timeouts.terminate + 2
        self._shown: dict[str, Any] = {}
        self._loading_since: dict[ModelId, float] = {}
        self._generated = (trio.current_time(), 0)  # (when, tokens generated so far)

    async def on_start(self) -> None:
        ready = await self.worker.start()
        self.device.attach(self.worker)
        self.set_status(device=self.device.id, pid=ready.pid, incarnation=self.device.incarnations)
        self.worker.on_heartbeat = self._show_load
        self.start_task(self._serve, name="worker", kind="process")
        self.start_task(self._restore, name="restore", kind="task")

    async def _serve(self, task: Any) -> None:
        try:
            await self.worker.serve()  # raises WorkerExited: this actor crashes, restarts
        finally:
            self.device.detach()  # before anyone can see the dead worker as current

    async def _restore(self, task: Any) -> None:
        await self.device.restore(self.worker)
        self._show_load()

    def _show_load(self) -> None:
        """Status for inspectors, per heartbeat; the registry changes only when it does."""
        device, stats = self.device, self.worker.statistics.values()
        pending = device.desired.keys() - device.resident.keys() - device.load_errors.keys()
        now = time.time()
        self._loading_since = {m: self._loading_since.get(m, now) for m in sorted(pending)}
        running = sum(s.running for s in stats)
        rate = self._rate(sum(s.generated_tokens_total for s in stats))
        shown = {
            "models": {m: r.memory_bytes for m, r in sorted(device.resident.items())} or None,
            "memory_bytes": sum(r.memory_bytes for r in device.resident.values()) or None,
            "loading": dict(self._loading_since) or None,  # model -> since (wall clock)
            "running": running,
            "waiting": sum(s.waiting for s in stats),
            "tok_s": rate if running else None,
        }
        if shown != self._shown:
            self._shown = shown
            self.set_status(**shown)

    def _rate(self, generated: int) -> float | None:
        """Tokens per second generated on this device, over windows of a second or more
        (heartbeats come in bunches; a shorter window would jitter)."""
        (then, before), now = self._generated, trio.current_time()
        if now - then < 1.0:
            return self._shown.get("tok_s")
        self._generated = (now, generated)
        return round(max(0, generated - before) / (now - then), 1) or None

    async def on_stop(self) -> None:
        self.device.detach()
        await self.worker.stop()


async def start_devices(
    parent: actors.SupervisorRef,
    devices: list[Device],
    *,
    intensity: actors.RestartIntensity | None = None,
    backoff: actors.Backoff | None = None,
) -> actors.SupervisorRef:
    """Start the `devices` supervisor and one worker per device; all ready on return."""
    supervisor = await parent.start_supervisor(
        "devices",
        intensity=intensity or actors.RestartIntensity(max_restarts=10, window=60),
        backoff=backoff or actors.Backoff(initial=0.2, maximum=10.0),
    )
    async with trio.open_nursery() as nursery:
        for device in devices:
            nursery.start_soon(_start_one, supervisor, device)
    return supervisor


async def _start_one(supervisor: actors.SupervisorRef, device: Device) -> None:
    await supervisor.start(DeviceActor, device, name=device.id, kind="device")
