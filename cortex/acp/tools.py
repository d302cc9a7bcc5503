"""The agent's tools, executed by the editor through ACP: files and terminals.

`read_file` → `fs/read_text_file`, `write_file` → `fs/write_text_file`,
`run_command` → `terminal/create`, `wait_for_exit`, `output`, `kill`,
`release`. The editor owns the files and the processes (unsaved buffers are
read as the user sees them; commands run where the user's terminal would), so
the bridge touches nothing on disk itself. Writes and commands are asked for
with `session/request_permission` first; a tool the client did not declare in
its capabilities is not offered to the model.

Each call is shown in the editor as an ACP tool call: `tool_call` (pending),
then `tool_call_update`s to in_progress and completed or failed, with the
file's location, a diff for writes, and the live terminal for commands.

Not for: deciding when to call (`cortex.acp.turn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from acp import (
    Client,
    RequestError,
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    tool_terminal_ref,
    update_tool_call,
)
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    PermissionOption,
    ToolCallLocation,
    ToolCallUpdate,
    ToolKind,
)

__all__ = ["PermissionCancelled", "ToolCall", "Toolbox"]

OUTPUT_BYTE_LIMIT = 64 * 1024  # of a command's output kept for the model
CLEANUP_TIMEOUT = 5.0
_STRING = {"type": "string"}
_LINES = {"type": "integer", "minimum": 1}


@attrs.frozen
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, Any] | None  # None: the model's arguments were not a JSON object


class PermissionCancelled(Exception):
    """The client answered a permission request `cancelled`: the turn is being cancelled."""


@attrs.frozen
class _Tool:
    name: str
    kind: ToolKind
    description: str
    properties: Mapping[str, Any]
    required: tuple[str, ...]
    available: Callable[[ClientCapabilities], bool]

    def spec(self) -> dict[str, Any]:
        parameters = {
            "type": "object",
            "properties": dict(self.properties),
            "required": list(self.required),
        }
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


TOOLS = (
    _Tool(
        "read_file",
        "read",
        "Read a text file of the project (as open in the editor). "
        "`line` (1-based) and `limit` select lines.",
        {"path": _STRING, "line": _LINES, "limit": _LINES},
        ("path",),
        lambda caps: bool(caps.fs and caps.fs.read_text_file),
    ),
    _Tool(
        "write_file",
        "edit",
        "Create or overwrite a text file of the project with `content`.",
        {"path": _STRING, "content": _STRING},
        ("path", "content"),
        lambda caps: bool(caps.fs and caps.fs.write_text_file),
    ),
    _Tool(
        "run_command",
        "execute",
        "Run a shell command in the project directory (or `cwd`) "
        "and return its exit status and output.",
        {"command": _STRING, "cwd": _STRING},
        ("command",),
        lambda caps: bool(caps.terminal),
    ),
)


class Toolbox:
    """One session's tools against its client; remembers "allow always" answers."""

    def __init__(
        self,
        client: Client,
        session_id: str,
        cwd: str,
        caps: ClientCapabilities,
        command_timeout: float,
    ) -> None:
        self._client = client
        self._session_id = session_id
        self._cwd = cwd
        self._tools = [tool for tool in TOOLS if tool.available(caps)]
        self._command_timeout = command_timeout
        self._always_allowed: set[str] = set()

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools]

    def schemas(self) -> dict[str, Mapping[str, Any]]:
        """Each tool's parameter schemas (for reading Qwen-XML calls)."""
        return {tool.name: tool.properties for tool in self._tools}

    async def run(self, call: ToolCall) -> str:
        """Run one call, shown in the editor; returns the text the model is given."""
        tool = next((t for t in self._tools if t.name == call.name), None)
        title = _title(call)
        await self._update(
            start_tool_call(
                call.id,
                title,
                kind=tool.kind if tool else "other",
                status="pending",
                raw_input=call.arguments and dict(call.arguments),
                locations=self._locations(call),
            )
        )
        if tool is None:
            return await self._fail(call, f"there is no tool named {call.name!r}")
        if call.arguments is None:
            return await self._fail(call, f"the arguments of {call.name} are not a JSON object")
        try:
            return await getattr(self, f"_{tool.name}")(call)
        except RequestError as exc:
            return await self._fail(call, f"{call.name} failed: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            return await self._fail(call, f"bad arguments for {call.name}: {exc!r}")

    # -- the tools -------------------------------------------------------------------------

    async def _read_file(self, call: ToolCall) -> str:
        path = self._path(call.arguments["path"])
        await self._update(update_tool_call(call.id, status="in_progress"))
        response = await self._client.read_text_file(
            session_id=self._session_id,
            path=path,
            line=_opt_int(call.arguments.get("line")),
            limit=_opt_int(call.arguments.get("limit")),
        )
        shown = tool_content(text_block(f"```\n{response.content}\n```"))
        await self._update(update_tool_call(call.id, status="completed", content=[shown]))
        return response.content

    async def _write_file(self, call: ToolCall) -> str:
        path, content = self._path(call.arguments["path"]), str(call.arguments["content"])
        old = await self._old_text(path)
        diff = tool_diff_content(path, content, old)
        if not await self._allowed(call, "edit", [diff]):
            return await self._denied(call)
        await self._update(update_tool_call(call.id, status="in_progress", content=[diff]))
        await self._client.write_text_file(session_id=self._session_id, path=path, content=content)
        await self._update(update_tool_call(call.id, status="completed", content=[diff]))
        return f"wrote {len(content)} characters to {path}"

    async def _run_command(self, call: ToolCall) -> str:
        command = str(call.arguments["command"])
        if not await self._allowed(call, "execute", None):
            return await self._denied(call)
        cwd = self._path(call.arguments.get("cwd") or ".")
        terminal = await self._client.create_terminal(
            session_id=self._session_id,
            command="sh",
            args=["-c", command],
            cwd=cwd,
            output_byte_limit=OUTPUT_BYTE_LIMIT,
        )
        ref = [tool_terminal_ref(terminal.terminal_id)]
        await self._update(update_tool_call(call.id, status="in_progress", content=ref))
        try:
            return await self._finish_command(call, terminal.terminal_id, ref)
        finally:
            await _bounded(
                self._client.release_terminal(
                    session_id=self._session_id, terminal_id=terminal.terminal_id
                )
            )

    async def _finish_command(self, call: ToolCall, terminal_id: str, ref: list) -> str:
        ids = {"session_id": self._session_id, "terminal_id": terminal_id}
        killed = ""
        try:
            exit_status = await asyncio.wait_for(
                self._client.wait_for_terminal_exit(**ids), self._command_timeout
            )
        except TimeoutError:
            await self._client.kill_terminal(**ids)
            exit_status = await self._client.wait_for_terminal_exit(**ids)
            killed = f"killed after {self._command_timeout:g} s; "
        except asyncio.CancelledError:
            await _bounded(self._client.kill_terminal(**ids))
            raise
        output = await self._client.terminal_output(**ids)
        status = (
            f"exit code {exit_status.exit_code}"
            if exit_status.exit_code is not None
            else f"signal {exit_status.signal}"
        )
        truncated = " (output truncated)" if output.truncated else ""
        failed = killed or exit_status.exit_code != 0
        await self._update(
            update_tool_call(
                call.id,
                status="failed" if failed else "completed",
                content=ref,
                raw_output={"status": status},
            )
        )
        return f"{killed}{status}{truncated}\n{output.output}"

    # -- helpers ---------------------------------------------------------------------------

    async def _allowed(self, call: ToolCall, kind: ToolKind, content: list | None) -> bool:
        if call.name in self._always_allowed:
            return True
        options = [
            PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
            PermissionOption(
                option_id="allow_always", name=f"Always allow {call.name}", kind="allow_always"
            ),
            PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
        ]
        asked = ToolCallUpdate(
            tool_call_id=call.id,
            title=_title(call),
            kind=kind,
            status="pending",
            raw_input=dict(call.arguments or {}),
            content=content,
            locations=self._locations(call),
        )
        answer = await self._client.request_permission(
            session_id=self._session_id, tool_call=asked, options=options
        )
        outcome = answer.outcome
        if not isinstance(outcome, AllowedOutcome):
            raise PermissionCancelled
        if outcome.option_id == "allow_always":
            self._always_allowed.add(call.name)
        return outcome.option_id in ("allow_once", "allow_always")

    async def _denied(self, call: ToolCall) -> str:
        return await self._fail(call, "the user denied permission for this call")

    async def _fail(self, call: ToolCall, message: str) -> str:
        await self._update(
            update_tool_call(call.id, status="failed", content=[tool_content(text_block(message))])
        )
        return f"Error: {message}"

    async def _old_text(self, path: str) -> str | None:
        try:
            return (
                await self._client.read_text_file(session_id=self._session_id, path=path)
            ).content
        except RequestError:
            return None  # a new file

    async def _update(self, update: Any) -> None:
        await self._client.session_update(session_id=self._session_id, update=update)

    def _path(self, path: Any) -> str:
        if not isinstance(path, str) or not path:
            raise ValueError(f"a path must be a non-empty string, got {path!r}")
        return os.path.normpath(os.path.join(self._cwd, os.path.expanduser(path)))

    def _locations(self, call: ToolCall) -> list[ToolCallLocation] | None:
        path = (call.arguments or {}).get("path")
        if call.name not in ("read_file", "write_file") or not isinstance(path, str) or not path:
            return None
        return [ToolCallLocation(path=self._path(path))]


def _title(call: ToolCall) -> str:
    args = call.arguments or {}
    if call.name == "run_command":
        return f"Run `{args.get('command', '')}`"
    if call.name in ("read_file", "write_file"):
        return f"{'Read' if call.name == 'read_file' else 'Write'} {args.get('path', '')}"
    return call.name


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


async def _bounded(cleanup: Any) -> None:
    """Cleanup that must finish even while the turn is being cancelled, within a bound."""
    with contextlib.suppress(TimeoutError, RequestError, ConnectionError):
        await asyncio.shield(asyncio.wait_for(cleanup, CLEANUP_TIMEOUT))
