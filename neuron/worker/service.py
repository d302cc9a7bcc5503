"""The job loop of a device worker: models, engines, and the frames between.

`WorkerService.run` is the whole life of a worker after its device is
pinned (see `neuron.worker.main`): say `WorkerReady`, then alternate between
draining jobs and stepping busy engines until `Shutdown` or EOF. Every job
with a `job_id` gets exactly one answer; every admitted sequence ends
exactly once, in a `StepTokens` finish or a `SequenceFailed`.

Not for: anything the parent decides (placement, queueing, retries). Errors
raised by the compute core are boxed here into `JobFailed` /
`SequenceFailed` with a `FailureKind`; only a device fault ends the process.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from neuron.worker import errors, tensor_parallel
from neuron.worker.channel import EXIT_DEVICE_FAULT, FrameChannel, run_heartbeats, versions
from neuron.worker.engine import Engine, EngineConfig, kv_bytes_per_token
from neuron.worker.grammar import Grammars
from neuron.worker.loader import LoadedModel, load_model, quiet_transformers
from neuron.worker.sampler import SamplingParams, sample_batch
from neuron.worker.snapshot import snapshot_at
from neuron.worker.vision import VisionModel
from protocol import worker as wire
from protocol.ids import ModelId

log = logging.getLogger(__name__)

GIB = 1 << 30
PREFIX_CACHE_SHARE = 4  # default prefix cache: a quarter of the model's KV budget...
PREFIX_CACHE_CPU_CAP = GIB  # ...and at most 1 GiB on a CPU device
FOLLOWER_STOP_TIMEOUT = 30.0  # a follower's unload waits this long for the lead's "stop"


class _DeviceFaulted(Exception):
    """Leave the loop: the device is unusable, the parent must replace us."""


def failure_kind(exc: BaseException) -> wire.FailureKind:
    """Box a compute-core error for the wire."""
    match exc:
        case errors.DeviceOutOfMemory():
            return "out_of_memory"
        case errors.DeviceFault():
            return "device_fault"
        case errors.ModelNotFound() | errors.ModelNotLoaded():
            return "not_found"
        case errors.CapacityExceeded():
            return "capacity"
        case errors.UnsafeModelId() | errors.InvalidRequest():
            return "bad_request"
        case errors.UnsupportedModel():
            return "unsupported_model"
        case errors.ModelError():
            return "load_failed"
    return "internal"


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, errors.WorkerError) and exc.retriable


class _Resident:
    """One loaded model and its engine; `group` when it is one rank of a
    tensor-parallel group (then `plan` collects the lead's admissions and
    cancellations for the next step's broadcast, and a follower runs `follower`)."""

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig, group: tensor_parallel.Group | None
    ) -> None:
        self.loaded = loaded
        self.config = config
        self.group = group
        sample = sample_batch if group is None else group.sample()
        self.engine = Engine(loaded, config, sample=sample)
        self.vision = VisionModel.of(loaded.model)  # None: served as text only
        self.sequences: set[wire.SeqId] = set()
        self._grammars: Grammars | None = None
        self.plan: list[tuple] = []
        self.follower: tensor_parallel.Follower | None = None

    @property
    def lead(self) -> bool:
        return self.group is not None and self.group.lead

    def grammars(self) -> Grammars:
        """Constrained decoding's compiled grammars for this model (built on first use)."""
        if self._grammars is None:
            info, model = self.loaded.info, self.loaded.model
            vocab = model.get_output_embeddings().out_features
            self._grammars = Grammars.from_snapshot(info.snapshot.path, vocab, info.eos_token_ids)
        return self._grammars


class WorkerService:
    def __init__(
        self,
        sock,
        device: str,
        torch_device: str,
        threads: int,
        max_batch_size: int,
    ) -> None:
        if torch_device == "cpu":
            torch.set_num_threads(threads)
        self.channel = FrameChannel(sock)
        self.device = device
        self.torch_device = torch_device
        self.max_batch_size = max_batch_size
        self.models: dict[ModelId, _Resident] = {}
        self.owner: dict[wire.SeqId, ModelId] = {}
        self.steps = 0
        self._stats: tuple[wire.EngineStatistics, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, heartbeat_interval: float) -> int:
        self.channel.send(wire.WorkerReady(os.getpid(), self.device, wire.PROTOCOL_VERSION,
                                           **versions()))  # fmt: skip
        stop = threading.Event()
        beat = threading.Thread(
            target=run_heartbeats,
            args=(self.channel, self._heartbeat, heartbeat_interval, stop),
            name="heartbeat",
            daemon=True,
        )
        beat.start()
        try:
            return self._loop()
        except _DeviceFaulted:
            return EXIT_DEVICE_FAULT
        finally:
            stop.set()
            self._unload_all()

    def _loop(self) -> int:
        while True:
            busy = any(self._steps_here(r) for r in self.models.values())
            while self.channel.readable(0 if busy else None):
                job = self.channel.receive()
                if job is None or isinstance(job, wire.Shutdown):
                    return 0
                self._handle(job)
                busy = any(self._steps_here(r) for r in self.models.values())
                if busy and not self.channel.readable(0):
                    break
            for model_id, resident in list(self.models.items()):
                if self._steps_here(resident):
                    self._step(model_id, resident)
            self._publish_statistics()

    @staticmethod
    def _steps_here(resident: _Resident) -> bool:
        """The loop steps this engine now (a follower's runs on its own thread)."""
        return resident.follower is None and resident.engine.has_work

    # -- jobs --------------------------------------------------------------------------

    def _handle(self, job: object) -> None:
        match job:
            case wire.Generate():
                self._generate(job)
            case wire.CancelSequence(seq_id=seq_id):
                model_id = self.owner.get(seq_id)
                if model_id is not None:
                    resident = self.models[model_id]
                    if resident.engine.cancel(seq_id) and resident.lead:
                        resident.plan.append(("cancel", seq_id))
            case wire.LoadModel():
                self._answer(job.job_id, lambda: self._load(job))
            case wire.UnloadModel():
                self._answer(job.job_id, lambda: self._unload(job))

    def _answer(self, job_id: wire.JobId, work) -> None:
        try:
            reply = work()
        except errors.DeviceFault as exc:
            self.channel.send(wire.JobFailed(job_id, failure_kind(exc), str(exc), True))
            raise _DeviceFaulted from exc
        except Exception as exc:  # boxed for the parent; the worker keeps serving
            log.warning("job failed job=%s error=%r", job_id, exc)
            kind = failure_kind(exc)
            self.channel.send(wire.JobFailed(job_id, kind, str(exc), _retriable(exc)))
            return
        self.channel.send(reply)

    def _load(self, job: wire.LoadModel) -> wire.ModelLoaded:
        if job.model_id in self.models:
            raise errors.InvalidRequest(f"model {job.model_id!r} is already loaded")
        group = None
        if job.tensor_parallel is not None:
            group = tensor_parallel.Group(job.tensor_parallel, torch.device(self.torch_device))
            group.join()
        try:
            with quiet_transformers():
                loaded = load_model(
                    snapshot_at(job.model_id, Path(job.path)),
                    device=self.torch_device,
                    dtype=job.dtype,
                    shard=None if group is None else group.shard,
                )
            resident = _Resident(loaded, self._engine_config(loaded, job), group)
        except BaseException:
            if group is not None:
                group.leave()
            raise
        self.models[job.model_id] = resident
        if group is not None and not group.lead:
            vision = resident.vision
            resident.follower = tensor_parallel.Follower(
                group, resident.engine, self._group_failed, vision and vision.prepare
            )
            resident.follower.start()
        engine = resident.engine
        report = loaded.report
        memory = report.cuda_allocated_delta_bytes or report.tensor_bytes
        return wire.ModelLoaded(
            job.job_id, job.model_id, memory, report.load_seconds,
            max_sequences=engine.max_batch_size, kv_cache_tokens=engine.kv_token_budget,
            prefix_cache_bytes=resident.config.prefix_cache_bytes or 0,
        )  # fmt: skip

    def _engine_config(self, loaded: LoadedModel, job: wire.LoadModel) -> EngineConfig:
        budget = None
        if job.kv_cache_bytes is not None:
            budget = max(1, job.kv_cache_bytes // kv_bytes_per_token(loaded))
        batch = job.max_sequences or self.max_batch_size
        prefix = job.prefix_cache_bytes  # None: ours to size; 0: off
        if prefix is None:
            tokens = budget or batch * (loaded.info.max_position_embeddings or 0)
            prefix = default_prefix_cache_bytes(loaded, tokens, cpu=self.torch_device == "cpu")
        return EngineConfig(
            max_batch_size=batch, kv_token_budget=budget, prefix_cache_bytes=prefix or None
        )

    def _unload(self, job: wire.UnloadModel) -> wire.ModelUnloaded:
        resident = self.models.pop(job.model_id, None)
        if resident is None:
            raise errors.ModelNotLoaded(f"model {job.model_id!r} is not loaded on {self.device}")
        self._fail_sequences(resident, "not_found", "model was unloaded", retriable=True)
        self._leave_group(resident)
        resident.engine.close()
        report = resident.loaded.unload()
        return wire.ModelUnloaded(job.job_id, job.model_id, report.tensor_bytes_released)

    def _leave_group(self, resident: _Resident) -> None:
        """A rank's part of unloading: the lead tells the followers to stop; a follower
        waits for that; then each destroys the process group."""
        group = resident.group
        if group is None:
            return
        if resident.follower is not None:
            if not resident.follower.join(FOLLOWER_STOP_TIMEOUT):
                # out of step for good: the parent replaces this worker
                raise errors.DeviceFault("the tensor-parallel lead did not stop this rank")
        else:
            group.send_plan([("stop",)])
        group.leave()

    def _group_failed(self, exc: BaseException) -> None:
        """A follower's collective failed: this rank is out of step for good. Exit, so
        that the parent restarts the whole group (called on the follower's thread)."""
        log.error("tensor-parallel rank failed device=%s: %r", self.device, exc)
        os._exit(EXIT_DEVICE_FAULT)

    def _generate(self, job: wire.Generate) -> None:
        resident = self.models.get(job.model_id)
        try:
            if resident is None:
                raise errors.ModelNotLoaded(f"model {job.model_id!r} is not loaded")
            if resident.follower is not None:
                raise errors.InvalidRequest("sequences go to a tensor-parallel group's rank 0")
            grammar = job.sampling.grammar
            matcher = None if grammar is None else resident.grammars().matcher(grammar)
            params = SamplingParams.from_wire(job.sampling, matcher)
            tensors = _image_tensors(resident, job)
            vision = None
            if tensors is not None:
                vision = resident.vision.prepare(list(job.prompt_token_ids), tensors)
            resident.engine.add(job.seq_id, job.prompt_token_ids, params, vision)
            if resident.lead:  # the followers prepare the same images and add alike
                add = ("add", job.seq_id, job.prompt_token_ids, job.sampling, tensors)
                resident.plan.append(add)
        except (errors.WorkerError, ValueError) as exc:
            kind = failure_kind(exc)
            self.channel.send(wire.SequenceFailed(job.seq_id, kind, str(exc), _retriable(exc)))
            return
        resident.sequences.add(job.seq_id)
        self.owner[job.seq_id] = job.model_id

    # -- stepping ----------------------------------------------------------------------

    def _step(self, model_id: ModelId, resident: _Resident) -> None:
        try:
            if resident.lead:
                plan, resident.plan = resident.plan, []
                resident.group.send_plan([*plan, ("step",)])
            result = resident.engine.step()
        except errors.DeviceFault as exc:
            self._fail_sequences(resident, failure_kind(exc), str(exc), retriable=True)
            raise _DeviceFaulted from exc
        except Exception as exc:
            log.exception("engine step failed model=%s", model_id)
            if resident.group is not None:
                # Out of step with the other ranks for good: the parent restarts the group.
                # A rank's death reaches the lead first as this collective's failure.
                self._fail_sequences(resident, "peer_lost", f"tensor-parallel step: {exc}", True)
                raise _DeviceFaulted from exc
            self._fail_sequences(resident, "internal", f"engine step failed: {exc}", True)
            resident.engine = Engine(resident.loaded, resident.config)
            return
        self.steps += 1
        for output in result.finished:
            resident.sequences.discard(output.seq_id)
            self.owner.pop(output.seq_id, None)
        for o in result.outputs:
            if o.cached_tokens:
                self.channel.send(wire.PrefixReused(o.seq_id, o.cached_tokens))
        logprobs = tuple(
            wire.TokenLogprobs(o.seq_id, o.token_ids[0], o.logprobs[0], o.logprobs[1])
            for o in result.outputs
            if o.logprobs is not None and o.token_ids
        )
        if logprobs:
            self.channel.send(wire.StepLogprobs(logprobs))
        if result.outputs:
            sequences = tuple(
                wire.SequenceTokens(o.seq_id, o.token_ids, o.finish_reason) for o in result.outputs
            )
            self.channel.send(wire.StepTokens(self.steps, sequences))

    def _fail_sequences(
        self, resident: _Resident, kind: wire.FailureKind, message: str, retriable: bool
    ) -> None:
        for seq_id in sorted(resident.sequences):
            self.owner.pop(seq_id, None)
            self.channel.send(wire.SequenceFailed(seq_id, kind, message, retriable))
        resident.sequences.clear()

    # -- statistics --------------------------------------------------------------------

    def _publish_statistics(self) -> None:
        self._stats = tuple(
            _wire_statistics(m, r.engine) for m, r in self.models.items() if r.follower is None
        )

    def _heartbeat(self) -> wire.Heartbeat:
        return wire.Heartbeat(models=self._stats)

    def _unload_all(self) -> None:
        for resident in self.models.values():
            resident.engine.close()
            resident.loaded.unload()
        self.models.clear()


def _image_tensors(resident: _Resident, job: wire.Generate) -> dict[str, torch.Tensor] | None:
    """The job's image tensors (CPU); None for a text job."""
    if not job.inputs:
        return None
    if resident.vision is None:
        raise errors.InvalidRequest(f"model {job.model_id!r} takes no image inputs")
    return {name: raw.to_torch() for name, raw in job.inputs.items()}


def default_prefix_cache_bytes(loaded: LoadedModel, kv_tokens: int, *, cpu: bool) -> int:
    """The prefix cache's budget when the load names none: a quarter of the model's
    KV budget in bytes, at most 1 GiB on a CPU device (1 GiB when the model's KV
    size per token is unknown)."""
    try:
        kv_bytes = kv_tokens * kv_bytes_per_token(loaded)
    except errors.UnsupportedModel:
        return PREFIX_CACHE_CPU_CAP
    share = kv_bytes // PREFIX_CACHE_SHARE
    return min(share, PREFIX_CACHE_CPU_CAP) if cpu else share


def _wire_statistics(model_id: ModelId, engine: Engine) -> wire.EngineStatistics:
    s = engine.statistics()
    return wire.EngineStatistics(
        model_id=model_id,
        running=s.active,
        waiting=s.prefilling + s.waiting,
        steps_total=s.steps,
        prompt_tokens_total=s.prompt_tokens,
        generated_tokens_total=s.tokens_generated,
        tok_s_prefill=s.prefill_tokens_per_second,
        tok_s_decode=s.decode_tokens_per_second,
        kv_cache_used_tokens=s.kv_tokens_used,
        kv_cache_tokens=s.kv_token_budget,
        prefix_cache_bytes=s.prefix_cache_bytes,
        prefix_cache_entries=s.prefix_cache_entries,
        prefix_cache_lookups=s.prefix_cache_lookups,
        prefix_cache_hit_lookups=s.prefix_cache_hit_lookups,
        prefix_cache_hit_tokens=s.prefix_cache_hit_tokens,
    )
