"""Exceptions raised by the actor runtime.

    ActorError                      anything the runtime raises on purpose
    ├── ActorStopped                the actor is gone, or went before it replied
    ├── AskTimeout                  (also TimeoutError) no reply within the ask's timeout
    ├── MailboxFull                 tell_nowait found the bounded mailbox full
    ├── NameTaken                   (also ValueError) a sibling already has that name
    ├── RemoteError                 a handler raised while serving an ask; boxed,
    │                               keeps the origin path, type name and traceback
    └── RestartIntensityExceeded    a supervisor gave up; escalates to its parent

This module is for the caller-visible failure vocabulary of `actors`: every
error names the actor (`path`) it is about. It is not for wire envelopes or
HTTP status codes; the applications map these once, at their HTTP edge.
Programming errors (a bad argument, telling a supervisor, which has no
mailbox) raise the builtin `TypeError`/`ValueError` instead.
"""

from __future__ import annotations

import traceback

__all__ = [
    "ActorError",
    "ActorStopped",
    "AskTimeout",
    "MailboxFull",
    "NameTaken",
    "RemoteError",
    "RestartIntensityExceeded",
]


class ActorError(Exception):
    """Base class: `path` is the actor the error is about."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class ActorStopped(ActorError):
    """The actor is stopped (or stopped while a reply was still owed)."""


class AskTimeout(ActorError, TimeoutError):
    """`ask` got no reply within its timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(path, f"no reply within {timeout:g}s")
        self.timeout = timeout


class MailboxFull(ActorError):
    """`tell_nowait` found the mailbox at capacity: this is backpressure."""

    def __init__(self, path: str, capacity: int) -> None:
        super().__init__(path, f"mailbox full ({capacity} messages)")
        self.capacity = capacity


class NameTaken(ActorError, ValueError):
    """A child of that name already exists under the same parent."""


class RemoteError(ActorError):
    """A message handler raised while serving an `ask`; the asker gets this box.

    Like tractor's boxed remote errors, the box keeps where the error came
    from (`path`), what it was (`type_name`) and the handler-side traceback
    text, so it stays readable after crossing a process or a log line. In
    process, `__cause__` is the original exception.
    """

    def __init__(self, path: str, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(path, f"handler raised {type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    @classmethod
    def from_exception(cls, path: str, exc: BaseException) -> RemoteError:
        text = "".join(traceback.format_exception(exc))
        return cls(path, type(exc).__qualname__, str(exc), text)


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
