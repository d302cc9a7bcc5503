"""helexa-bench's exceptions.

    BenchError
     ├── TargetUnreachable   a target's build or model list could not be read
     └── RequestFailed       one benchmark request gave no measurement (`status`, if any)
          └── Shed           429 or 503: the target refused under load (counted, not failed)

httpx's errors are mapped to these once, in `cortex.benchd.target`.
"""

from __future__ import annotations

__all__ = ["BenchError", "RequestFailed", "Shed", "TargetUnreachable"]


class BenchError(Exception):
    """Something the benchmark could not measure."""


class TargetUnreachable(BenchError):
    """The target did not answer its build or model list."""


class RequestFailed(BenchError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Shed(RequestFailed):
    """The target turned the request away under load (429 or 503)."""
