"""Log formatting shared by both daemons: plain lines or one JSON object per line.

`configure_logging("json", "info")` makes every record a JSON object
(`ts`, `level`, `logger`, `msg`, plus `request_id` and other `extra=` fields)
for journald and log collectors; "plain" is a readable single line. This
lives in `protocol` because it is the one package both daemons import; it
has no dependency beyond the standard library.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(fmt: Literal["plain", "json"] = "plain", level: str = "info") -> None:
    """Route the root logger to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
