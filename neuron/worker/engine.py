"""The continuous-batching engine a device worker drives: admit, step, cancel.

Synchronous and single-threaded: the worker's loop calls `add` and `cancel` between
steps and `step()` whenever `has_work`. Each step does, in order:

1. cancellations requested since the last step take effect (their KV is freed and
   they are reported with finish reason `cancelled`);
2. one batched decode forward over every sequence already in the decode batch
   (`[rows, 1]` tokens, per-row position ids, an additive mask over the shared
   left-padded `KvArena` window);
3. prefill, FIFO, in chunks of `prefill_chunk_tokens`, up to
   `prefill_tokens_per_step` prompt tokens per step. Whole prompts waiting at the
   head of the queue are packed into one forward (concatenated, no padding, a
   block-diagonal causal mask, bounded by the window in windowed layers, positions
   restarting per prompt; not for models with recurrent layers) as long as their
   total fits both the chunk and what is left of the step's budget (on CPU, 16
   prompts of 17-32 tokens on the 0.5b model took half the CPU time of 16 forwards
   of one, and a quarter less than a left-padded batch). Any other prompt is
   prefilled on its own (its own `DynamicCache`), so a long prompt is spread over
   several steps and never stalls the decode batch for longer than one chunk. A
   sequence whose prompt is done samples its first token this step and is copied
   into the arena as a new row;
4. one vectorised sampling pass over the decode rows and the newly prefilled
   sequences together; then stop / length checks, and finished sequences leave the
   arena at once.

So every sequence gets at most one token per step, and the decode batch is never
re-run for a newcomer. Admission control happens in `add` (raises when full):
`max_batch_size` live sequences, prompts shorter than `max_seq_len`, and a KV token
budget checked against the padded footprint the arena may reach
(`live sequences x longest reservation`, a reservation being prompt + max_tokens).

Not for: tokenisation, detokenisation, stop strings or IPC (all in the parent or the
worker wrapper), nor transformers' ContinuousBatchingManager (its thread and asyncio
result API do not fit a worker process loop). This module is longer than the house
median because the step's phases share one piece of state; the KV layout lives in
`kv_arena` and sampling in `sampler`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import torch
from attrs import field, frozen
from transformers import DynamicCache

from neuron.worker.errors import (
    BatchFull,
    DeviceFault,
    DeviceOutOfMemory,
    DuplicateSequence,
    EngineClosed,
    InvalidRequest,
    KvBudgetExceeded,
    PromptTooLong,
    RequestTooLarge,
    UnsupportedModel,
)
from neuron.worker.kv_arena import (
    KvArena,
    LayerKind,
    additive_mask,
    layer_kinds,
    prefilled_layers,
)
from neuron.worker.loader import LoadedModel
from neuron.worker.prefix_cache import PrefixCache, snapshot
from neuron.worker.sampler import SamplingParams, SequenceSampler, sample_batch
from neuron.worker.vision import VisionPrompt
from protocol.worker import FinishReason, SeqId

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStatistics",
    "FinishReason",
    "SeqId",
    "SequenceOutput",
    "StepResult",
    "kv_bytes_per_token",
]


def _positive(_instance, attribute, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@frozen
class EngineConfig:
    max_batch_size: int = field(default=8, validator=_positive)
    max_seq_len: int | None = field(default=None, validator=_positive)  # None: model's
    kv_token_budget: int | None = field(default=None, validator=_positive)  # None: no cap
    prefill_chunk_tokens: int = field(default=512, validator=_positive)
    prefill_tokens_per_step: int | None = field(default=None, validator=_positive)
    prefix_cache_bytes: int | None = None  # None or 0: no prefix cache (prefix_cache.py)


@frozen
class SequenceOutput:
    """What one sequence produced in one step; `finish_reason` set on its last.

    The engine never reports "error": a failed step raises instead.
    """

    seq_id: SeqId
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    # On a sequence's first output: prompt tokens reused from the prefix cache.
    cached_tokens: int = 0
    # The token's (logprob, top alternatives) when the sequence asked (sampler.py).
    logprobs: tuple | None = None


@frozen
class StepResult:
    outputs: tuple[SequenceOutput, ...]
    decode_rows: int
    prefill_tokens: int
    seconds: float

    @property
    def finished(self) -> tuple[SequenceOutput, ...]:
        return tuple(o for o in self.outputs if o.finish_reason is not None)


@frozen
class EngineStatistics:
    active: int  # sequences in the decode batch
    prefilling: int  # admitted, prompt partly processed
    waiting: int  # admitted, prompt not started
    max_batch_size: int
    max_seq_len: int
    kv_tokens_used: int  # real cached tokens, arena and prefill caches
    kv_tokens_reserved: int  # the padded footprint admission has promised
    kv_token_budget: int
    kv_tokens_allocated: int  # arena rows x columns, padding included
    kv_bytes_allocated: int
    steps: int
    tokens_generated: int  # every sampled token, first tokens after prefill included
    decode_tokens: int  # tokens sampled from decode steps
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    prefix_cache_bytes: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_lookups: int = 0
    prefix_cache_hit_lookups: int = 0
    prefix_cache_hit_tokens: int = 0  # prompt tokens not prefilled thanks to a hit

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


class _Sequence:
    """Mutable per-sequence bookkeeping; private to the engine."""

    def __init__(
        self,
        seq_id: SeqId,
        prompt: list[int],
        sampler: SequenceSampler,
        *,
        max_new: int,
        reservation: int,
        stop_ids: frozenset[int],
        vision: VisionPrompt | None = None,
    ) -> None:
        self.seq_id = seq_id
        self.prompt = prompt
        self.sampler = sampler
        self.max_new = max_new
        self.reservation = reservation
        self.stop_ids = stop_ids
        self.prefilled = 0
        self.prefill_cache: DynamicCache | None = None  # a prompt partly prefilled
        self.cached = 0  # prompt tokens taken from the prefix cache
        # A finished prefill's K/V per layer (`[1, heads, prompt, dim]`), until it joins.
        self.kv: list | None = None
        self.generated = 0
        self.pending: int | None = None  # last sampled token, not yet in the KV cache
        self.row: int | None = None
        self.cancelled = False
        # Images (vision.py): their inputs until the prompt is prefilled, and the offset
        # multimodal rope puts on every position after them (0 for text).
        self.vision = vision
        self.rope_delta = 0 if vision is None else vision.rope_delta
        # A prompt with images is not keyed by its token ids alone: no prefix cache.
        self.cacheable = vision is None

    @property
    def kv_tokens(self) -> int:
        """Tokens in this sequence's cache: every token so far but the pending one."""
        if self.row is None:
            return self.prefilled
        return len(self.prompt) + self.generated - 1


class Engine:
    """Continuous batching over one loaded model. Single-threaded; see module docs."""

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig | None = None, *, sample=sample_batch
    ) -> None:
        """`sample` picks each step's tokens (`sample_batch`; a tensor-parallel rank's
        own, which agrees with its peers: `tensor_parallel.Group.sample`)."""
        config = config or EngineConfig()
        model = loaded.model
        _check_supported(model)
        self.max_seq_len = _max_seq_len(config, loaded)
        kinds = layer_kinds(model.config, self.max_seq_len)
        self._mask_layout = _mask_layout(model.config, kinds)
        self._kinds = kinds
        # Packing prompts into one forward needs every layer to attend (full or windowed:
        # the mask keeps the prompts apart); a recurrent state would run across them.
        self._packable = all(k.attention is not None and not k.states for k in kinds)
        self._loaded: LoadedModel | None = loaded
        self._device = loaded.device
        self._dtype = next(model.parameters()).dtype
        self._vocab_size = model.get_output_embeddings().out_features
        self._eos_ids = frozenset(loaded.info.eos_token_ids)
        self._sample = sample
        self.max_batch_size = config.max_batch_size
        self.kv_token_budget = config.kv_token_budget or self.max_batch_size * self.max_seq_len
        self._chunk = config.prefill_chunk_tokens
        self._per_step = config.prefill_tokens_per_step or config.prefill_chunk_tokens
        self._arena = KvArena(
            max_rows=self.max_batch_size,
            max_columns=self.max_seq_len,
            token_budget=self.kv_token_budget,
            kinds=kinds,
        )
        self._prefix_cache = (
            PrefixCache(
                config.prefix_cache_bytes,
                exact_only=not all(k == LayerKind("full") for k in kinds),
            )
            if config.prefix_cache_bytes
            else None
        )
        self._queue: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._live: dict[SeqId, _Sequence] = {}
        self._failure: BaseException | None = None
        self._steps = self._generated = self._decoded = self._prompt_tokens = 0
        self._prefill_seconds = self._decode_seconds = 0.0

    # -- the worker loop's API --------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._live)

    def add(
        self,
        seq_id: SeqId,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        vision: VisionPrompt | None = None,
    ) -> None:
        """Admit a sequence; it starts at the next step. Raises when it cannot be taken.
        `vision`: the prompt's images (`VisionModel.prepare`), for a vision model."""
        self._check_open()
        prompt = list(prompt_ids)
        self._check_request(seq_id, prompt)
        max_new = self.max_seq_len - len(prompt)
        if params.max_tokens is not None:
            max_new = min(max_new, params.max_tokens)
        reservation = len(prompt) + max_new
        self._check_capacity(reservation)
        sampler = SequenceSampler(params, prompt, self._vocab_size, self._device)
        stop_ids = params.stop_token_ids | (frozenset() if params.ignore_eos else self._eos_ids)
        sequence = _Sequence(
            seq_id, prompt, sampler, max_new=max_new, reservation=reservation,
            stop_ids=stop_ids, vision=vision,
        )  # fmt: skip
        self._reuse_prefix(sequence)
        self._live[seq_id] = sequence
        self._queue.append(sequence)

    def cancel(self, seq_id: SeqId) -> bool:
        """Cancel at the next step. False if the id is not live (finished or unknown)."""
        sequence = self._live.get(seq_id)
        if sequence is None or sequence.cancelled:
            return False
        sequence.cancelled = True
        return True

    def step(self) -> StepResult:
        """Run one step (see module docs) and report every sequence that moved."""
        self._check_open()
        started = time.perf_counter()
        outputs = self._apply_cancellations()
        try:
            with torch.no_grad():
                sampled, prefill_tokens, decode_rows = self._forward_and_sample()
        except BaseException as exc:
            # The arena may be half-written: this engine is done, whatever the cause.
            self._failure = exc
            mapped = _as_device_error(exc, self._device)
            if mapped is None:
                raise
            raise mapped from exc
        outputs.extend(self._settle(sampled))
        self._steps += 1
        return StepResult(
            tuple(outputs), decode_rows, prefill_tokens, time.perf_counter() - started
        )

    def statistics(self) -> EngineStatistics:
        prefill_caches = [s for s in self._queue if s.prefill_cache is not None]
        return EngineStatistics(
            active=len(self._running),
            prefilling=len(prefill_caches),
            waiting=len(self._queue) - len(prefill_caches),
            max_batch_size=self.max_batch_size,
            max_seq_len=self.max_seq_len,
            kv_tokens_used=self._arena.tokens_used + sum(s.prefilled for s in prefill_caches),
            kv_tokens_reserved=self._footprint(),
            kv_token_budget=self.kv_token_budget,
            kv_tokens_allocated=self._arena.tokens_allocated,
            kv_bytes_allocated=self._arena.bytes_allocated,
            steps=self._steps,
            tokens_generated=self._generated,
            decode_tokens=self._decoded,
            prompt_tokens=self._prompt_tokens,
            prefill_seconds=self._prefill_seconds,
            decode_seconds=self._decode_seconds,
            **self._prefix_statistics(),
        )

    def close(self) -> None:
        """Drop every sequence and KV buffer and the model reference. Idempotent."""
        self._arena.release()
        if self._prefix_cache is not None:
            self._prefix_cache.clear()
        self._queue.clear()
        self._running.clear()
        self._live.clear()
        self._loaded = None

    # -- admission --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._loaded is None:
            raise EngineClosed("the engine is closed")
        if self._failure is not None:
            raise EngineClosed(f"the engine failed earlier and must be rebuilt: {self._failure!r}")

    def _check_request(self, seq_id: SeqId, prompt: list[int]) -> None:
        if seq_id in self._live:
            raise DuplicateSequence(f"sequence {seq_id!r} is already live")
        if not prompt:
            raise InvalidRequest(f"sequence {seq_id!r} has an empty prompt")
        if min(prompt) < 0 or max(prompt) >= self._vocab_size:
            raise InvalidRequest(
                f"sequence {seq_id!r}: prompt token ids must be in [0, {self._vocab_size})"
            )
        if len(prompt) >= self.max_seq_len:
            raise PromptTooLong(
                f"sequence {seq_id!r}: the prompt is {len(prompt)} tokens, but this model's "
                f"context is {self.max_seq_len} tokens and must leave room for one more"
            )

    def _check_capacity(self, reservation: int) -> None:
        # A cancelled sequence is retired at the start of the next step, before a new
        # one runs, and the parent gives its slot back as it cancels: its room is free.
        if sum(not s.cancelled for s in self._live.values()) >= self.max_batch_size:
            raise BatchFull(f"the batch is full ({self.max_batch_size} live sequences)")
        if reservation > self.kv_token_budget:
            raise RequestTooLarge(
                f"the request needs {reservation} KV tokens; the budget is {self.kv_token_budget}"
            )
        footprint = self._footprint(extra=reservation)
        if footprint > self.kv_token_budget:
            raise KvBudgetExceeded(
                f"admitting would need {footprint} KV tokens (padded); the budget is "
                f"{self.kv_token_budget}"
            )

    def _footprint(self, extra: int | None = None) -> int:
        """Padded KV the arena may reach: rows x the longest reservation. With `extra` (a
        sequence being admitted), cancelled sequences, gone before it runs, do not count."""
        live = self._live.values()
        reservations = [s.reservation for s in live if extra is None or not s.cancelled]
        if extra is not None:
            reservations.append(extra)
        return len(reservations) * max(reservations, default=0)

    # -- one step -----------------------------------------------------------------------

    def _apply_cancellations(self) -> list[SequenceOutput]:
        cancelled = [s for s in self._live.values() if s.cancelled]
        for sequence in cancelled:
            if sequence in self._queue:
                self._queue.remove(sequence)
            self._retire(sequence)
        return [SequenceOutput(s.seq_id, (), "cancelled") for s in cancelled]

    def _forward_and_sample(self):
        decode_logits, decoded = self._decode()
        prefill_logits, prefilled, prefill_tokens = self._prefill()
        rows = decoded + prefilled
        if not rows:
            return [], prefill_tokens, 0
        started = time.perf_counter()
        logits = torch.cat([*decode_logits, *prefill_logits])
        tokens = self._sample(logits, [s.sampler for s in rows])
        # Sampling is charged to decode: it is per-token work, like the decode forward.
        self._decode_seconds += time.perf_counter() - started
        self._decoded += len(decoded)
        return list(zip(rows, tokens, strict=True)), prefill_tokens, len(decoded)

    def _decode(self) -> tuple[list[torch.Tensor], list[_Sequence]]:
        running = list(self._running)
        if not running:
            return [], []
        started = time.perf_counter()
        self._arena.ensure_writable()
        model = self._model()
        device = self._device
        # A row's position: its token count, offset by its images' rope delta (vision.py).
        positions = [[s.kv_tokens + s.rope_delta] for s in running]
        out = model(
            input_ids=torch.tensor([[s.pending] for s in running], device=device),
            position_ids=torch.tensor(positions, device=device),
            attention_mask=self._decode_mask(),
            past_key_values=self._arena.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._arena.advance()
        logits = out.logits[:, -1]
        self._decode_seconds += _elapsed(started, device)
        return [logits], running

    def _prefill(self) -> tuple[list[torch.Tensor], list[_Sequence], int]:
        budget, done, logits, tokens = self._per_step, [], [], 0
        started = time.perf_counter()
        while self._queue and budget > 0:
            group = self._whole_prompts(budget)
            if len(group) > 1:
                logits.append(self._prefill_together(group))
                used = sum(len(s.prompt) for s in group)
                for _ in group:
                    self._queue.popleft()
                done.extend(group)
            else:
                sequence = self._queue[0]
                used = min(self._chunk, budget, len(sequence.prompt) - sequence.prefilled)
                if self._snapshots_before_last(sequence, used):
                    used -= 1  # the last token alone, after a snapshot (see _store_prefix)
                last = self._prefill_chunk(sequence, used)
                if sequence.prefilled == len(sequence.prompt):
                    self._queue.popleft()
                    done.append(sequence)
                    logits.append(last)
            budget -= used
            tokens += used
        if tokens:
            self._prefill_seconds += _elapsed(started, self._device)
            self._prompt_tokens += tokens
        return logits, done, tokens

    def _whole_prompts(self, budget: int) -> list[_Sequence]:
        """Unstarted prompts from the queue's head that fit `budget` and a chunk together."""
        room, group = min(self._chunk, budget), []
        for sequence in self._queue:
            if sequence.prefilled or len(sequence.prompt) > room or not self._packable:
                break
            if sequence.vision is not None:  # its positions and embeddings are its own
                break
            group.append(sequence)
            room -= len(sequence.prompt)
        return group

    def _prefill_chunk(self, sequence: _Sequence, chunk: int) -> torch.Tensor:
        model = self._model()
        if sequence.prefill_cache is None:
            sequence.prefill_cache = DynamicCache(config=model.config)
        begin = sequence.prefilled
        ids = sequence.prompt[begin : begin + chunk]
        if sequence.vision is None:
            positions = torch.arange(begin, begin + chunk, device=self._device).unsqueeze(0)
            inputs = {"position_ids": positions}
        else:  # mrope positions, and the image embeddings that fall in this chunk
            inputs = sequence.vision.chunk_inputs(begin, begin + chunk, self._device)
        out = model(
            input_ids=torch.tensor([ids], device=self._device),
            past_key_values=sequence.prefill_cache,
            use_cache=True,
            logits_to_keep=1,
            **inputs,
        )
        sequence.prefilled += chunk
        self._store_prefix(sequence)
        if sequence.prefilled == len(sequence.prompt):
            sequence.kv = prefilled_layers(sequence.prefill_cache)
            sequence.prefill_cache = sequence.vision = None
        return out.logits[:, -1]

    def _prefill_together(self, group: list[_Sequence]) -> torch.Tensor:
        """Whole prompts packed into one forward; each keeps a view of its own columns.

        A prompt's tokens see only its own earlier tokens (block-diagonal causal mask;
        windowed layers' mask also hides keys a window or more back) at its own
        positions, so each view holds what a prefill on its own would have produced, up
        to float rounding. The cache keeps every packed column for every layer (a
        windowed layer's own cache would keep only the packed sequence's last window);
        a windowed layer's view is the prompt's last `window - 1` columns, as its own
        prefill would keep. The masks, and the attention masked by them, grow with the
        square of the packed length, which the chunk bounds. Returns one logits row per
        prompt."""
        model, device = self._model(), self._device
        lengths = [len(s.prompt) for s in group]
        ends = torch.tensor(lengths).cumsum(0)
        starts = ends - torch.tensor(lengths)
        segment = torch.repeat_interleave(torch.arange(len(group)), torch.tensor(lengths))
        column = torch.arange(int(ends[-1]))
        visible = (segment[:, None] == segment[None, :]) & (column[None, :] <= column[:, None])
        masks = {"full": additive_mask(~visible, self._dtype)[None, None].to(device)}
        if (window := self._arena.sliding_window) is not None:
            near = column[:, None] - column[None, :] < window
            masks["sliding"] = additive_mask(~(visible & near), self._dtype)[None, None].to(device)
        cache = DynamicCache()  # full layers only, created as the model writes them
        out = model(
            input_ids=torch.tensor([[t for s in group for t in s.prompt]], device=device),
            position_ids=(column - starts[segment]).unsqueeze(0).to(device),
            attention_mask=self._model_mask(masks),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=(ends - 1).to(device),
        )
        for sequence, begin, end in zip(group, starts.tolist(), ends.tolist(), strict=True):
            sequence.prefilled = len(sequence.prompt)
            # A windowed layer keeps what its own prefill would: the last window - 1.
            kept = begin if window is None else max(begin, end - window + 1)
            sequence.kv = [
                (layer.keys[:, :, lo:end], layer.values[:, :, lo:end])
                for layer, kind in zip(cache.layers, self._kinds, strict=True)
                for lo in [begin if kind.attention == "full" else kept]
            ]
        return out.logits[0]

    # -- after sampling -----------------------------------------------------------------

    def _settle(self, sampled: list[tuple[_Sequence, int]]) -> list[SequenceOutput]:
        outputs, joining = [], []
        for sequence, token in sampled:
            sequence.generated += 1
            self._generated += 1
            reason = self._finish_reason(sequence, token)
            cached = sequence.cached if sequence.generated == 1 else 0
            logprobs = sequence.sampler.logprobs
            outputs.append(SequenceOutput(sequence.seq_id, (token,), reason, cached, logprobs))
            sequence.pending = token
            if reason is not None:
                self._retire(sequence)
            elif sequence.row is None:
                joining.append(sequence)
        for sequence in joining:
            self._join(sequence)
        return outputs

    def _finish_reason(self, sequence: _Sequence, token: int) -> FinishReason | None:
        if token in sequence.stop_ids:
            return "stop"
        if sequence.generated >= sequence.max_new:
            return "length"
        return None

    def _join(self, sequence: _Sequence) -> None:
        assert sequence.kv is not None
        sequence.row = self._arena.insert(sequence.kv, len(sequence.prompt))
        sequence.kv = None
        self._running.append(sequence)

    def _retire(self, sequence: _Sequence) -> None:
        """Forget a sequence and free its KV: its arena row or its prefill cache."""
        self._live.pop(sequence.seq_id, None)
        sequence.prefill_cache = sequence.kv = sequence.vision = None
        row = sequence.row
        if row is None:
            return
        moved = self._arena.remove(row)
        last = self._running.pop()
        if moved is not None:
            self._running[row] = last
            last.row = row
        sequence.row = None

    # -- the prefix cache -------------------------------------------------------------

    def _reuse_prefix(self, sequence: _Sequence) -> None:
        if self._prefix_cache is None or not sequence.cacheable:
            return
        hit = self._prefix_cache.lookup(sequence.prompt)
        if hit is not None:
            sequence.prefill_cache, sequence.prefilled = hit.cache, hit.tokens
            sequence.cached = hit.tokens

    def _snapshots_before_last(self, sequence: _Sequence, chunk: int) -> bool:
        """Models with windowed or recurrent layers can resume only from an exact
        snapshot: this chunk stops one token short of the prompt's end to take one
        there (the same prompt again, and the conversation's next turn, start with
        exactly those tokens)."""
        return (
            self._prefix_cache is not None
            and sequence.cacheable
            and self._prefix_cache.exact_only
            and chunk > 1
            and sequence.prefilled + chunk == len(sequence.prompt)
        )

    def _store_prefix(self, sequence: _Sequence) -> None:
        cache = self._prefix_cache
        if cache is None or sequence.prefill_cache is None or not sequence.cacheable:
            return
        if cache.exact_only and sequence.prefilled == len(sequence.prompt) - 1:
            cache.store(sequence.prompt[:-1], snapshot(sequence.prefill_cache))
        elif not cache.exact_only and sequence.prefilled == len(sequence.prompt):
            cache.store(sequence.prompt, sequence.prefill_cache)  # no longer changes

    def _prefix_statistics(self) -> dict[str, int]:
        cache = self._prefix_cache
        if cache is None:
            return {}
        return {
            "prefix_cache_bytes": cache.bytes,
            "prefix_cache_entries": cache.entries,
            "prefix_cache_lookups": cache.lookups,
            "prefix_cache_hit_lookups": cache.hit_lookups,
            "prefix_cache_hit_tokens": cache.hit_tokens,
        }

    def _decode_mask(self):
        return self._model_mask(self._arena.decode_masks(self._dtype))

    def _model_mask(self, masks: dict):
        """Masks by attention kind in the form the model takes: one tensor when every
        attending layer is of one kind, else one per declared layer type."""
        layout = self._mask_layout
        if isinstance(layout, dict):
            return {t: None if kind is None else masks[kind] for t, kind in layout.items()}
        return None if layout is None else masks[layout]

    def _model(self) -> torch.nn.Module:
        assert self._loaded is not None
        return self._loaded.model


def _as_device_error(exc: BaseException, device: torch.device) -> Exception | None:
    """Our error for a device failure, or None when `exc` is not one."""
    if isinstance(exc, torch.OutOfMemoryError):
        return DeviceOutOfMemory(f"out of memory during a step on {device}")
    if isinstance(exc, RuntimeError) and device.type != "cpu":
        return DeviceFault(f"device error during a step on {device}: {exc}")
    return None


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """KV bytes one token costs in this model as loaded, to turn a byte budget into tokens."""
    info = loaded.info
    per_token = info.kv_bytes_per_token(next(loaded.model.parameters()).element_size())
    if per_token is None:
        raise UnsupportedModel(f"{info.snapshot.model_id!r}: config lacks layer/head sizes")
    # Only full-attention layers grow with every token; windowed layers are bounded by
    # their window and recurrent ones are fixed-size. A model with no full attention
    # is charged its windowed layers (a bound, not what it uses).
    kinds = layer_kinds(loaded.model.config, info.max_position_embeddings or 2**31)
    growing = sum(k.attention == "full" for k in kinds)
    charged = growing or sum(k.attention == "sliding" for k in kinds) or len(kinds)
    return max(1, per_token * charged // len(kinds))


def _mask_layout(config, kinds: list[LayerKind]):
    """How decode masks reach the model's layers: a dict from declared layer type to
    attention kind (None: that type takes no mask), or one kind for all layers."""
    declared = getattr(config.get_text_config(decoder=True), "layer_types", None)
    if declared and len(set(declared)) > 1:
        by_type: dict[str, set] = {}
        for layer_type, kind in zip(declared, kinds, strict=True):
            attending = by_type.setdefault(layer_type, set())
            if kind.attention is not None:
                attending.add(kind.attention)
        if any(len(a) > 1 for a in by_type.values()):
            raise UnsupportedModel(f"layer types {sorted(by_type)} mix attention kinds")
        return {t: next(iter(a), None) for t, a in by_type.items()}
    attending = {k.attention for k in kinds} - {None}
    if len(attending) > 1:
        raise UnsupportedModel("the layers mix attention kinds without declaring layer types")
    return next(iter(attending), None)


def _check_supported(model: torch.nn.Module) -> None:
    config = model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        raise UnsupportedModel(f"attention implementation {implementation!r} is not supported")
    if model.get_output_embeddings() is None:
        raise UnsupportedModel("the model has no output embeddings (not a causal LM)")


def _max_seq_len(config: EngineConfig, loaded: LoadedModel) -> int:
    model_limit = loaded.info.max_position_embeddings
    if config.max_seq_len is None:
        if model_limit is None:
            raise ValueError("max_seq_len is required: the model config does not state one")
        return model_limit
    if model_limit is not None and config.max_seq_len > model_limit:
        raise ValueError(
            f"max_seq_len {config.max_seq_len} exceeds the model's context of {model_limit}"
        )
    return config.max_seq_len


def _elapsed(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
