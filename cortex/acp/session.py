"""A conversation with the editor, and where conversations are kept between runs.

A `Session` is its working directory, its model, its tool format and the
OpenAI-shaped message history the model is sent each step. `SessionStore`
writes each session as one JSON file after every turn, so `session/load` can
bring it back (and replay it to the editor) after the editor restarted the agent.

Not for: running a turn (`cortex.acp.turn`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import attrs

from cortex.acp.config import ToolFormat
from cortex.acp.tools import Toolbox

__all__ = ["Session", "SessionStore", "new_session_id"]

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def new_session_id() -> str:
    return uuid.uuid4().hex


@attrs.define(eq=False)
class Session:
    id: str
    cwd: str
    model: str
    tool_format: ToolFormat
    toolbox: Toolbox
    history: list[dict[str, Any]]
    turn: asyncio.Task | None = None  # the prompt turn running now, if any

    def saved(self) -> dict[str, Any]:
        return {
            "cwd": self.cwd,
            "model": self.model,
            "tool_format": self.tool_format,
            "history": self.history,
        }


class SessionStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, session: Session) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(session.id)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(session.saved(), ensure_ascii=False))
        os.replace(partial, path)  # a reader never sees half a file

    def load(self, session_id: str) -> dict[str, Any] | None:
        if not _SESSION_ID.match(session_id):
            return None
        try:
            saved = json.loads(self._path(session_id).read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and isinstance(saved.get("history"), list) else None

    def _path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.json"
