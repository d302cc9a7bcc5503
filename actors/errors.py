"""Exceptions raised by the actor runtime.

    ActorError                      anything the runtime raises on purpose
    ├── ActorStopped                the actor (or the supervisor asked to start one) is gone
    ├── NameTaken                   (also ValueError) a sibling already has that name
    └── RestartIntensityExceeded    a supervisor gave up; escalates to its parent

This module is for the caller-visible failure vocabulary of `actors`: every
error names the actor (`path`) it is about. It is not for wire envelopes or
HTTP status codes; the applications map these once, at their HTTP edge.
Programming errors (a bad argument, a factory that builds no `Actor`) raise
the builtin `TypeError`/`ValueError` instead.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorStopped",
    "NameTaken",
    "RestartIntensityExceeded",
]


class ActorError(Exception):
    """Base class: `path` is the actor the error is about."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class ActorStopped(ActorError):
    """The actor is stopped, or its parent is stopping and takes no new children."""


class NameTaken(ActorError, ValueError):
    """A child of that name already exists under the same parent."""


class RestartIntensityExceeded(ActorError):
    """More than `max_restarts` restarts within `window` seconds: the supervisor failed.

    `__cause__` is the child failure that tipped it over.
    """

    def __init__(self, path: str, max_restarts: int, window: float, child: str) -> None:
        super().__init__(
            path, f"more than {max_restarts} restarts within {window:g}s (last: {child})"
        )
        self.max_restarts = max_restarts
        self.window = window
        self.child = child
