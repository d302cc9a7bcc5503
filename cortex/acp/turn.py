"""One prompt turn: the agent loop between the model and the editor's tools.

Ask the model (streaming its thoughts and words to the editor as they come),
run the tool calls it made through the editor, give it the results, and again,
until it answers without a call (`end_turn`), runs out of tokens
(`max_tokens`) or reaches the step limit (`max_turn_requests`).

Tool formats: `openai` sends `tools` and reads structured `tool_calls`;
`hermes` writes the tools into the system prompt and reads `<tool_call>`
blocks out of the text (`cortex.acp.hermes`); `auto` sends `tools` but also
watches the text, and a `<tool_call>` block there switches the session to
`hermes` (the endpoint did not parse the call, so it will not render tool
results either).

Not for: the session's lifetime and cancellation (`cortex.acp.agent`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import attrs
from acp import Client, update_agent_message_text, update_agent_thought_text
from acp.schema import StopReason

from cortex.acp import hermes
from cortex.acp.endpoint import Endpoint, Finished, ReasoningDelta, TextDelta, ToolCallDelta
from cortex.acp.session import Session
from cortex.acp.tools import ToolCall

__all__ = ["run_turn", "user_text"]

log = logging.getLogger(__name__)


@attrs.define
class _Reply:
    """What the model said in one step, gathered while it streams."""

    text: str = ""
    calls: list[ToolCall] = attrs.field(factory=list)
    finish: str | None = None
    saw_hermes: bool = False

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.calls:
            message["tool_calls"] = [_wire_call(call) for call in self.calls]
        return message


async def run_turn(
    session: Session, client: Client, endpoint: Endpoint, max_steps: int, extra_body: dict[str, Any]
) -> StopReason:
    """Run the loop for the user message already appended to `session.history`."""
    for _ in range(max_steps):
        reply = _Reply()
        try:
            await _ask(session, client, endpoint, extra_body, reply)
        finally:
            if reply.text or reply.calls:  # also what a cancelled step had said so far
                session.history.append(reply.message())
        if reply.saw_hermes and session.tool_format == "auto":
            log.info("tool calls came back as text: switching session=%s to hermes", session.id)
            session.tool_format = "hermes"
        if not reply.calls:
            return "max_tokens" if reply.finish == "length" else "end_turn"
        for call in reply.calls:
            result = await session.toolbox.run(call)
            session.history.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return "max_turn_requests"


def answer_unanswered(history: list[dict[str, Any]]) -> None:
    """Give each call a cancelled turn left without a result one, so the history stays valid."""
    answered = {m.get("tool_call_id") for m in history if m["role"] == "tool"}
    calls = [c for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or ()]
    for call in calls:
        if call["id"] not in answered:
            history.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": "Error: the user cancelled this call",
                }
            )


async def _ask(session: Session, client: Client, endpoint: Endpoint, extra_body: dict[str, Any],
               reply: _Reply) -> None:  # fmt: skip
    step = _Step(session, client, reply)
    async with contextlib.aclosing(endpoint.stream_chat(_body(session, extra_body))) as events:
        async for event in events:
            await step.take(event)
    await step.finish()


def _body(session: Session, extra_body: dict[str, Any]) -> dict[str, Any]:
    specs = session.toolbox.specs()
    hermes_mode = session.tool_format == "hermes" and specs
    messages = hermes.render_messages(session.history, specs) if hermes_mode else session.history
    body: dict[str, Any] = {**extra_body, "model": session.model, "messages": messages}
    if specs and not hermes_mode:
        body["tools"] = specs
    return body


class _Step:
    """One streamed reply: shown to the editor as it comes, its calls gathered."""

    def __init__(self, session: Session, client: Client, reply: _Reply) -> None:
        self._session, self._client, self._reply = session, client, reply
        self._splitter = hermes.CallSplitter() if session.tool_format != "openai" else None
        self._structured: dict[int, dict[str, str]] = {}
        self._blocks: list[hermes.CallBlock] = []

    async def take(self, event: Any) -> None:
        if isinstance(event, ReasoningDelta):
            await self._update(update_agent_thought_text(event.text))
        elif isinstance(event, TextDelta):
            pieces = self._splitter.feed(event.text) if self._splitter else [event.text]
            for piece in pieces:
                if isinstance(piece, hermes.CallBlock):
                    self._blocks.append(piece)
                else:
                    await self._say(piece)
        elif isinstance(event, ToolCallDelta):
            _gather(self._structured, event)
        elif isinstance(event, Finished):
            self._reply.finish = event.reason

    async def finish(self) -> None:
        if self._splitter and (rest := self._splitter.finish()):
            await self._say(rest)
        calls = [_structured_call(parts) for _, parts in sorted(self._structured.items())]
        self._reply.calls += calls
        for block in self._blocks:
            parsed = hermes.parse_call(block.body, self._session.toolbox.schemas())
            if parsed is None:  # not a call after all: show it as the model wrote it
                await self._say(f"{hermes.OPEN}{block.body}{hermes.CLOSE}")
                continue
            self._reply.saw_hermes = True
            self._reply.calls.append(ToolCall(_new_call_id(), parsed.name, parsed.arguments))

    async def _say(self, text: str) -> None:
        self._reply.text += text
        await self._update(update_agent_message_text(text))

    async def _update(self, update: Any) -> None:
        await self._client.session_update(session_id=self._session.id, update=update)


def _gather(structured: dict[int, dict[str, str]], delta: ToolCallDelta) -> None:
    parts = structured.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
    parts["id"] = delta.id or parts["id"]
    parts["name"] += delta.name or ""
    parts["arguments"] += delta.arguments


def _structured_call(parts: dict[str, str]) -> ToolCall:
    try:
        arguments = json.loads(parts["arguments"] or "{}")
    except ValueError:
        arguments = None
    return ToolCall(
        parts["id"] or _new_call_id(),
        parts["name"],
        arguments if isinstance(arguments, dict) else None,
    )


def _wire_call(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(dict(call.arguments) if call.arguments is not None else {})
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def user_text(blocks: Sequence[Any]) -> str:
    """An ACP prompt's content blocks as one user message."""
    parts = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource_link":
            parts.append(f"[{block.name}]({block.uri})")
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(f'<file uri="{block.resource.uri}">\n{block.resource.text}\n</file>')
        else:
            parts.append(f"[a {kind} attachment, which this agent cannot read]")
    return "\n\n".join(parts)
