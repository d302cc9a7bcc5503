"""Stop strings over streamed text: minimal hold-back, first match, any chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuron.text.stop import StopMatcher, StopScan


def _run(stops: list[str], chunks: list[str]) -> tuple[str, str | None]:
    matcher = StopMatcher(stops)
    out, matched = [], None
    for chunk in chunks:
        scan = matcher.push(chunk)
        out.append(scan.text)
        if scan.stopped is not None:
            assert matched is None, "a match is reported once"
            matched = scan.stopped
    out.append(matcher.finish())
    return "".join(out), matched


def _reference(stops: list[str], text: str) -> tuple[str, str | None]:
    """The match that ends first (ties: starts first), on the whole text."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    _, start, stop = min(found, key=lambda f: f[:2])
    return text[:start], stop


def test_passes_text_through_without_stops():
    matcher = StopMatcher([])
    assert matcher.push("hello") == StopScan("hello")
    assert matcher.finish() == ""


def test_holds_back_only_a_possible_stop_prefix():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("abc ST") == StopScan("abc ")
    assert matcher.held == "ST"
    assert matcher.push("O") == StopScan("")
    assert matcher.push("X") == StopScan("STOX")
    assert matcher.held == ""


def test_truncates_at_the_match_and_reports_it():
    matcher = StopMatcher(["\n\n", "END"])
    assert matcher.push("one\ntwo E") == StopScan("one\ntwo ")
    assert matcher.push("ND and more") == StopScan("", "END")
    assert matcher.matched == "END"
    assert matcher.push("ignored") == StopScan("")
    assert matcher.finish() == ""


def test_the_match_completing_first_wins():
    # "bc" completes before the longer "abcd" could.
    assert _run(["abcd", "bc"], ["a", "b", "c", "d"]) == ("a", "bc")
    # Same end: the earlier start wins.
    assert _run(["b", "ab"], ["xab"]) == ("x", "ab")


def test_finish_releases_a_held_prefix():
    matcher = StopMatcher(["</answer>"])
    assert matcher.push("done </ans") == StopScan("done ")
    assert matcher.finish() == "</ans"


def test_overlapping_prefixes_hold_the_longest_candidate():
    matcher = StopMatcher(["aab"])
    assert matcher.push("aaa") == StopScan("a")
    assert matcher.push("b") == StopScan("", "aab")


def test_empty_stop_strings_are_refused():
    with pytest.raises(ValueError):
        StopMatcher(["ok", ""])


alphabet = st.sampled_from("ab\n é🎉")
stop_lists = st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=4)


@settings(max_examples=500, deadline=None)
@given(stops=stop_lists, text=st.text(alphabet, max_size=40), cuts=st.lists(st.integers(0, 40)))
def test_any_chunking_gives_the_whole_text_result(stops, text, cuts):
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert _run(stops, chunks) == _reference(stops, text)


@settings(max_examples=300, deadline=None)
@given(stops=stop_lists, text=st.text(alphabet, max_size=40))
def test_held_text_is_exactly_the_longest_possible_stop_start(stops, text):
    matcher = StopMatcher(stops)
    for end in range(1, len(text) + 1):
        if matcher.push(text[end - 1]).stopped is not None:
            return
        seen = text[:end]
        candidates = [
            seen[i:]
            for i in range(end)
            if any(len(s) > end - i and s.startswith(seen[i:]) for s in stops)
        ]
        assert matcher.held == max(candidates, key=len, default="")
