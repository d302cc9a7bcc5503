"""An editor for `helexa-acp` tests: the ACP client side, over a real subprocess.

`open_editor(root, *args)` spawns the `helexa-acp` console script with the
package's own client connection (`acp.spawn_agent_process`) and an
`Editor` that does what an editor does for an agent: reads and writes files
under `root`, runs terminal commands as real processes, answers permission
requests by a policy the test sets, and records every `session/update`.

Not for: anything but tests (asyncio; the tests call `asyncio.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from acp import RequestError, spawn_agent_process
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    DeniedOutcome,
    FileSystemCapabilities,
    ReadTextFileResponse,
    RequestPermissionResponse,
    TerminalExitStatus,
    TerminalOutputResponse,
    WaitForTerminalExitResponse,
)

SCRIPT = Path(sys.executable).with_name("helexa-acp")
CAPABILITIES = ClientCapabilities(
    fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=True
)


class Editor:
    def __init__(self, root: Path, permission: str = "allow_once") -> None:
        self.root = root
        self.permission = permission  # the option chosen, or "cancelled"
        self.updates: list[Any] = []
        self.update_seen = asyncio.Event()
        self.permission_requests: list[Any] = []
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.terminals: dict[str, asyncio.subprocess.Process] = {}
        self._outputs: dict[str, bytes] = {}

    # -- what the tests read ---------------------------------------------------------------

    def kinds(self) -> list[str]:
        return [u.session_update for u in self.updates]

    def text(self, kind: str = "agent_message_chunk") -> str:
        return "".join(u.content.text for u in self.updates if u.session_update == kind)

    def tool_statuses(self) -> list[tuple[str, str | None]]:
        return [(u.session_update, u.status) for u in self.updates
                if u.session_update in ("tool_call", "tool_call_update")]  # fmt: skip

    async def wait_for_update(self, kind: str) -> None:
        while kind not in self.kinds():
            self.update_seen.clear()
            await asyncio.wait_for(self.update_seen.wait(), 30)

    # -- the client side of ACP ------------------------------------------------------------

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)
        self.update_seen.set()

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        self.permission_requests.append(tool_call)
        if self.permission == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        assert self.permission in [o.option_id for o in options], options
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=self.permission)
        )

    async def read_text_file(self, session_id, path, line=None, limit=None, **kwargs):
        self.reads.append(path)
        try:
            text = self._inside(path).read_text()
        except FileNotFoundError:
            raise RequestError.resource_not_found(path) from None
        lines = text.splitlines(keepends=True)[(line or 1) - 1 :]
        return ReadTextFileResponse(content="".join(lines[:limit] if limit else lines))

    async def write_text_file(self, session_id, path, content, **kwargs):
        self.writes.append(path)
        self._inside(path).write_text(content)

    async def create_terminal(self, session_id, command, args=None, env=None, cwd=None,
                              output_byte_limit=None, **kwargs):  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            command, *(args or []), cwd=self._inside(cwd or str(self.root)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a job of its own: kill takes the shell's children too
        )  # fmt: skip
        terminal_id = f"term-{len(self.terminals)}"
        self.terminals[terminal_id] = process
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def wait_for_terminal_exit(self, session_id, terminal_id, **kwargs):
        process = self.terminals[terminal_id]
        self._outputs[terminal_id] = await process.stdout.read()
        return WaitForTerminalExitResponse(exit_code=await process.wait())

    async def terminal_output(self, session_id, terminal_id, **kwargs):
        process = self.terminals[terminal_id]
        return TerminalOutputResponse(
            output=self._outputs.get(terminal_id, b"").decode(), truncated=False,
            exit_status=TerminalExitStatus(exit_code=process.returncode),
        )  # fmt: skip

    async def kill_terminal(self, session_id, terminal_id, **kwargs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.terminals[terminal_id].pid, signal.SIGKILL)

    async def release_terminal(self, session_id, terminal_id, **kwargs):
        await self.kill_terminal(session_id, terminal_id)
        await self.terminals[terminal_id].wait()

    def _inside(self, path: str) -> Path:
        resolved = Path(path).resolve()
        assert resolved.is_relative_to(self.root.resolve()), f"{path} is outside {self.root}"
        return resolved


@contextlib.asynccontextmanager
async def open_editor(editor: Editor, *args: str, env: dict[str, str] | None = None
                      ) -> AsyncIterator[Any]:  # fmt: skip
    """The agent's connection, `initialize`d."""
    environment = {**os.environ, **(env or {})}
    # Leaving closes the agent's stdin, waits for it to exit, then terminates or kills it.
    spawned = spawn_agent_process(
        editor, str(SCRIPT), *args, env=environment, transport_kwargs={"stderr": None}
    )  # its logs: to ours
    async with spawned as (conn, _):
        await conn.initialize(protocol_version=1, client_capabilities=CAPABILITIES)
        yield conn


class Bridge:
    """An asyncio loop on a thread of its own, holding a `helexa-acp` process and its editor.

    Spawning the agent costs a second or more (importing the ACP schema), so a
    module shares one; each test opens its own session. `enter(cm)` enters an
    async context there (closed when the bridge stops); `call(coro)` runs a
    coroutine there and returns its result.
    """

    def __init__(self) -> None:
        self.editor = Editor(Path("/nonexistent"))
        self.conn: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="acp-bridge")
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Bridge]:
        bridge = cls()
        bridge._thread.start()
        try:
            yield bridge
        finally:
            bridge.call(bridge._stack.aclose())
            bridge._loop.call_soon_threadsafe(bridge._loop.stop)
            bridge._thread.join(10)
            bridge._loop.close()

    def enter(self, cm: Any) -> Any:
        return self.call(self._stack.enter_async_context(cm))

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> Any:
        """Start the agent; its connection, `initialize`d."""
        self.conn = self.enter(open_editor(self.editor, *args, env=env))
        return self.conn

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def fresh_editor(self, root: Path, permission: str = "allow_once") -> Editor:
        """The editor's state reset for a new test (the connection keeps the same object)."""
        self.editor.__init__(root, permission)
        return self.editor
