"""Per-sequence sampling parameters and a batched sampler over one step's logits.

`SamplingParams` is the engine's value type for how one sequence picks tokens.
`SequenceSampler` holds a sequence's sampling state (its own `torch.Generator`, the
token counts its penalties need, its logit bias as tensors). `sample_batch` turns a
`[rows, vocab]` logits tensor into one token per row, vectorised over the batch:
logit bias, then repetition / presence / frequency penalties, then greedy rows take
the argmax while the others go through temperature, top-k, top-p and min-p and are
drawn by inverse CDF from a single uniform number out of the row's own generator.
Because each row consumes exactly one draw from its own generator per token, a seeded
sequence samples the same tokens whatever else shares its batch (as long as its
logits are the same, which batching keeps true up to float rounding).

Logprobs (for sequences whose `SamplingParams.logprobs` is set) are the log-softmax
of the logits the draw started from: after logit bias and the penalties, before
temperature, top-k, top-p and min-p (so a greedy and a sampled request report the
same distribution for the same prefix; vLLM's `processed_logprobs` minus the
temperature). Rows that did not ask pay nothing.

A sequence with a grammar (`SamplingParams.grammar`, an llguidance matcher from
`neuron.worker.grammar`) has the tokens its grammar disallows masked to -inf after
the penalties (logprobs are taken before the mask) and advances its matcher with
each token it samples; rows without one are not touched.

Not for: stop conditions and max_tokens (the engine decides when a sequence ends),
or mapping OpenAI request fields (the parent does that, including model defaults).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from attrs import field, frozen

import protocol.worker
from neuron.worker.errors import InvalidSamplingParams
from neuron.worker.grammar import apply_masks

LOGIT_BIAS_LIMIT = 100.0
MAX_TOP_LOGPROBS = 20
# Below this a temperature only overflows the logits; treat it as greedy, as vLLM does.
GREEDY_BELOW = 1e-5


def _bias_items(value: Mapping[int, float] | Iterable[tuple[int, float]]):
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((int(k), float(v)) for k, v in items))


@frozen
class SamplingParams:
    """How one sequence samples. `temperature <= 0` (or below 1e-5) means greedy."""

    max_tokens: int | None = None  # None: until a stop token or the context limit
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or negative: disabled
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = field(default=(), converter=_bias_items)
    stop_token_ids: frozenset[int] = field(default=frozenset(), converter=frozenset)
    ignore_eos: bool = False
    logprobs: int | None = None  # report the sampled token's logprob and this many top ones
    # An llguidance matcher for this sequence alone (neuron.worker.grammar), or None.
    grammar: Any = field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        problem = _params_problem(self)
        if problem is not None:
            raise InvalidSamplingParams(problem)

    @classmethod
    def from_wire(cls, wire: protocol.worker.SamplingParams, grammar: Any = None) -> SamplingParams:
        """From a `Generate` job's sampling parameters (validated here, not on the wire);
        `grammar` is the matcher the worker made from `wire.grammar`."""
        return cls(
            max_tokens=wire.max_tokens,
            temperature=wire.temperature,
            top_p=wire.top_p,
            top_k=wire.top_k or 0,
            min_p=wire.min_p,
            seed=wire.seed,
            repetition_penalty=wire.repetition_penalty,
            presence_penalty=wire.presence_penalty,
            frequency_penalty=wire.frequency_penalty,
            logit_bias=wire.logit_bias,
            stop_token_ids=wire.stop_token_ids,
            ignore_eos=wire.ignore_eos,
            logprobs=wire.logprobs,
            grammar=grammar,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _params_problem(p: SamplingParams) -> str | None:
    checks = (
        (p.max_tokens is None or p.max_tokens >= 1, "max_tokens must be at least 1"),
        (0.0 < p.top_p <= 1.0, "top_p must be in (0, 1]"),
        (0.0 <= p.min_p <= 1.0, "min_p must be in [0, 1]"),
        (p.repetition_penalty > 0.0, "repetition_penalty must be positive"),
        (-2.0 <= p.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
        (-2.0 <= p.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
        (all(t >= 0 for t, _ in p.logit_bias), "logit_bias token ids must be >= 0"),
        (
            all(abs(b) <= LOGIT_BIAS_LIMIT for _, b in p.logit_bias),
            f"logit_bias values must be in [-{LOGIT_BIAS_LIMIT:g}, {LOGIT_BIAS_LIMIT:g}]",
        ),
        (p.seed is None or 0 <= p.seed < 2**64, "seed must be in [0, 2**64)"),
        (
            p.logprobs is None or 0 <= p.logprobs <= MAX_TOP_LOGPROBS,
            f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]",
        ),
    )
    return next((message for ok, message in checks if not ok), None)


class SequenceSampler:
    """One sequence's sampling state, kept on the model's device."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        _check_token_ids(params, vocab_size)
        self.params = params
        self.top_k = params.top_k if params.top_k > 0 else vocab_size
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(params.seed if params.seed is not None else _fresh_seed())
        bias_ids = [t for t, _ in params.logit_bias]
        bias_values = [b for _, b in params.logit_bias]
        self.bias_ids = torch.tensor(bias_ids, dtype=torch.long, device=device)
        self.bias_values = torch.tensor(bias_values, dtype=torch.float32, device=device)
        self.seen: torch.Tensor | None = None  # prompt + output tokens (repetition)
        self.counts: torch.Tensor | None = None  # output token counts (presence/frequency)
        if params.penalised:
            self.counts = torch.zeros(vocab_size, device=device)
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(list(prompt_ids), device=device)] = True
        # The last sampled token's (logprob, ((top id, top logprob), ...)), when asked.
        self.logprobs: tuple[float, tuple[tuple[int, float], ...]] | None = None
        self.matcher = params.grammar

    def record(self, token: int) -> None:
        """Account for a token this sequence just produced."""
        if self.matcher is not None:
            self.matcher.consume_token(token)
        if self.counts is not None and self.seen is not None:
            self.counts[token] += 1.0
            self.seen[token] = True

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


def _check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    bad = [t for t, _ in params.logit_bias if t >= vocab_size]
    if bad:
        raise InvalidSamplingParams(
            f"logit_bias token ids {bad[:5]} are outside the vocabulary (size {vocab_size})"
        )


def _fresh_seed() -> int:
    return secrets.randbits(63)


# -- the batched step -----------------------------------------------------------------


def sample_batch(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> list[int]:
    """One token per row of `logits` (`[rows, vocab]`), row i sampled by `samplers[i]`."""
    logits = logits.float()
    _apply_logit_bias(logits, samplers)
    _apply_penalties(logits, samplers)
    logprobs = _logprob_rows(logits, samplers)
    if any(s.matcher is not None for s in samplers):
        apply_masks(logits, [s.matcher for s in samplers])
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(samplers) if not s.params.greedy]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        drawn = _sample_rows(logits[index], [samplers[i] for i in rows])
        tokens = tokens.index_copy(0, index, drawn)
    picked = tokens.tolist()
    if logprobs is not None:
        _record_logprobs(*logprobs, tokens, samplers)
    for sampler, token in zip(samplers, picked, strict=True):
        sampler.record(token)
    return picked


def _logprob_rows(logits: torch.Tensor, samplers: Sequence[SequenceSampler]):
    """The rows that asked for logprobs and their log-softmax, or None."""
    rows = [i for i, s in enumerate(samplers) if s.params.logprobs is not None]
    if not rows:
        return None
    index = torch.tensor(rows, device=logits.device)
    return rows, index, logits[index].log_softmax(dim=-1)


def _record_logprobs(
    rows: list[int],
    index: torch.Tensor,
    logprobs: torch.Tensor,
    tokens: torch.Tensor,
    samplers: Sequence[SequenceSampler],
) -> None:
    chosen = logprobs.gather(-1, tokens[index].unsqueeze(-1)).squeeze(-1).tolist()
    k = max(samplers[i].params.logprobs or 0 for i in rows)
    top_values, top_ids = logprobs.topk(k, dim=-1)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        n = samplers[i].params.logprobs or 0
        samplers[i].logprobs = (
            chosen[j],
            tuple(zip(top_ids[j][:n], top_values[j][:n], strict=True)),
        )


def _apply_logit_bias(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> None:
    biased = [(i, s) for i, s in enumerate(samplers) if s.params.logit_bias]
    if not biased:
        return
    rows = torch.cat([torch.full_like(s.bias_ids, i) for i, s in biased])
    ids = torch.cat([s.bias_ids for _, s in biased])
    values = torch.cat([s.bias_values for _, s in biased])
    logits.index_put_((rows, ids), values, accumulate=True)


def _apply_penalties(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> None:
    rows = [i for i, s in enumerate(samplers) if s.counts is not None]
    if not rows:
        return
    chosen = [samplers[i] for i in rows]
    index = torch.tensor(rows, device=logits.device)
    sub = logits[index]
    seen = torch.stack([s.seen for s in chosen])
    counts = torch.stack([s.counts for s in chosen])
    repetition = _column([s.params.repetition_penalty for s in chosen], sub)
    penalised = torch.where(sub > 0, sub / repetition, sub * repetition)
    sub = torch.where(seen, penalised, sub)
    sub -= _column([s.params.frequency_penalty for s in chosen], sub) * counts
    sub -= _column([s.params.presence_penalty for s in chosen], sub) * (counts > 0)
    logits.index_copy_(0, index, sub)


def _sample_rows(logits: torch.Tensor, samplers: Sequence[SequenceSampler]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then an inverse-CDF draw per row."""
    logits = logits / _column([s.params.temperature for s in samplers], logits)
    # A stable descending sort makes each row's candidate order depend on its logits only.
    ordered, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(ordered.shape[-1], device=ordered.device)
    top_k = _column([s.top_k for s in samplers], ordered, dtype=torch.long)
    ordered = ordered.masked_fill(ranks >= top_k, float("-inf"))
    probs = ordered.softmax(dim=-1)
    top_p = _column([s.params.top_p for s in samplers], probs)
    outside_p = (probs.cumsum(dim=-1) - probs) >= top_p
    outside_p[:, 0] = False
    probs = ordered.masked_fill(outside_p, float("-inf")).softmax(dim=-1)
    min_p = _column([s.params.min_p for s in samplers], probs)
    probs = probs.masked_fill(probs < min_p * probs[:, :1], 0.0)
    cdf = probs.cumsum(dim=-1)
    uniform = torch.tensor([s.uniform() for s in samplers], device=cdf.device)
    target = (uniform * cdf[:, -1]).unsqueeze(-1)
    picked = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    return order.gather(-1, picked).squeeze(-1)


def _column(values: list[float] | list[int], like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.tensor(values, device=like.device, dtype=dtype or like.dtype).unsqueeze(-1)
