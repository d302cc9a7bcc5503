"""The continuous-batching engine on the tiny demo model (fp32, CPU, one thread).

Batching must not change what a sequence generates: greedy outputs are compared
token for token with the same sequence run alone, and with transformers' own
`generate`, across ragged prompts, mid-flight joins, chunked prefill and churn.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuron.worker.errors import (
    BatchFull,
    DeviceOutOfMemory,
    DuplicateSequence,
    EngineClosed,
    InvalidRequest,
    InvalidSamplingParams,
    KvBudgetExceeded,
    PromptTooLong,
    RequestTooLarge,
)
from neuron.worker.sampler import SamplingParams

torch = pytest.importorskip("torch")
engine_module = pytest.importorskip("neuron.worker.engine")
Engine, EngineConfig, SeqId = engine_module.Engine, engine_module.EngineConfig, engine_module.SeqId

IM_END, ENDOFTEXT = 4089, 4087
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


def _prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (length,), generator=generator).tolist()


RAGGED = {SeqId(i): _prompt(n, i) for i, n in enumerate((3, 11, 29, 64, 7))}


@pytest.fixture(scope="module")
def alone(tiny_model):
    """Each RAGGED prompt's greedy output when it has the engine to itself."""
    results = {}
    for seq_id, prompt in RAGGED.items():
        engine = Engine(tiny_model, EngineConfig(max_batch_size=1, max_seq_len=512))
        engine.add(seq_id, prompt, GREEDY)
        tokens = []
        while engine.has_work:
            tokens.extend(t for o in engine.step().outputs for t in o.token_ids)
        results[seq_id] = tokens
    return results


def _tokens(results) -> dict:
    return {seq_id: tokens for seq_id, (tokens, _, _) in results.items()}


def test_greedy_matches_transformers_generate(tiny_model, alone):
    model = tiny_model.model
    for seq_id, prompt in RAGGED.items():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=ENDOFTEXT,
        )
        assert out[0, len(prompt) :].tolist() == alone[seq_id], seq_id
    assert len({tuple(t) for t in alone.values()}) == len(alone)  # outputs are not degenerate


def test_batched_equals_alone_for_ragged_prompts(run_engine, alone):
    results = run_engine([(s, p, GREEDY) for s, p in RAGGED.items()])
    assert _tokens(results) == alone
    assert {reason for _, reason, _ in results.values()} == {"length"}


def test_joining_mid_flight_changes_nobody(run_engine, alone):
    first = [(s, RAGGED[s], GREEDY) for s in (SeqId(0), SeqId(1))]
    # The long prompt joins late and forces the arena to shift everyone right.
    joins = {5: [(SeqId(3), RAGGED[SeqId(3)], GREEDY)], 9: [(SeqId(4), RAGGED[SeqId(4)], GREEDY)]}
    results = run_engine(first, joins=joins)
    assert _tokens(results) == {s: alone[s] for s in (0, 1, 3, 4)}
    assert results[SeqId(3)][2] == 5


def test_chunked_prefill_spreads_a_prompt_over_steps(run_engine, alone):
    config = EngineConfig(
        max_batch_size=8, max_seq_len=512, prefill_chunk_tokens=8, prefill_tokens_per_step=10
    )
    results = run_engine([(s, p, GREEDY) for s, p in RAGGED.items()], config)
    assert _tokens(results) == alone
    first_token_step = {s: first for s, (_, _, first) in results.items()}
    assert first_token_step[SeqId(3)] > 5  # 64 prompt tokens at <= 10 per step


class _CountingModel:
    """The model, recording the shape of every forward's input ids."""

    def __init__(self, model) -> None:
        self.model, self.config, self.shapes = model, model.config, []

    def __call__(self, *args, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.model(*args, **kwargs)


def test_short_prompts_are_prefilled_packed_into_one_forward(tiny_model, alone):
    # 3 + 11 tokens fit a 40-token chunk together; 3 + 11 + 29 would not.
    config = EngineConfig(max_batch_size=8, max_seq_len=512, prefill_chunk_tokens=40,
                          prefill_tokens_per_step=100)  # fmt: skip
    engine = Engine(tiny_model, config)
    counting = _CountingModel(tiny_model.model)
    engine._model = lambda: counting
    for seq_id in (SeqId(0), SeqId(1), SeqId(2)):
        engine.add(seq_id, RAGGED[seq_id], GREEDY)
    first = engine.step()
    assert counting.shapes == [(1, 3 + 11), (1, 29)]
    assert (first.prefill_tokens, len(first.outputs)) == (3 + 11 + 29, 3)
    results = {o.seq_id: list(o.token_ids) for o in first.outputs}
    while engine.has_work:
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
    assert results == {s: alone[s] for s in (SeqId(0), SeqId(1), SeqId(2))}


def test_churn_with_a_small_batch_keeps_every_output(tiny_model, alone):
    """Sequences of different lengths come and go through a 2-row batch."""
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=512))
    budgets = {SeqId(i): 4 + 3 * i for i in RAGGED}
    pending = list(RAGGED)
    results: dict = {s: [] for s in RAGGED}
    while pending or engine.has_work:
        while pending and engine.statistics().active + engine.statistics().waiting < 2:
            seq_id = pending.pop(0)
            params = attrs.evolve(GREEDY, max_tokens=budgets[seq_id])
            engine.add(seq_id, RAGGED[seq_id], params)
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
    assert results == {s: alone[s][: budgets[s]] for s in RAGGED}
    assert engine.statistics().kv_bytes_allocated == 0


def test_long_generation_compacts_and_grows_the_arena(run_engine):
    # The long prompt leaves early; the short one then runs on past the first
    # column capacity, so the arena both compacts (drops dead columns) and grows.
    short = (SeqId(0), _prompt(5, 50), attrs.evolve(GREEDY, max_tokens=150))
    long = (SeqId(1), _prompt(70, 51), attrs.evolve(GREEDY, max_tokens=10))
    together = run_engine([short, long])
    apart = {**run_engine([short]), **run_engine([long])}
    assert _tokens(together) == _tokens(apart)


def test_max_tokens_ends_with_length(run_engine):
    results = run_engine([(SeqId(1), _prompt(5, 1), attrs.evolve(GREEDY, max_tokens=3))])
    tokens, reason, _ = results[SeqId(1)]
    assert (len(tokens), reason) == (3, "length")


def test_context_limit_ends_with_length(run_engine):
    config = EngineConfig(max_batch_size=2, max_seq_len=32)
    params = attrs.evolve(GREEDY, max_tokens=None)
    tokens, reason, _ = run_engine([(SeqId(1), _prompt(29, 1), params)], config)[SeqId(1)]
    assert (len(tokens), reason) == (3, "length")


def test_eos_ends_with_stop_unless_ignored(run_engine):
    forced = SamplingParams(max_tokens=5, temperature=0.0, logit_bias={IM_END: 100})
    results = run_engine(
        [(SeqId(1), _prompt(5, 1), forced), (SeqId(2), _prompt(5, 1), forced.__class__(
            max_tokens=5, temperature=0.0, logit_bias={IM_END: 100}, ignore_eos=True))]
    )  # fmt: skip
    assert results[SeqId(1)][:2] == ([IM_END], "stop")
    assert results[SeqId(2)][:2] == ([IM_END] * 5, "length")


def test_generation_config_eos_ids_all_stop(run_engine):
    forced = SamplingParams(max_tokens=5, temperature=0.0, logit_bias={ENDOFTEXT: 100})
    assert run_engine([(SeqId(1), _prompt(5, 1), forced)])[SeqId(1)][:2] == ([ENDOFTEXT], "stop")


def test_stop_token_ids_end_with_stop(run_engine, alone):
    reference = alone[SeqId(2)]
    stop = next(t for i, t in enumerate(reference) if i >= 4 and t not in reference[:i])
    params = attrs.evolve(GREEDY, stop_token_ids={stop})
    tokens, reason, _ = run_engine([(SeqId(2), RAGGED[SeqId(2)], params)])[SeqId(2)]
    assert reason == "stop"
    assert tokens == reference[: reference.index(stop) + 1]


def test_a_seed_reproduces_regardless_of_the_batch(run_engine):
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    prompt = _prompt(9, 3)
    alone = run_engine([(SeqId(0), prompt, sampled)])
    crowd = [
        (SeqId(i), _prompt(4 + 5 * i, 10 + i), attrs.evolve(sampled, seed=100 + i))
        for i in range(1, 4)
    ]
    crowded = run_engine([*crowd, (SeqId(0), prompt, sampled)])
    assert crowded[SeqId(0)][0] == alone[SeqId(0)][0]
    assert run_engine([(SeqId(0), prompt, sampled)]) == alone


def test_temperature_sampling_differs_across_seeds(run_engine):
    prompt = _prompt(9, 3)
    requests = [
        (SeqId(s), prompt, SamplingParams(max_tokens=12, temperature=1.0, seed=s, ignore_eos=True))
        for s in range(4)
    ]
    outputs = {tuple(tokens) for tokens, _, _ in run_engine(requests).values()}
    assert len(outputs) == 4


def test_logit_bias_forces_a_token(run_engine):
    for temperature in (0.0, 1.0):
        params = SamplingParams(
            max_tokens=6, temperature=temperature, seed=1, logit_bias={42: 100}, ignore_eos=True
        )
        assert run_engine([(SeqId(1), _prompt(6, 2), params)])[SeqId(1)][0] == [42] * 6


def test_cancel_frees_the_slot_and_its_kv(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=512))
    engine.add(SeqId(1), _prompt(40, 1), GREEDY)
    engine.add(SeqId(2), _prompt(10, 2), GREEDY)
    for _ in range(3):
        engine.step()
    with pytest.raises(BatchFull):
        engine.add(SeqId(3), _prompt(5, 3), GREEDY)
    before = engine.statistics()
    assert (before.active, before.kv_tokens_used) == (2, 40 + 2 + 10 + 2)
    assert engine.cancel(SeqId(1))
    assert not engine.cancel(SeqId(1))  # already pending
    result = engine.step()
    assert engine_module.SequenceOutput(SeqId(1), (), "cancelled") in result.outputs
    after = engine.statistics()
    assert (after.active, after.kv_tokens_used) == (1, 10 + 3)
    engine.add(SeqId(3), _prompt(5, 3), GREEDY)  # the slot is free again
    assert not engine.cancel(SeqId(99))


def test_a_cancelled_sequence_makes_room_before_the_next_step(tiny_model):
    """The parent gives a request's slot back as it cancels the sequence, so the next
    request may arrive before the step that retires it: the batch and the KV budget
    must already count it out (a client hanging up made others fail 'batch is full')."""
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=64, kv_token_budget=50))
    engine.add(SeqId(1), _prompt(9, 1), GREEDY)  # reserves 9 + 16 = 25
    engine.add(SeqId(2), _prompt(9, 2), GREEDY)  # 2 rows x 25 = the whole budget
    engine.step()
    assert engine.cancel(SeqId(1))
    engine.add(SeqId(3), _prompt(9, 3), GREEDY)  # neither BatchFull nor KvBudgetExceeded
    finished = {}
    while engine.has_work:
        for output in engine.step().outputs:
            finished[output.seq_id] = output.finish_reason
        assert engine.statistics().kv_tokens_allocated <= 50
    assert finished == {1: "cancelled", 2: "length", 3: "length"}


def test_the_arena_shrinks_when_occupancy_drops(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=8, max_seq_len=512))
    for i in range(8):
        engine.add(SeqId(i), _prompt(20, i), GREEDY)
    engine.step()
    full = engine.statistics().kv_bytes_allocated
    for i in range(6):
        engine.cancel(SeqId(i))
    engine.step()
    assert engine.statistics().kv_bytes_allocated <= full // 4


def test_cancelling_before_prefill_and_the_last_sequence_frees_everything(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=4, max_seq_len=512))
    engine.add(SeqId(1), _prompt(8, 1), GREEDY)
    engine.step()
    engine.add(SeqId(2), _prompt(8, 2), GREEDY)
    engine.cancel(SeqId(2))  # never prefilled
    engine.cancel(SeqId(1))
    outputs = engine.step().outputs
    assert {(o.seq_id, o.finish_reason) for o in outputs} == {(1, "cancelled"), (2, "cancelled")}
    stats = engine.statistics()
    assert (stats.active, stats.waiting, stats.kv_tokens_used, stats.kv_bytes_allocated) == (
        0, 0, 0, 0
    )  # fmt: skip
    assert not engine.has_work


def test_request_errors(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=64))
    with pytest.raises(PromptTooLong, match=r"prompt is 64 tokens.*context is 64 tokens"):
        engine.add(SeqId(1), _prompt(64, 1), GREEDY)
    with pytest.raises(InvalidRequest, match="empty prompt"):
        engine.add(SeqId(1), [], GREEDY)
    with pytest.raises(InvalidRequest, match=r"token ids must be in \[0, 4096\)"):
        engine.add(SeqId(1), [4096], GREEDY)
    with pytest.raises(InvalidSamplingParams, match="outside the vocabulary"):
        engine.add(SeqId(1), [1], SamplingParams(logit_bias={5000: 1}))
    engine.add(SeqId(1), _prompt(3, 1), GREEDY)
    with pytest.raises(DuplicateSequence, match="already live"):
        engine.add(SeqId(1), _prompt(3, 1), GREEDY)
    assert engine.statistics().waiting == 1


def test_capacity_errors(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=64, kv_token_budget=50))
    with pytest.raises(RequestTooLarge, match="needs 64 KV tokens; the budget is 50"):
        engine.add(SeqId(1), _prompt(40, 1), attrs.evolve(GREEDY, max_tokens=None))
    engine.add(SeqId(1), _prompt(9, 1), GREEDY)  # reserves 9 + 16 = 25
    with pytest.raises(KvBudgetExceeded, match="would need 56 KV tokens"):
        engine.add(SeqId(2), _prompt(12, 2), GREEDY)  # 2 rows x 28 > 50
    engine.add(SeqId(2), _prompt(4, 2), GREEDY)
    with pytest.raises(BatchFull, match="2 live sequences"):
        engine.add(SeqId(3), _prompt(4, 3), GREEDY)
    assert engine.statistics().kv_tokens_reserved == 2 * 25
    while engine.has_work:
        engine.step()
        assert engine.statistics().kv_tokens_allocated <= 50  # padding included


def test_errors_say_whether_to_retry():
    assert BatchFull.retriable and KvBudgetExceeded.retriable
    assert not PromptTooLong.retriable and not RequestTooLarge.retriable
    assert issubclass(PromptTooLong, ValueError)


def test_statistics_are_a_frozen_snapshot(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=4, max_seq_len=512))
    engine.add(SeqId(1), _prompt(12, 1), attrs.evolve(GREEDY, max_tokens=5))
    engine.add(SeqId(2), _prompt(20, 2), attrs.evolve(GREEDY, max_tokens=3))
    snapshot = engine.statistics()
    assert (snapshot.waiting, snapshot.active, snapshot.kv_tokens_reserved) == (2, 0, 2 * 23)
    while engine.has_work:
        engine.step()
    stats = engine.statistics()
    assert snapshot.waiting == 2  # unchanged: a snapshot, not a view
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.steps = 0  # type: ignore[misc]
    assert (stats.steps, stats.tokens_generated, stats.decode_tokens) == (5, 8, 6)
    assert stats.prompt_tokens == 32
    assert stats.prefill_tokens_per_second > 0 and stats.decode_tokens_per_second > 0


def test_a_closed_engine_refuses_work(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=1, max_seq_len=64))
    engine.add(SeqId(1), _prompt(4, 1), GREEDY)
    engine.step()
    engine.close()
    with pytest.raises(EngineClosed):
        engine.step()
    with pytest.raises(EngineClosed):
        engine.add(SeqId(2), _prompt(4, 1), GREEDY)
    assert engine.statistics().kv_bytes_allocated == 0


def test_kv_bytes_per_token_turns_a_byte_budget_into_tokens(tiny_model):
    per_token = engine_module.kv_bytes_per_token(tiny_model)
    assert per_token == 2 * 2 * 2 * 32 * 4  # K+V x layers x kv heads x head dim x fp32
    budget = (1 << 20) // per_token  # one MiB of KV
    engine = Engine(tiny_model, EngineConfig(max_seq_len=64, kv_token_budget=budget))
    engine.add(SeqId(1), _prompt(3, 1), GREEDY)
    engine.step()
    stats = engine.statistics()
    assert stats.kv_bytes_allocated == stats.kv_tokens_allocated * per_token


class _FailingModel:
    """Stands in for the model: same config, but every forward raises `error`."""

    def __init__(self, loaded, error: BaseException) -> None:
        self.config = loaded.model.config
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def _failing_forward(loaded, error: BaseException):
    failing = _FailingModel(loaded, error)
    return lambda: failing


def test_out_of_memory_in_a_step_is_a_device_error_and_ends_the_engine(tiny_model, monkeypatch):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=64))
    engine.add(SeqId(1), _prompt(4, 1), GREEDY)
    error = torch.OutOfMemoryError("no room")
    monkeypatch.setattr(engine, "_model", _failing_forward(tiny_model, error))
    with pytest.raises(DeviceOutOfMemory, match="out of memory during a step on cpu"):
        engine.step()
    with pytest.raises(EngineClosed, match=r"failed earlier.*no room"):
        engine.step()
    with pytest.raises(EngineClosed):
        engine.add(SeqId(2), _prompt(4, 1), GREEDY)


def test_other_failures_in_a_step_propagate_and_end_the_engine(tiny_model, monkeypatch):
    engine = Engine(tiny_model, EngineConfig(max_batch_size=2, max_seq_len=64))
    engine.add(SeqId(1), _prompt(4, 1), GREEDY)
    monkeypatch.setattr(engine, "_model", _failing_forward(tiny_model, RuntimeError("kernel bug")))
    with pytest.raises(RuntimeError, match="kernel bug"):
        engine.step()
    with pytest.raises(EngineClosed, match="kernel bug"):
        engine.step()


def test_config_is_checked_against_the_model(tiny_model):
    with pytest.raises(ValueError, match="exceeds the model's context of 4096"):
        Engine(tiny_model, EngineConfig(max_seq_len=5000))
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        EngineConfig(max_batch_size=0)
    assert Engine(tiny_model).max_seq_len == 4096


POOL = [_prompt(n, 200 + n) for n in (1, 2, 9, 33, 70, 130)]


@pytest.fixture(scope="module")
def pool_alone(tiny_model):
    outputs = []
    for prompt in POOL:
        engine = Engine(tiny_model, EngineConfig(max_batch_size=1, max_seq_len=512))
        engine.add(SeqId(0), prompt, attrs.evolve(GREEDY, max_tokens=12))
        tokens = []
        while engine.has_work:
            tokens.extend(t for o in engine.step().outputs for t in o.token_ids)
        outputs.append(tokens)
    return outputs


schedules = st.lists(
    st.tuples(
        st.integers(0, len(POOL) - 1),  # prompt
        st.integers(0, 10),  # step at which the sequence arrives
        st.integers(1, 12),  # max_tokens
        st.one_of(st.none(), st.integers(0, 14)),  # step at which it is cancelled
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(schedule=schedules, batch=st.integers(1, 4), chunk=st.sampled_from([4, 16, 512]))
def test_any_schedule_matches_running_alone(tiny_model, pool_alone, schedule, batch, chunk):
    """Arrivals, departures, cancels and refusals in any order never change an output."""
    config = EngineConfig(max_batch_size=batch, max_seq_len=512, prefill_chunk_tokens=chunk)
    engine = Engine(tiny_model, config)
    arrivals = sorted(enumerate(schedule), key=lambda item: item[1][1])
    results: dict = {i: ([], None) for i in range(len(schedule))}
    step = 0
    while arrivals or engine.has_work:
        while arrivals and arrivals[0][1][1] <= step:
            index, (prompt, _, max_tokens, _) = arrivals[0]
            try:
                engine.add(SeqId(index), POOL[prompt], attrs.evolve(GREEDY, max_tokens=max_tokens))
            except BatchFull:
                break  # try again next step
            arrivals.pop(0)
        for index, (_, _, _, cancel_at) in enumerate(schedule):
            if cancel_at == step:
                engine.cancel(SeqId(index))
        for output in engine.step().outputs:
            tokens, _ = results[output.seq_id]
            results[output.seq_id] = (tokens + list(output.token_ids), output.finish_reason)
        step += 1
    for index, (prompt, _, max_tokens, _) in enumerate(schedule):
        tokens, reason = results[index]
        expected = pool_alone[prompt][:max_tokens]
        if reason == "cancelled":
            assert tokens == expected[: len(tokens)]
        else:
            assert (tokens, reason) == (expected, "length")
    assert engine.statistics().kv_bytes_allocated == 0
