"""Resolve a request's sampling fields into the worker's `SamplingParams`.

Each field comes from the request, else the model's `generation_config.json`
(temperature, top_p, top_k, min_p, repetition_penalty; `do_sample: false` means
greedy), else OpenAI's documented default (temperature 1, top_p 1). Client values
are checked against OpenAI's documented ranges and refused with a 400 naming the
parameter (`InvalidParameter`); out-of-range values in a model's own config are
ignored instead. Decisions worth knowing:

* `max_completion_tokens` wins over `max_tokens`; the cap is the request's (or
  `default_max_tokens`) clamped to the context left after the prompt — a large
  cap is clamped, not refused, because editors and Claude Code send fixed large
  caps. A prompt that leaves no room raises `ContextLengthExceeded`.
* `top_p: 0` (allowed by OpenAI) means greedy; `top_k` 0 or -1 means off.
* A stop string that is exactly one added token (`<|im_end|>`, `</tool_call>`)
  becomes a stop token id: such tokens are skipped or consumed as markers, so a
  text matcher would never see them. Other stop strings are matched on text.
* `n` (at most `MAX_N`) is checked here; the daemon runs the n sequences, the
  i-th with `seed + i` when seeded (`neuron.serving`).
* Negative seeds are folded into the worker's unsigned 64-bit range.
* `logprobs` (chat: `logprobs: true` plus `top_logprobs`; completions: the top
  count) becomes the worker's `logprobs`, the number of alternatives to report,
  at most 20 (`MAX_TOP_LOGPROBS`).

Not for: `response_format` / `tool_choice`, which are not sampling knobs the
worker has; the daemon decides about those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import attrs

from neuron.text.errors import ContextLengthExceeded, InvalidParameter
from neuron.text.tokenizer import ModelTokenizer
from neuron.worker.snapshot import GenerationDefaults
from protocol.completions import CompletionRequest
from protocol.openai import ChatCompletionRequest
from protocol.worker import SamplingParams

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ResolvedSampling",
    "SamplingRequest",
    "resolve_sampling",
]

DEFAULT_MAX_TOKENS = 8192
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
MAX_N = 16
LOGIT_BIAS_LIMIT = 100.0
_SEED_MIN, _SEED_END = -(2**63), 2**64


@attrs.frozen(kw_only=True)
class SamplingRequest:
    """The sampling fields of any request dialect; None where the client was silent."""

    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the field name to blame in errors
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: Mapping[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int | None = None
    logprobs: int | None = None  # None: none; else how many top alternatives per token
    logprobs_param: str = "logprobs"

    @classmethod
    def _chat_logprobs(cls, r: ChatCompletionRequest) -> dict:
        if not r.logprobs:
            if r.top_logprobs:
                raise InvalidParameter("top_logprobs", "top_logprobs needs logprobs: true.")
            return {}
        return {"logprobs": r.top_logprobs or 0, "logprobs_param": "top_logprobs"}

    @classmethod
    def from_chat(cls, r: ChatCompletionRequest) -> SamplingRequest:
        given = "max_completion_tokens" if r.max_completion_tokens is not None else "max_tokens"
        return cls(
            max_tokens=r.effective_max_tokens, max_tokens_param=given,
            **_common(r), **cls._chat_logprobs(r),
        )  # fmt: skip

    @classmethod
    def from_completion(cls, r: CompletionRequest) -> SamplingRequest:
        return cls(max_tokens=r.max_tokens, logprobs=r.logprobs, **_common(r))


def _common(r: ChatCompletionRequest | CompletionRequest) -> dict:
    stop = () if r.stop is None else (r.stop,) if isinstance(r.stop, str) else tuple(r.stop)
    fields = ("temperature", "top_p", "top_k", "min_p", "presence_penalty")
    fields += ("frequency_penalty", "repetition_penalty", "logit_bias", "seed", "n")
    return {name: getattr(r, name) for name in fields} | {"stop": stop}


@attrs.frozen
class ResolvedSampling:
    params: SamplingParams
    stop_strings: tuple[str, ...]  # for `neuron.text.stop.StopMatcher`
    stop_token_strings: Mapping[int, str]  # stop token id → the stop string it stands for


def resolve_sampling(
    request: SamplingRequest,
    *,
    tokenizer: ModelTokenizer,
    defaults: GenerationDefaults | None,
    prompt_len: int,
    context_len: int,
    vocab_size: int | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> ResolvedSampling:
    """Validate and resolve; raises `InvalidParameter`/`ContextLengthExceeded` (400).

    `defaults` is the snapshot's `SnapshotInfo.generation`; `context_len` the
    model's context window; `vocab_size` the model's (config) vocabulary, which
    can exceed the tokenizer's — the tokenizer's size when not given.
    """
    vocab_size = vocab_size or tokenizer.vocab_size
    _validate(request, vocab_size)
    d = defaults or GenerationDefaults()
    temperature, top_p = _temperature_top_p(request, d)
    strings, token_stops = _split_stops(request.stop, tokenizer)
    params = SamplingParams(
        max_tokens=_max_tokens(request, prompt_len, context_len, default_max_tokens),
        temperature=temperature,
        top_p=top_p,
        top_k=_top_k(request.top_k if request.top_k is not None else d.top_k, vocab_size),
        min_p=float(_pick(request.min_p, d.min_p, 0.0, _in(0, 1))),
        seed=None if request.seed is None else request.seed % _SEED_END,
        repetition_penalty=float(
            _pick(request.repetition_penalty, d.repetition_penalty, 1.0, _pos2)
        ),
        presence_penalty=float(request.presence_penalty or 0.0),
        frequency_penalty=float(request.frequency_penalty or 0.0),
        logit_bias=dict(request.logit_bias or {}),
        stop_token_ids=tuple(token_stops),
        logprobs=request.logprobs,
    )
    return ResolvedSampling(params, strings, token_stops)


# -- resolution ----------------------------------------------------------------------


def _in(low: float, high: float) -> Callable[[float], bool]:
    return lambda v: low <= v <= high


def _pos2(value: float) -> bool:
    return 0 < value <= 2


def _pick(given, default, fallback, ok: Callable[[float], bool]):
    if given is not None:
        return given
    return default if default is not None and _finite(default) and ok(default) else fallback


def _temperature_top_p(r: SamplingRequest, d: GenerationDefaults) -> tuple[float, float]:
    default_temperature = 0.0 if d.do_sample is False else d.temperature
    temperature = _pick(r.temperature, default_temperature, 1.0, _in(0, 2))
    top_p = _pick(r.top_p, d.top_p, 1.0, lambda v: 0 < v <= 1)
    return (0.0, 1.0) if top_p == 0 else (float(temperature), float(top_p))


def _top_k(value: int | None, vocab_size: int) -> int | None:
    """None (off) for 0 / -1; at most the vocabulary, which is the same as off."""
    return min(value, vocab_size) if value is not None and value > 0 else None


def _max_tokens(r: SamplingRequest, prompt_len: int, context_len: int, default: int) -> int:
    room = context_len - prompt_len
    if room < 1:
        raise ContextLengthExceeded(prompt_len, context_len)
    return min(r.max_tokens if r.max_tokens is not None else default, room)


def _split_stops(
    stops: tuple[str, ...], tokenizer: ModelTokenizer
) -> tuple[tuple[str, ...], dict[int, str]]:
    strings: list[str] = []
    tokens: dict[int, str] = {}
    for stop in dict.fromkeys(stops):
        token_id = tokenizer.single_token_id(stop)
        if token_id is not None and token_id in tokenizer.added_token_ids:
            tokens[token_id] = stop
        else:
            strings.append(stop)
    return tuple(strings), tokens


# -- validation ----------------------------------------------------------------------


def _validate(r: SamplingRequest, vocab_size: int) -> None:
    _check_range("temperature", r.temperature, 0, 2)
    _check_range("top_p", r.top_p, 0, 1)
    _check_range("min_p", r.min_p, 0, 1)
    _check_range("presence_penalty", r.presence_penalty, -2, 2)
    _check_range("frequency_penalty", r.frequency_penalty, -2, 2)
    if r.repetition_penalty is not None and not (
        _finite(r.repetition_penalty) and _pos2(r.repetition_penalty)
    ):
        raise InvalidParameter("repetition_penalty", _expected("in (0, 2]", r.repetition_penalty))
    if r.top_k is not None and r.top_k < -1:
        raise InvalidParameter("top_k", _expected(">= 1, or 0 / -1 for off", r.top_k))
    if r.max_tokens is not None and r.max_tokens < 1:
        raise InvalidParameter(r.max_tokens_param, _expected(">= 1", r.max_tokens))
    _check_n(r.n)
    if r.logprobs is not None and not 0 <= r.logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidParameter(
            r.logprobs_param, _expected(f"in [0, {MAX_TOP_LOGPROBS}]", r.logprobs)
        )
    _check_seed(r.seed)
    _check_stop(r.stop)
    _check_logit_bias(r.logit_bias or {}, vocab_size)


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _expected(what: str, got: object) -> str:
    return f"expected a value {what}, but got {got!r} instead."


def _check_range(param: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (_finite(value) and low <= value <= high):
        raise InvalidParameter(param, _expected(f"in [{low}, {high}]", value))


def _check_n(n: int | None) -> None:
    if n is not None and n < 1:
        raise InvalidParameter("n", _expected(">= 1", n))
    if n is not None and n > MAX_N:
        raise InvalidParameter("n", _expected(f"<= {MAX_N}", n))


def _check_seed(seed: int | None) -> None:
    if seed is not None and not _SEED_MIN <= seed < _SEED_END:
        raise InvalidParameter("seed", _expected("that fits in 64 bits", seed))


def _check_stop(stops: tuple[str, ...]) -> None:
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidParameter("stop", f"at most {MAX_STOP_STRINGS} stop sequences are allowed.")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidParameter("stop", _expected(f"of 1 to {MAX_STOP_CHARS} characters", stop))


def _check_logit_bias(bias: Mapping[int, float], vocab_size: int) -> None:
    for token_id, value in bias.items():
        if not 0 <= token_id < vocab_size:
            raise InvalidParameter(
                "logit_bias", _expected(f"in [0, {vocab_size}) as key", token_id)
            )
        if not (_finite(value) and abs(value) <= LOGIT_BIAS_LIMIT):
            raise InvalidParameter("logit_bias", _expected("in [-100, 100]", value))
