"""The batched sampler on synthetic logits: each knob, per-row seeds, validation."""

from __future__ import annotations

import math

import pytest

from neuron.worker.errors import InvalidSamplingParams
from neuron.worker.sampler import SamplingParams

torch = pytest.importorskip("torch")
sampler = pytest.importorskip("neuron.worker.sampler")

VOCAB = 8
CPU = torch.device("cpu")


def _sampler(prompt=(0,), **params):
    return sampler.SequenceSampler(SamplingParams(**params), list(prompt), VOCAB, CPU)


def _logits(*rows):
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)


def _draws(logits_row, count, **params):
    """`count` tokens from one sequence sampling the same logits again and again."""
    one = _sampler(**params)
    return [sampler.sample_batch(_logits(logits_row), [one])[0] for _ in range(count)]


ROW = (0.0, 2.0, 1.0, 3.0, -1.0, 0.5, 2.5, 0.0)  # argmax 3, then 6, then 1


def test_greedy_takes_the_argmax():
    assert sampler.sample_batch(_logits(ROW), [_sampler(temperature=0.0)]) == [3]


def test_logit_bias_moves_the_argmax():
    assert sampler.sample_batch(_logits(ROW), [_sampler(temperature=0, logit_bias={4: 5})]) == [4]


def test_rows_keep_their_own_params():
    rows = [_sampler(temperature=0), _sampler(temperature=0, logit_bias={0: 10})]
    assert sampler.sample_batch(_logits(ROW, ROW), rows) == [3, 0]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    seen = _sampler(prompt=[3, 4], temperature=0, repetition_penalty=2.0)
    logits = _logits(ROW)
    # 3 -> 1.5, so 6 (2.5) wins; the negative logit of 4 only falls further.
    assert sampler.sample_batch(logits, [seen]) == [6]
    # The sampled token now counts as seen too: 6 -> 1.25, so 1 (2.0) wins.
    assert sampler.sample_batch(_logits(ROW), [seen]) == [1]


def test_presence_and_frequency_penalties_count_output_only():
    repeat = _sampler(prompt=[6], temperature=0, logit_bias={3: 2.0}, frequency_penalty=1.0)
    picks = [sampler.sample_batch(_logits(ROW), [repeat])[0] for _ in range(4)]
    # 3 starts at 5.0 and loses 1.0 per use; the prompt's 6 is not penalised (2.5).
    assert picks == [3, 3, 3, 6]
    present = _sampler(temperature=0, presence_penalty=2.0)
    picks = [sampler.sample_batch(_logits(ROW), [present])[0] for _ in range(3)]
    assert picks == [3, 6, 1]


@pytest.mark.parametrize("knob", [{"top_k": 1}, {"top_p": 0.01}, {"min_p": 1.0}])
def test_truncation_to_one_candidate_is_the_argmax(knob):
    assert set(_draws(ROW, 50, temperature=1.5, seed=3, **knob)) == {3}


def test_top_k_and_top_p_limit_the_candidates():
    assert set(_draws(ROW, 300, temperature=1.0, seed=1, top_k=3)) == {3, 6, 1}
    logits = (math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05), -50, -50, -50, -50)
    assert set(_draws(logits, 300, temperature=1.0, seed=1, top_p=0.7)) == {0, 1}


def test_temperature_sampling_follows_the_distribution():
    probs = [0.5, 0.3, 0.2]
    logits = [math.log(p) for p in probs] + [-100.0] * (VOCAB - 3)
    draws = _draws(logits, 3000, temperature=1.0, seed=11)
    for token, p in enumerate(probs):
        assert draws.count(token) / len(draws) == pytest.approx(p, abs=0.03)


def test_a_seed_reproduces_its_draws_whatever_the_batch():
    alone = _draws(ROW, 20, temperature=1.0, seed=5)
    mine, other = _sampler(temperature=1.0, seed=5), _sampler(temperature=0.7, seed=9)
    greedy = _sampler(temperature=0)
    batched = [
        sampler.sample_batch(_logits(ROW, ROW, ROW), [other, greedy, mine])[2] for _ in range(20)
    ]
    assert batched == alone
    assert _draws(ROW, 20, temperature=1.0, seed=6) != alone


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {1: 101}}, "logit_bias values"),
        ({"logit_bias": {-1: 1}}, "logit_bias token ids"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_params_are_refused(params, message):
    with pytest.raises(InvalidSamplingParams, match=message):
        SamplingParams(**params)


def test_bias_outside_the_vocabulary_is_refused():
    with pytest.raises(InvalidSamplingParams, match="outside the vocabulary"):
        _sampler(logit_bias={VOCAB: 1.0})


def test_params_are_hashable_values():
    a = SamplingParams(logit_bias={2: 1.0, 1: -1.0}, stop_token_ids=[3, 3])
    b = SamplingParams(logit_bias=[(1, -1.0), (2, 1.0)], stop_token_ids={3})
    assert a == b
    assert hash(a) == hash(b)
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=1e-7).greedy


def test_from_wire_maps_a_generate_jobs_params():
    worker = pytest.importorskip("protocol.worker")
    wire = worker.SamplingParams(
        max_tokens=5, temperature=0.0, top_k=None, logit_bias={3: 1.5}, stop_token_ids=(7,)
    )
    expected = SamplingParams(
        max_tokens=5, temperature=0.0, top_k=0, logit_bias={3: 1.5}, stop_token_ids={7}
    )
    assert SamplingParams.from_wire(wire) == expected
    with pytest.raises(InvalidSamplingParams, match="top_p"):
        SamplingParams.from_wire(worker.SamplingParams(max_tokens=5, top_p=0.0))
