"""The ACP agent: sessions, model choice, prompt turns and their cancellation.

`HelexaAgent` implements the agent side of ACP for `acp.run_agent`:
`initialize`, `session/new`, `session/load` (sessions kept by
`SessionStore`), `session/set_config_option` (the model picker: a `model`
category option listing the endpoint's `/v1/models`), `session/prompt` and
`session/cancel`. A prompt turn runs as its own asyncio task; cancelling the
session cancels that task, which closes the endpoint's HTTP stream (the fleet
frees the sequence) and kills a command still running, and the prompt answers
`cancelled`.

The package is asyncio-only (its JSON-RPC connection is built on asyncio
streams, futures and tasks), so this process is an asyncio program; nothing in
it is shared with the trio daemons.

Not for: the loop inside a turn (`cortex.acp.turn`), the tools (`cortex.acp.tools`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from acp import (
    PROTOCOL_VERSION,
    Client,
    RequestError,
    start_tool_call,
    text_block,
    tool_content,
    update_agent_message_text,
    update_tool_call,
    update_user_message_text,
)
from acp.schema import (
    AgentCapabilities,
    ClientCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptCapabilities,
    PromptResponse,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SetSessionConfigOptionResponse,
)

from cortex.acp.config import AcpConfig, helexa_version
from cortex.acp.endpoint import Endpoint
from cortex.acp.errors import EndpointError, to_request_error
from cortex.acp.session import Session, SessionStore, new_session_id
from cortex.acp.tools import PermissionCancelled, Toolbox
from cortex.acp.turn import answer_unanswered, run_turn, user_text

__all__ = ["SYSTEM_PROMPT", "HelexaAgent"]

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are helexa, a coding agent working in the user's project at {cwd}. Use the tools to "
    "read files, write files and run commands; paths are relative to the project directory. "
    "Read before you change, keep changes small, and say briefly what you did."
)
MODEL_OPTION, TOOL_FORMAT_OPTION = "model", "tool_format"
TOOL_FORMATS = {
    "auto": "Auto (OpenAI tools; Hermes text if the endpoint answers with it)",
    "openai": "OpenAI tools",
    "hermes": "Hermes <tool_call> text",
}


class HelexaAgent:
    def __init__(self, config: AcpConfig, endpoint: Endpoint) -> None:
        self._config = config
        self._endpoint = endpoint
        self._store = SessionStore(config.state_dir) if config.state_dir else None
        self._client: Client | None = None
        self._caps = ClientCapabilities()
        self._sessions: dict[str, Session] = {}
        self._models: list[str] = []

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        client_info: Implementation | None = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        self._caps = client_capabilities or ClientCapabilities()
        capabilities = AgentCapabilities(
            load_session=self._store is not None,
            prompt_capabilities=PromptCapabilities(embedded_context=True),
        )
        return InitializeResponse(
            protocol_version=min(protocol_version, PROTOCOL_VERSION),
            agent_capabilities=capabilities,
            agent_info=Implementation(name="helexa-acp", title="helexa", version=helexa_version()),
        )

    async def new_session(
        self, cwd: str, mcp_servers: Any = None, **kwargs: Any
    ) -> NewSessionResponse:
        models = await self._list_models()
        session = self._open(
            new_session_id(),
            cwd,
            self._config.model or models[0],
            self._config.tool_format,
            [_system(cwd)],
        )
        return NewSessionResponse(session_id=session.id, config_options=self._options(session))

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
    ) -> LoadSessionResponse:
        saved = self._store.load(session_id) if self._store else None
        if saved is None:
            raise RequestError.resource_not_found(session_id)
        await self._list_models()
        session = self._open(
            session_id,
            cwd,
            saved.get("model") or self._config.model or self._models[0],
            saved.get("tool_format", self._config.tool_format),
            saved["history"],
        )
        await self._replay(session)
        return LoadSessionResponse(config_options=self._options(session))

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **kwargs: Any
    ) -> SetSessionConfigOptionResponse:
        session = self._session(session_id)
        if config_id == MODEL_OPTION and value in self._model_choices(session):
            session.model = str(value)
        elif config_id == TOOL_FORMAT_OPTION and value in TOOL_FORMATS:
            session.tool_format = value  # type: ignore[assignment]
        else:
            raise RequestError.invalid_params({"configId": config_id, "value": value})
        return SetSessionConfigOptionResponse(config_options=self._options(session))

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        session = self._session(session_id)
        if session.turn is not None:
            raise RequestError.invalid_request({"details": "a prompt turn is already running"})
        session.history.append({"role": "user", "content": user_text(prompt)})
        session.turn = turn = asyncio.create_task(self._run_turn(session))
        try:
            await asyncio.wait({turn})
            return PromptResponse(stop_reason=self._outcome(turn))
        except asyncio.CancelledError:  # the connection is closing: the turn goes too
            turn.cancel()
            raise
        finally:
            session.turn = None
            answer_unanswered(session.history)
            if self._store:
                self._store.save(session)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.turn is not None:
            session.turn.cancel()

    # -- inside ----------------------------------------------------------------------------

    async def _run_turn(self, session: Session) -> Any:
        assert self._client is not None
        return await run_turn(
            session,
            self._client,
            self._endpoint,
            self._config.max_steps,
            dict(self._config.extra_body),
        )

    def _outcome(self, turn: asyncio.Task) -> Any:
        if turn.cancelled() or isinstance(turn.exception(), PermissionCancelled):
            return "cancelled"
        if isinstance(error := turn.exception(), EndpointError):
            raise to_request_error(error) from error
        return turn.result()  # re-raises anything else: an internal error for the client

    async def _list_models(self) -> list[str]:
        try:
            self._models = await self._endpoint.list_models()
        except EndpointError as exc:
            if not self._config.model:
                raise to_request_error(exc) from exc
            log.warning("no model list (%s); using the configured model", exc)
            self._models = []
        if self._config.model and self._config.model not in self._models:
            self._models.insert(0, self._config.model)  # an alias the list does not show
        if not self._models:
            raise RequestError.internal_error({"details": "the endpoint serves no models"})
        return self._models

    def _open(
        self, session_id: str, cwd: str, model: str, tool_format: Any, history: list[dict[str, Any]]
    ) -> Session:
        assert self._client is not None
        toolbox = Toolbox(self._client, session_id, cwd, self._caps, self._config.command_timeout)
        session = Session(session_id, cwd, model, tool_format, toolbox, history)
        self._sessions[session_id] = session
        return session

    def _session(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise RequestError.invalid_params(
                {"sessionId": session_id, "details": "no such session"}
            ) from None

    def _model_choices(self, session: Session) -> list[str]:
        models = self._models
        return models if session.model in models else [session.model, *models]

    def _options(self, session: Session) -> list[Any]:
        """The model picker, then the tool format (both per session)."""
        models = [SessionConfigSelectOption(value=m, name=m) for m in self._model_choices(session)]
        formats = [SessionConfigSelectOption(value=k, name=v) for k, v in TOOL_FORMATS.items()]
        return [
            SessionConfigOptionSelect(id=MODEL_OPTION, name="Model", category="model",
                                      type="select", current_value=session.model, options=models),
            SessionConfigOptionSelect(id=TOOL_FORMAT_OPTION, name="Tool format", type="select",
                                      current_value=session.tool_format, options=formats),
        ]  # fmt: skip

    async def _replay(self, session: Session) -> None:
        """The saved conversation as session updates, so the editor can show it again."""
        assert self._client is not None
        results = {m["tool_call_id"]: m["content"] for m in session.history if m["role"] == "tool"}
        for message in session.history:
            for update in _replayed(message, results):
                await self._client.session_update(session_id=session.id, update=update)


def _replayed(message: dict[str, Any], results: dict[str, str]) -> list[Any]:
    if message["role"] == "user":
        return [update_user_message_text(message["content"])]
    if message["role"] != "assistant":
        return []
    updates: list[Any] = []
    if message.get("content"):
        updates.append(update_agent_message_text(message["content"]))
    for call in message.get("tool_calls") or ():
        name, result = call["function"]["name"], results.get(call["id"], "")
        failed = result.startswith("Error:")
        updates += [
            start_tool_call(
                call["id"], name, status="pending", raw_input=call["function"]["arguments"]
            ),
            update_tool_call(
                call["id"],
                status="failed" if failed else "completed",
                content=[tool_content(text_block(result))],
            ),
        ]
    return updates


def _system(cwd: str) -> dict[str, Any]:
    return {"role": "system", "content": SYSTEM_PROMPT.format(cwd=cwd)}
