"""Supervision policy arithmetic: backoff delays and the restart-intensity window."""

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

import actors
from actors import Backoff, Restart, RestartIntensity

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(
    initial=st.floats(min_value=0, max_value=100),
    extra=seconds,
    factor=st.floats(min_value=1, max_value=10),
    streak=st.integers(min_value=0, max_value=10_000),
)
def test_backoff_grows_and_never_exceeds_its_maximum(initial, extra, factor, streak):
    backoff = Backoff(initial=initial, maximum=initial + extra, factor=factor)
    assert 0 <= backoff.delay(streak) <= backoff.maximum
    assert backoff.delay(streak) <= backoff.delay(streak + 1)


def test_backoff_sequence():
    backoff = Backoff(initial=0.5, factor=3, maximum=10)
    assert [backoff.delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10, 10]


@pytest.mark.parametrize(
    "bad", [{"initial": -1}, {"factor": 0.5}, {"maximum": -1}, {"reset_after": -1}]
)
def test_backoff_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


@given(
    max_restarts=st.integers(min_value=0, max_value=20),
    window=st.floats(min_value=0.001, max_value=1000),
    gaps=st.lists(st.floats(min_value=0, max_value=100), max_size=60),
)
def test_intensity_allows_exactly_max_restarts_per_window(max_restarts, window, gaps):
    limit = RestartIntensity(max_restarts=max_restarts, window=window)
    history: deque[float] = deque()
    now, times = 0.0, []
    for gap in gaps:
        now += gap
        times.append(now)
        recent = [t for t in times if t > now - window]
        assert limit.allows(history, now) == (len(recent) <= max_restarts)


def test_intensity_rejects_nonsense():
    with pytest.raises(ValueError):
        RestartIntensity(max_restarts=-1)
    with pytest.raises(ValueError):
        RestartIntensity(window=0)


@pytest.mark.parametrize(
    ("restart", "after_crash", "after_exit"),
    [
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, True, False),
        (Restart.TEMPORARY, False, False),
    ],
)
def test_restart_types_decide_on_crash_and_exit(restart, after_crash, after_exit):
    assert restart.wants_restart(RuntimeError()) is after_crash
    assert restart.wants_restart(None) is after_exit


async def test_root_name_must_be_a_plain_name():
    for bad in ["", "a/b"]:
        with pytest.raises(ValueError):
            async with actors.open_root(bad):
                pass  # pragma: no cover
