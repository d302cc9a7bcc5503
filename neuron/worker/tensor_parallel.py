"""Tensor parallelism: one model over several device workers, on torch.distributed.

The ranks of a model are device workers of one host. The parent sends each a
`LoadModel` with its `wire.TensorParallel` place (rank, world size, a loopback
`tcp://` rendezvous); `Group.join` forms the process group (gloo on CPU, NCCL on
CUDA, with a gloo side group for the small control messages) and `shard` applies
the architecture's own `base_model_tp_plan` with torch's DTensor styles
(`ColwiseParallel` / `RowwiseParallel` from `torch.distributed.tensor.parallel`):
q/k/v and gate/up split by output features, o/down by input features and summed
by an all-reduce. Embeddings, norms and the LM head stay replicated, so every
rank computes the same logits. A model without a plan, with a style we do not
apply (MoE expert parallelism, packed projections) or with heads that do not
divide by the world size is refused with `UnsupportedModel`.

Every rank runs a full `Engine` over its shard, in lock step. Rank 0 (the lead)
is the only one the parent sends sequences to; before each engine step it
broadcasts the step's plan — the sequences admitted and cancelled since the last
step, then "step" (or "stop" on unload) — and after sampling it broadcasts the
sampled tokens, which the other ranks (followers) take instead of sampling
themselves. So every rank's engine admits, batches, prefills and retires the same
sequences in the same order and runs the same forwards. A follower runs that loop
on a thread (`Follower`), leaving its worker's main loop free for the parent's
jobs. Any failure of the collective ends the worker process: the parent replaces
every rank of the group and loads the model on it again.

Not for: choosing devices or the rendezvous port (the parent), restarting ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from neuron.worker.errors import InvalidRequest, UnsupportedModel
from neuron.worker.sampler import SamplingParams, SequenceSampler, sample_batch
from protocol import worker as wire

log = logging.getLogger(__name__)

# Group formation: every rank must reach the rendezvous within this many seconds.
FORMATION_TIMEOUT = float(os.environ.get("NEURON_TP_FORMATION_TIMEOUT", "60"))
# A collective waits this long for its peers. A follower idles in one between steps,
# so it is long; a dead or wedged peer is the parent's to detect (it restarts the group).
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)

_STYLES = ("colwise", "rowwise")
_IGNORED_STYLES = ("replicated_with_grad_allreduce",)  # training-only: replicated here


def _torch_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class Group:
    """This process's membership in a tensor-parallel group (one per process)."""

    def __init__(self, place: wire.TensorParallel, device: torch.device) -> None:
        self.rank = place.rank
        self.world_size = place.world_size
        self.device = device
        self._control: Any = None
        self._mesh: Any = None
        self._place = place

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def join(self) -> None:
        """Form the group; raises `InvalidRequest` when this process is in one already."""
        if dist.is_initialized():
            raise InvalidRequest("this worker is already a rank of a tensor-parallel group")
        place = self._place
        if not 0 <= place.rank < place.world_size or place.world_size < 2:
            raise InvalidRequest(f"bad tensor-parallel place {place!r}")
        host, _, port = place.init_method.removeprefix("tcp://").rpartition(":")
        store = dist.TCPStore(
            host, int(port), place.world_size, is_master=place.rank == 0,
            timeout=datetime.timedelta(seconds=FORMATION_TIMEOUT), wait_for_workers=True,
        )  # fmt: skip
        backend = _torch_backend(self.device)
        dist.init_process_group(
            backend, store=store, rank=place.rank, world_size=place.world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )  # fmt: skip
        # Control messages (plans, tokens) are small host objects: gloo, even beside NCCL.
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        from torch.distributed.device_mesh import DeviceMesh

        self._mesh = DeviceMesh(self.device.type, list(range(place.world_size)))
        log.info("tensor-parallel group formed rank=%d world=%d backend=%s",
                 place.rank, place.world_size, backend)  # fmt: skip

    def leave(self) -> None:
        """Destroy the process group (idempotent)."""
        self._control = self._mesh = None
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- sharding -----------------------------------------------------------------------

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply the architecture's `base_model_tp_plan` to `model` (in place)."""
        plan = tensor_parallel_plan(model, self.world_size)
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        parallelize_module(
            language_model(model), self._mesh,
            {name: styles[style]() for name, style in plan.items()},
        )  # fmt: skip
        return model

    # -- lock step ----------------------------------------------------------------------

    def send_plan(self, plan: list[tuple]) -> None:
        dist.broadcast_object_list([plan], src=0, group=self._control)

    def receive_plan(self) -> list[tuple]:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def sample(self) -> Callable[[torch.Tensor, Sequence[SequenceSampler]], list[int]]:
        """The engine's sampling function for this rank: the lead samples and
        broadcasts; a follower takes the lead's tokens."""

        def lead(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> list[int]:
            tokens = sample_batch(logits, samplers)
            dist.broadcast(torch.tensor(tokens, dtype=torch.long), src=0, group=self._control)
            return tokens

        def follow(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> list[int]:
            box = torch.empty(len(samplers), dtype=torch.long)
            dist.broadcast(box, src=0, group=self._control)
            tokens = box.tolist()
            for sampler, token in zip(samplers, tokens, strict=True):
                sampler.record(token)
            return tokens

        return lead if self.lead else follow


# Text models transformers ships no plan for, whose layers are module for module those
# of a family it has one for: that family's plan (a vision-language model's language
# model: Qwen3-VL's is Qwen3's, with multimodal rope, which heads do not change).
_PLAN_OF = {"qwen3_vl_text": "qwen3"}


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module the plan's names are relative to: the base model, or a vision-language
    base model's language model (its vision tower stays whole on every rank)."""
    return getattr(model.base_model, "language_model", None) or model.base_model


def _declared_plan(config) -> dict[str, str]:
    declared = getattr(config, "base_model_tp_plan", None)
    twin = _PLAN_OF.get(getattr(config, "model_type", ""))
    if not declared and twin is not None:
        from transformers import AutoConfig

        declared = AutoConfig.for_model(twin).base_model_tp_plan
    return dict(declared or {})


def tensor_parallel_plan(model: torch.nn.Module, world_size: int) -> dict[str, str]:
    """The language model's submodule names → "colwise" / "rowwise", or UnsupportedModel."""
    config = model.config.get_text_config(decoder=True)
    declared = _declared_plan(config)
    name = getattr(config, "model_type", type(model).__name__)
    if not declared:
        raise UnsupportedModel(f"architecture {name!r} has no tensor-parallel plan")
    unknown = {s for s in declared.values() if s not in _STYLES + _IGNORED_STYLES}
    if unknown:
        raise UnsupportedModel(
            f"architecture {name!r}: tensor-parallel styles {sorted(unknown)} are not supported"
        )
    for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, field, None)
        if value is not None and value % world_size:
            raise UnsupportedModel(
                f"{name!r}: {field} = {value} does not divide by tensor_parallel = {world_size}"
            )
    patterns = [
        (re.compile(pattern.replace(".", r"\.").replace("*", r"\d+")), style)
        for pattern, style in declared.items()
        if style in _STYLES
    ]
    plan = {}
    for module_name, _ in language_model(model).named_modules():
        for pattern, style in patterns:
            if pattern.fullmatch(module_name):
                plan[module_name] = style
    if not plan:
        raise UnsupportedModel(f"{name!r}: its tensor-parallel plan matches no module")
    return plan


def follower_params(sampling: wire.SamplingParams) -> SamplingParams:
    """A follower's view of a sequence's sampling: it never samples, so no grammar."""
    return SamplingParams.from_wire(sampling, None)


class Follower:
    """A follower rank's lock-step loop over one engine, on its own thread."""

    def __init__(
        self,
        group: Group,
        engine: Any,
        on_failure: Callable[[BaseException], None],
        vision: Callable[[list[int], dict], Any] | None = None,
    ) -> None:
        self.group = group
        self.engine = engine
        self._vision = vision  # a sequence's image inputs → its VisionPrompt
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name="tp-follower", daemon=True)
        self._stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the lead's "stop"; False if it did not come in time."""
        return self._stopped.wait(timeout)

    def _run(self) -> None:
        try:
            while self._apply(self.group.receive_plan()):
                pass
        except BaseException as exc:  # the group is broken: the parent restarts it
            self._on_failure(exc)
        finally:
            self._stopped.set()

    def _apply(self, plan: list[tuple]) -> bool:
        engine = self.engine
        for op in plan:
            match op:
                case ("add", seq_id, prompt, sampling, inputs):
                    vision = None
                    if inputs:  # the lead checked them: prepared alike here
                        assert self._vision is not None, "image inputs for a text-only model"
                        vision = self._vision(list(prompt), inputs)
                    engine.add(seq_id, prompt, follower_params(sampling), vision)
                case ("cancel", seq_id):
                    engine.cancel(seq_id)
                case ("step",):
                    engine.step()
                case ("stop",):
                    return False
                case _:
                    raise ValueError(f"unknown tensor-parallel plan entry {op!r}")
        return True
