"""Sampling resolution: request → generation_config → fallback, caps, stops, refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron.text.errors import ContextLengthExceeded, InvalidParameter
from neuron.text.sampling import (
    DEFAULT_MAX_TOKENS,
    SamplingRequest,
    resolve_sampling,
)
from neuron.text.tokenizer import ModelTokenizer
from neuron.worker.snapshot import GenerationDefaults
from protocol._converter import structure
from protocol.completions import CompletionRequest
from protocol.openai import ChatCompletionRequest

DEMO_DEFAULTS = GenerationDefaults(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)


@pytest.fixture(scope="module")
def tokenizer(demo_models) -> ModelTokenizer:
    return ModelTokenizer.from_snapshot(demo_models.plain_path)


@pytest.fixture
def resolve(tokenizer):
    def run(request: SamplingRequest, **overrides):
        kwargs = {
            "tokenizer": tokenizer,
            "defaults": DEMO_DEFAULTS,
            "prompt_len": 100,
            "context_len": 4096,
        }
        return resolve_sampling(request, **(kwargs | overrides))

    return run


def _chat(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return structure(body, ChatCompletionRequest)


# -- resolution order -------------------------------------------------------------------


def test_generation_config_defaults_fill_what_the_request_leaves_out(resolve):
    params = resolve(SamplingRequest()).params
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.95, 20)
    assert (params.min_p, params.repetition_penalty, params.seed) == (0.0, 1.0, None)


def test_request_values_win(resolve):
    request = SamplingRequest(temperature=0.0, top_p=0.5, top_k=5, repetition_penalty=1.2)
    params = resolve(request).params
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (
        0.0,
        0.5,
        5,
        1.2,
    )


def test_openai_fallbacks_without_generation_config(resolve):
    params = resolve(SamplingRequest(), defaults=None).params
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 1.0, None)


def test_do_sample_false_means_greedy_by_default(resolve):
    defaults = GenerationDefaults(do_sample=False, temperature=0.7)
    assert resolve(SamplingRequest(), defaults=defaults).params.temperature == 0.0
    assert resolve(SamplingRequest(temperature=0.3), defaults=defaults).params.temperature == 0.3


def test_out_of_range_model_defaults_are_ignored(resolve):
    defaults = GenerationDefaults(temperature=9.0, top_p=0.0, repetition_penalty=-1.0, min_p=2.0)
    params = resolve(SamplingRequest(), defaults=defaults).params
    assert (params.temperature, params.top_p, params.repetition_penalty, params.min_p) == (
        1.0,
        1.0,
        1.0,
        0.0,
    )


def test_top_p_zero_is_greedy_and_top_k_zero_or_minus_one_is_off(resolve):
    params = resolve(SamplingRequest(top_p=0.0, temperature=1.5)).params
    assert (params.temperature, params.top_p) == (0.0, 1.0)
    assert resolve(SamplingRequest(top_k=0)).params.top_k is None
    assert resolve(SamplingRequest(top_k=-1)).params.top_k is None


def test_penalties_bias_and_seed_pass_through(resolve):
    request = SamplingRequest(
        presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={7: -100.0}, seed=42
    )
    params = resolve(request).params
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert dict(params.logit_bias) == {7: -100.0}
    assert params.seed == 42


def test_negative_seeds_fold_into_the_unsigned_range(resolve):
    assert resolve(SamplingRequest(seed=-1)).params.seed == 2**64 - 1


# -- max tokens -----------------------------------------------------------------------------


def test_max_completion_tokens_wins_over_max_tokens(resolve):
    request = SamplingRequest.from_chat(_chat(max_tokens=10, max_completion_tokens=20))
    assert request.max_tokens_param == "max_completion_tokens"
    assert resolve(request).params.max_tokens == 20


def test_default_cap_is_bounded_by_the_context_left(resolve):
    assert resolve(SamplingRequest()).params.max_tokens == 4096 - 100
    assert resolve(SamplingRequest(), context_len=100_000).params.max_tokens == DEFAULT_MAX_TOKENS
    assert resolve(SamplingRequest(), default_max_tokens=50).params.max_tokens == 50


def test_a_large_cap_is_clamped_not_refused(resolve):
    assert resolve(SamplingRequest(max_tokens=32_000)).params.max_tokens == 3996


def test_a_prompt_that_fills_the_context_is_refused(resolve):
    with pytest.raises(ContextLengthExceeded) as caught:
        resolve(SamplingRequest(), prompt_len=4096)
    error = caught.value
    assert (error.status, error.code) == (400, "context_length_exceeded")
    body = error.to_openai()["error"]
    assert (body["prompt_len"], body["max"]) == (4096, 4096)
    assert "maximum context length is 4096 tokens" in body["message"]


# -- stops ----------------------------------------------------------------------------------


def test_stop_strings_and_stop_tokens(resolve, tokenizer):
    request = SamplingRequest(stop=("<|im_end|>", "</tool_call>", "\n\n", "Hello", "\n\n"))
    resolved = resolve(request)
    im_end, close = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("</tool_call>")
    assert resolved.stop_strings == ("\n\n", "Hello")
    assert resolved.params.stop_token_ids == (im_end, close)
    assert resolved.stop_token_strings == {im_end: "<|im_end|>", close: "</tool_call>"}


def test_chat_stop_forms():
    assert SamplingRequest.from_chat(_chat(stop="x")).stop == ("x",)
    assert SamplingRequest.from_chat(_chat(stop=["x", "y"])).stop == ("x", "y")
    assert SamplingRequest.from_chat(_chat()).stop == ()


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"frequency_penalty": math.inf}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": 3.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5, "max_tokens_param": "max_output_tokens"}, "max_output_tokens"),
        ({"n": 0}, "n"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop": ("x" * 257,)}, "stop"),
        ({"stop": tuple(str(i) for i in range(17))}, "stop"),
        ({"logit_bias": {4096: 1.0}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {5: math.nan}}, "logit_bias"),
    ],
)
def test_bad_values_are_400s_naming_the_param(resolve, fields, param):
    with pytest.raises(InvalidParameter) as caught:
        resolve(SamplingRequest(**fields))
    error = caught.value
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "invalid_value",
        param,
    )
    assert f"'{param}'" in error.message


def test_n_is_bounded(resolve):
    with pytest.raises(InvalidParameter) as caught:
        resolve(SamplingRequest(n=17))
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "invalid_value",
        "n",
    )
    assert resolve(SamplingRequest(n=16)).params.max_tokens > 0


def test_logit_bias_is_checked_against_the_model_vocab(resolve):
    assert resolve(SamplingRequest(logit_bias={5000: 1.0}), vocab_size=8192).params.logit_bias
    with pytest.raises(InvalidParameter):
        resolve(SamplingRequest(logit_bias={5000: 1.0}))  # the tokenizer knows 4096


@given(
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1),
    penalty=st.floats(-2, 2),
    max_tokens=st.integers(1, 10**9),
    prompt_len=st.integers(0, 4095),
)
def test_every_valid_request_resolves_to_worker_valid_params(
    tokenizer, temperature, top_p, penalty, max_tokens, prompt_len
):
    request = SamplingRequest(
        temperature=temperature,
        top_p=top_p,
        presence_penalty=penalty,
        frequency_penalty=penalty,
        max_tokens=max_tokens,
    )
    params = resolve_sampling(
        request, tokenizer=tokenizer, defaults=None, prompt_len=prompt_len, context_len=4096
    ).params
    assert 1 <= params.max_tokens <= 4096 - prompt_len
    assert 0 < params.top_p <= 1
    assert 0 <= params.temperature <= 2


# -- dialects -------------------------------------------------------------------------------


def test_from_completion():
    completion = structure(
        {"model": "m", "prompt": "x", "max_tokens": 7, "stop": "\n", "seed": 3, "n": 1},
        CompletionRequest,
    )
    assert SamplingRequest.from_completion(completion) == SamplingRequest(
        max_tokens=7, stop=("\n",), seed=3, n=1
    )
