"""A tensor-parallel model from the parent's side: the devices of its ranks as one group.

A model loaded with `tensor_parallel = N` spans N `Device`s of this host. The
`TensorParallelGroup` picks a free loopback port for each formation (the
rendezvous of `torch.distributed`, hosted by rank 0's worker), sends every rank
its `LoadModel` at once, and records the placement as desired on each device.
Sequences go to rank 0's worker only; the other ranks follow it in lock step
(`neuron.worker.tensor_parallel`).

A group fails as a whole: when any rank's worker ends (killed, crashed, or
killed by its watchdog for silence or a stalled step — a wedged collective),
`member_lost` kills the other ranks' workers at once. Rank 0's death fails every
sequence of the model in-band with the retriable `WorkerDied`; the supervisor
replaces every worker, and rank 0's device, restoring its desired models,
re-forms the group (`restore`) once every rank has a live worker again.

Not for: choosing the devices (the registry) or talking to a worker (devices).
"""

from __future__ import annotations

import logging
import socket

import attrs
import trio

from neuron.devices import Device, ModelPlacement
from neuron.errors import JobFailed, WorkerDied, WorkerUnavailable
from protocol import worker as wire
from protocol.ids import ModelId

log = logging.getLogger(__name__)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TensorParallelGroup:
    """The devices one tensor-parallel model spans, in rank order (rank 0 leads)."""

    def __init__(self, placement: ModelPlacement, devices: list[Device]) -> None:
        self.placement = attrs.evolve(placement, group=self)
        self.devices = devices
        self._forming = trio.Lock()

    @property
    def model_id(self) -> ModelId:
        return self.placement.model_id

    @property
    def lead(self) -> Device:
        return self.devices[0]

    @property
    def resident(self) -> bool:
        return all(self.model_id in d.resident for d in self.devices)

    def member_loaded(self) -> dict[str, wire.ModelLoaded]:
        """Each rank's `ModelLoaded` (its measured bytes), by device id."""
        model_id = self.model_id
        return {d.id: d.resident[model_id] for d in self.devices if model_id in d.resident}

    async def load(self) -> wire.ModelLoaded:
        """Form the group on the devices' current workers and load every rank."""
        for device in self.devices:
            device.desired[self.model_id] = self.placement
            device.groups[self.model_id] = self
        try:
            return await self._form()
        except BaseException:
            self._forget()
            raise

    async def restore(self) -> None:
        """Re-form the group after its ranks were replaced (rank 0's device calls it)."""
        while not all(d.worker is not None for d in self.devices):
            await _any_changed(self.devices)
        if self.model_id not in self.lead.desired or self.resident:
            return
        await self._form()

    async def _form(self) -> wire.ModelLoaded:
        async with self._forming:
            workers = [d._live_worker() for d in self.devices]
            url = f"tcp://127.0.0.1:{free_loopback_port()}"
            size = len(self.devices)
            results: list[object] = [None] * size

            async def load_rank(rank: int) -> None:
                place = wire.TensorParallel(rank, size, url)
                job = attrs.evolve(self.placement, tensor_parallel=place)
                try:
                    results[rank] = await self.devices[rank]._load_on(workers[rank], job)
                except (JobFailed, WorkerDied, trio.TooSlowError) as exc:
                    results[rank] = exc

            async with trio.open_nursery() as nursery:
                for rank in range(size):
                    nursery.start_soon(load_rank, rank)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                if len(failures) < size:  # a half-formed group: start every rank afresh
                    self.kill_members(reason="a rank failed to load")
                raise failures[0]
            log.info("tensor-parallel model loaded model=%s devices=%s rendezvous=%s",
                     self.model_id, ",".join(d.id for d in self.devices), url)  # fmt: skip
            loaded = results[0]
            assert isinstance(loaded, wire.ModelLoaded)
            return loaded

    async def unload(self) -> None:
        """Unload every rank (rank 0 stops the followers; each leaves the group)."""
        self._forget()
        failures: list[BaseException] = []

        async def unload_rank(device: Device) -> None:
            try:
                await device.unload(self.model_id)
            except (JobFailed, WorkerDied, WorkerUnavailable, trio.TooSlowError) as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for device in self.devices:
                nursery.start_soon(unload_rank, device)
        if failures:
            self.kill_members(reason="a rank failed to unload")
            raise failures[0]

    def _forget(self) -> None:
        for device in self.devices:
            device.desired.pop(self.model_id, None)
            device.groups.pop(self.model_id, None)

    def member_lost(self, device: Device) -> None:
        """`device`'s worker ended: the group is broken, end every other rank's too."""
        self.kill_members(reason=f"rank {self.devices.index(device)} ({device.id}) ended")

    def kill_members(self, *, reason: str) -> None:
        for device in self.devices:
            process = device.worker.process if device.worker is not None else None
            if process is not None and process.returncode is None:
                log.error("restarting tensor-parallel rank model=%s device=%s: %s",
                          self.model_id, device.id, reason)  # fmt: skip
                process.kill()


async def _any_changed(devices: list[Device]) -> None:
    async with trio.open_nursery() as nursery:
        for device in devices:

            async def wait(d: Device = device) -> None:
                await d.wait_changed()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
