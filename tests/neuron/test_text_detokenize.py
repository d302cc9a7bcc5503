"""Incremental detokenisation: complete characters only, exact spacing, any chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron.text.detokenize import MAX_PENDING, IncrementalDetokenizer
from neuron.text.tokenizer import ModelTokenizer

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tokenizer(demo_models) -> ModelTokenizer:
    return ModelTokenizer.from_snapshot(demo_models.plain_path)


def _stream(detok: IncrementalDetokenizer, steps) -> list[str]:
    return [detok.push(step) for step in steps] + [detok.finish()]


def _chunks(ids: list[int], cuts: list[int]) -> list[list[int]]:
    bounds = sorted({c % (len(ids) + 1) for c in cuts} | {0, len(ids)})
    return [ids[a:b] for a, b in itertools.pairwise(bounds)]


def _byte_tokens(tokenizer: ModelTokenizer, char: str) -> list[int]:
    """One single-byte token per UTF-8 byte of `char`, via GPT-2's byte-to-unicode map."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    to_char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [tokenizer.token_to_id(to_char[b]) for b in char.encode()]


def test_a_multibyte_character_is_emitted_only_when_complete(tokenizer):
    ids = _byte_tokens(tokenizer, "🎉")
    assert len(ids) == 4
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.push([i]) for i in ids] == ["", "", "", "🎉"]
    assert detok.finish() == ""


def test_text_before_a_split_character_is_not_held_back(tokenizer):
    e_acute, e_grave = _byte_tokens(tokenizer, "é"), _byte_tokens(tokenizer, "è")
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.push(e_acute[:1]) == ""
    # One step ends mid-character: what came before it is complete and goes out.
    assert detok.push([e_acute[1], e_grave[0]]) == "é"
    assert detok.push(e_grave[1:]) == "è"


def test_finish_flushes_a_split_character_as_replacement(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.push(_byte_tokens(tokenizer, "🎉")[:2]) == ""
    assert detok.pending == 2
    assert detok.finish() == "\ufffd"
    assert detok.pending == 0


def test_spacing_matches_a_whole_decode(tokenizer):
    ids = tokenizer.encode("Hello world, how are you?")
    detok = IncrementalDetokenizer(tokenizer)
    deltas = _stream(detok, [[i] for i in ids])
    assert "".join(deltas) == "Hello world, how are you?"
    assert deltas[:-1] == [tokenizer.decode([i]) for i in ids]  # ASCII: one piece per id


def test_special_tokens_follow_the_skip_flag(tokenizer):
    ids = tokenizer.encode("a<|im_end|>b")
    skipped = _stream(IncrementalDetokenizer(tokenizer), [[i] for i in ids])
    kept = _stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=False), [[i] for i in ids])
    assert "".join(skipped) == "ab"
    assert "".join(kept) == "a<|im_end|>b"


def test_context_is_not_emitted(tokenizer):
    context = tokenizer.encode("<think>")
    detok = IncrementalDetokenizer(tokenizer, context=context)
    assert detok.pending == 0
    assert detok.push(tokenizer.encode(" x")) == " x"


def test_an_endless_broken_character_is_flushed_after_max_pending(tokenizer):
    lead = _byte_tokens(tokenizer, "é")[0]  # a lead byte that never completes
    detok = IncrementalDetokenizer(tokenizer)
    emitted = [detok.push([lead]) for _ in range(MAX_PENDING)]
    assert emitted[:-1] == [""] * (MAX_PENDING - 1)
    assert emitted[-1] == "\ufffd" * MAX_PENDING
    assert detok.pending == 0


@PROPERTY
@given(text=st.text(max_size=80), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_deltas_join_to_the_whole_decode(tokenizer, text, cuts):
    ids = tokenizer.encode(text)
    for skip in (True, False):
        detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
        deltas = _stream(detok, _chunks(ids, cuts))
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)
        assert not any(d.endswith("\ufffd") for d in deltas[:-1])


@PROPERTY
@given(
    pieces=st.lists(
        st.text(max_size=12) | st.sampled_from(["<|im_end|>", "<think>", "</tool_call>", " "]),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
)
def test_deltas_join_to_the_whole_decode_with_added_tokens(tokenizer, pieces, cuts):
    ids = tokenizer.encode("".join(pieces))
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    assert "".join(_stream(detok, _chunks(ids, cuts))) == tokenizer.decode(ids)


@PROPERTY
@given(text=st.text(max_size=40), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_byte_by_byte_tokens_never_split_a_character(tokenizer, text, cuts):
    ids = [i for char in text for i in _byte_tokens(tokenizer, char)]
    deltas = _stream(IncrementalDetokenizer(tokenizer), _chunks(ids, cuts))
    assert "".join(deltas) == tokenizer.decode(ids)
    assert "\ufffd" not in "".join(deltas) or "\ufffd" in text
