"""Per-model admission: a cap on requests in flight and a bounded wait queue.

A request takes a slot before it reaches a worker. When every slot is busy it
waits in a FIFO queue, at most `max_queue_depth` deep and at most
`queue_timeout` seconds long; past either bound it is refused at once with a
503 and `Retry-After` (honest backpressure, never a silent stall). Closing
the admission (unload, shutdown) fails every waiter immediately.

Not for: KV-cache accounting (the worker's engine admits by its own budget)
or choosing a model or device.
"""

from __future__ import annotations

import attrs
import trio

from protocol.errors import ServiceUnavailable


class ModelBusy(ServiceUnavailable):
    """Every slot busy and the queue full, or the wait ran out."""

    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(ModelBusy):
    """Every slot busy and `max_queue_depth` requests already waiting."""


class QueueTimeout(ModelBusy):
    """No slot came free within `queue_timeout`."""


class AdmissionClosed(ServiceUnavailable):
    code = "model_unavailable"


@attrs.frozen
class AdmissionStatistics:
    in_flight: int
    queued: int
    max_in_flight: int
    max_queue_depth: int
    rejected_queue_full: int
    rejected_timeout: int
    admitted_total: int


class Admission:
    def __init__(self, model_id: str, max_in_flight: int, max_queue_depth: int,
                 queue_timeout: float) -> None:  # fmt: skip
        self.model_id = model_id
        self.max_in_flight = max_in_flight
        self.max_queue_depth = max_queue_depth
        self.queue_timeout = queue_timeout
        self._slots = trio.Semaphore(max_in_flight)
        self._queued = 0
        self._closed: str | None = None
        self._closed_code = AdmissionClosed.code
        self._closed_retry_after = 2.0
        self._closed_event = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.rejected_queue_full = self.rejected_timeout = self.admitted_total = 0

    @property
    def in_flight(self) -> int:
        return self.max_in_flight - self._slots.value

    def slot(self) -> _Slot:
        """`async with admission.slot():` holds one in-flight slot."""
        return _Slot(self)

    async def acquire(self) -> None:
        self._check_open()
        if self._slots.value == 0 and self._queued >= self.max_queue_depth:
            self.rejected_queue_full += 1
            raise QueueFull(
                f"model {self.model_id!r} is busy: {self.in_flight} in flight and "
                f"{self._queued} queued", retry_after=2,
            )  # fmt: skip
        self._queued += 1
        try:
            acquired = await self._wait_for_slot()
        finally:
            self._queued -= 1
        if acquired and self._closed is not None:
            self.release()
        self._check_open()
        if not acquired:
            self.rejected_timeout += 1
            raise QueueTimeout(
                f"model {self.model_id!r} is busy: no slot within {self.queue_timeout:g}s",
                retry_after=max(1.0, self.queue_timeout / 2),
            )
        if self._idle.is_set():
            self._idle = trio.Event()
        self.admitted_total += 1

    async def _wait_for_slot(self) -> bool:
        """True once a slot is ours; False on timeout or when closed first. A slot
        handed over just as the caller is cancelled is given back: the wait's nursery
        still has to collect `_cancel_on_close`, and that is where the caller's
        cancellation lands, after the slot became ours."""
        acquired = False
        try:
            with trio.move_on_after(self.queue_timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._cancel_on_close, nursery.cancel_scope)
                    await self._slots.acquire()
                    acquired = True
                    nursery.cancel_scope.cancel()
        except BaseException:
            if acquired:
                self.release()
            raise
        return acquired

    async def _cancel_on_close(self, scope: trio.CancelScope) -> None:
        await self._closed_event.wait()
        scope.cancel()

    def release(self) -> None:
        self._slots.release()
        if self.in_flight == 0:
            self._idle.set()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise AdmissionClosed(f"model {self.model_id!r} is {self._closed}",
                                  retry_after=self._closed_retry_after,
                                  code=self._closed_code)  # fmt: skip

    def close(self, reason: str, *, code: str | None = None, retry_after: float = 2.0) -> None:
        """Refuse new requests and fail the queued ones (503 `code`, by default
        `model_unavailable`); in-flight ones go on."""
        self._closed = reason
        self._closed_code = code or AdmissionClosed.code
        self._closed_retry_after = retry_after
        self._closed_event.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        while self.in_flight:
            await self._idle.wait()

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            self.in_flight, self._queued, self.max_in_flight, self.max_queue_depth,
            self.rejected_queue_full, self.rejected_timeout, self.admitted_total,
        )  # fmt: skip


class _Slot:
    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def __aenter__(self) -> None:
        await self._admission.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._admission.release()
