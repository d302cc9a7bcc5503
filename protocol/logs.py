"""Log formatting shared by both daemons: plain lines or one JSON object per line.

`configure_logging("json", "info")` makes every record a JSON object
(`ts`, `level`, `logger`, `msg`, plus `request_id` and other `extra=` fields)
for journald and log collectors; "plain" is a readable single line that
ends in ` request_id=…` when the record belongs to a request.

The request id comes from a context variable: each daemon calls
`set_request_id` when it starts handling a request, and the handler's
`RequestIdFilter` stamps it on every record logged in that context — and in
the tasks started from it, which inherit a copy (trio's `start_soon` and
`start` copy the starting task's context). So one `x-request-id` can be
followed through the gateway's and the node's logs. This lives in `protocol`
because it is the one package both daemons import; it has no dependency
beyond the standard library.

Nothing a client sent can forge a line or drive an operator's terminal: both
formats escape every non-printable character (`printable`: newlines, `\\r`,
ANSI escapes, C1 controls, Unicode line separators and bidi overrides) in the
message and the fields, and a plain record's traceback keeps its lines but
indents every one, so no line of it can pass for a record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Literal

__all__ = [
    "JsonFormatter",
    "PlainFormatter",
    "RequestIdFilter",
    "configure_logging",
    "printable",
    "set_request_id",
]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "helexa_request_id", default=None
)


def printable(text: str) -> str:
    """`text` with each non-printable character escaped as Python writes it (`\\n`,
    `\\x1b`, `\\u2028`): one line, inert in a terminal, still readable."""
    if text.isprintable():
        return text  # the common case, checked in C
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Tag what is logged from now on in this context (and tasks it starts)."""
    return _request_id.set(request_id)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to a record from the context, unless `extra=` gave one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = _request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": printable(record.getMessage()),
        }
        entry.update({k: printable(v) if isinstance(v, str) else v
                      for k, v in record.__dict__.items() if k not in _STANDARD})  # fmt: skip
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message request_id=…` (the id only when there is one)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return printable(line if request_id is None else f"{line} request_id={request_id}")

    def formatException(self, ei) -> str:
        lines = super().formatException(ei).split("\n")
        return "\n".join("    " + printable(line) for line in lines)


def configure_logging(fmt: Literal["plain", "json"] = "plain", level: str = "info") -> None:
    """Route the root logger to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Neither format prints a record's source line, thread or process: not looking them
    # up for every record is the logging HOWTO's "Optimization" (a gateway logs a line
    # per request).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # httpx logs every request it sends at INFO ("HTTP Request: POST …"): one more line
    # per relayed request and per poll, saying less than the daemons' own lines. At
    # `debug` they come back.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
