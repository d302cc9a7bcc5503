"""Supervision policy values: which children restart, how often, how soon.

This module is for the pure, frozen settings a supervisor applies —
`Restart` (permanent / transient / temporary), `RestartIntensity` (at most N
restarts within T seconds) and `Backoff` (exponential delay between
restarts) — and the arithmetic on them, kept free of trio so it is trivial to
test. It is not for running or restarting anything; see `_supervisor`.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

__all__ = ["Backoff", "Restart", "RestartIntensity"]


class Restart(enum.Enum):
    """When a supervisor restarts a child that ended (Erlang's restart types)."""

    PERMANENT = "permanent"  # always, even after a normal exit
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never; the child is removed when it ends

    def wants_restart(self, error: BaseException | None) -> bool:
        if self is Restart.PERMANENT:
            return True
        return self is Restart.TRANSIENT and error is not None


@attrs.frozen
class RestartIntensity:
    """A supervisor fails if it would need more than `max_restarts` within `window` seconds."""

    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    window: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))

    def allows(self, history: deque[float], now: float) -> bool:
        """Record a restart at trio time `now` in `history`; False if that is one too many."""
        history.append(now)
        while history and history[0] <= now - self.window:
            history.popleft()
        return len(history) <= self.max_restarts


@attrs.frozen
class Backoff:
    """Delay before restart n (0-based): ``min(initial * factor**n, maximum)`` seconds.

    The streak n counts consecutive restarts of one child; an incarnation that
    stayed up `reset_after` seconds or longer starts the streak again at 0.
    """

    initial: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    maximum: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    reset_after: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))

    def delay(self, streak: int) -> float:
        if self.initial == 0:
            return 0.0
        # Cap the exponent: a long streak must not overflow the float.
        return min(self.initial * self.factor ** min(streak, 64), self.maximum)
