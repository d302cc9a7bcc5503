"""`helexa-acp` as an editor drives it: a real subprocess over stdio, the package's
client side, and a scripted OpenAI-compatible endpoint for deterministic loops.

Streaming (thoughts, words), the tool loop through the client (read, write,
terminal), permissions (allowed, denied, cancelled), the step limit, the Hermes
fallback (forced and detected), endpoint errors as ACP errors, cancel closing
the upstream stream, the model picker, and session/load after a restart.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from acp import RequestError, text_block
from editor import CAPABILITIES, Bridge
from scripted_endpoint import MODELS, Reply, ScriptedEndpoint, text, tool_call

from cortex.acp.endpoint import Endpoint
from cortex.acp.errors import EndpointUnreachable
from tests.neuron.daemon_harness import KEEP_ACROSS_TESTS

pytestmark = [pytest.mark.slow]

MAX_STEPS = 3


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("acp-state")


def start(bridge: Bridge, state_dir: Path, *flags: str, shared=True) -> ScriptedEndpoint:
    """The scripted endpoint and the agent over it (shared: by a module's tests)."""
    endpoint = bridge.enter(ScriptedEndpoint.running())
    env = {KEEP_ACROSS_TESTS: "1"} if shared else None
    bridge.spawn("--endpoint", endpoint.url, "--state-dir", str(state_dir), *flags, env=env)
    return endpoint


@pytest.fixture(scope="module")
def agent(state_dir):
    """The agent with its default tool format (auto) and a step limit of 3."""
    with Bridge.running() as bridge:
        endpoint = start(bridge, state_dir, "--max-steps", str(MAX_STEPS))
        yield bridge, endpoint


def prompt(agent, tmp_path: Path, replies, *, permission="allow_once",
           ask="What is in notes.txt?", tool_format=None):  # fmt: skip
    """A new session and one prompt: (editor, endpoint, stop reason)."""
    bridge, endpoint = agent
    (tmp_path / "notes.txt").write_text("alpha\nbeta\n")
    editor = bridge.fresh_editor(tmp_path, permission)
    endpoint.script(replies)

    async def main():
        session = await bridge.conn.new_session(cwd=str(tmp_path))
        if tool_format:
            await bridge.conn.set_config_option(config_id="tool_format", value=tool_format,
                                                session_id=session.session_id)  # fmt: skip
        return await bridge.conn.prompt(session_id=session.session_id, prompt=[text_block(ask)])

    return editor, endpoint, bridge.call(main()).stop_reason


def tool_messages(request) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def test_initialize_advertises_load_and_the_model_picker_lists_the_endpoint(agent, tmp_path):
    bridge, endpoint = agent
    endpoint.script([text("hi")])
    bridge.fresh_editor(tmp_path)

    async def main():
        info = await bridge.conn.initialize(protocol_version=1, client_capabilities=CAPABILITIES)
        assert info.agent_capabilities.load_session is True
        assert info.agent_capabilities.prompt_capabilities.embedded_context is True
        assert info.agent_info.name == "helexa-acp"
        session = await bridge.conn.new_session(cwd=str(tmp_path))
        option, formats = session.config_options
        assert (option.id, option.category, option.current_value) == ("model", "model", MODELS[0])
        assert [o.value for o in option.options] == list(MODELS)
        assert (formats.id, formats.current_value) == ("tool_format", "auto")
        assert [o.value for o in formats.options] == ["auto", "openai", "hermes"]
        set_model = bridge.conn.set_config_option
        changed = await set_model(config_id="model", session_id=session.session_id, value=MODELS[1])
        assert changed.config_options[0].current_value == MODELS[1]
        with pytest.raises(RequestError):
            await set_model(config_id="model", session_id=session.session_id, value="not/served")
        await bridge.conn.prompt(session_id=session.session_id, prompt=[text_block("hi")])

    bridge.call(main())
    assert endpoint.requests[0]["model"] == MODELS[1]


def test_a_prompt_streams_thoughts_and_words_then_ends_the_turn(agent, tmp_path):
    reply = Reply([{"reasoning_content": "Think"}, {"reasoning_content": "ing."},
                   {"content": "Hello"}, {"content": ", world."}, {"finish": "stop"}])  # fmt: skip
    editor, endpoint, stop = prompt(agent, tmp_path, [reply])
    assert stop == "end_turn"
    assert editor.kinds() == ["agent_thought_chunk"] * 2 + ["agent_message_chunk"] * 2
    assert editor.text("agent_thought_chunk") == "Thinking."
    assert editor.text() == "Hello, world."
    [request] = endpoint.requests
    assert request["stream"] is True and request["model"] == MODELS[0]
    tools = [t["function"]["name"] for t in request["tools"]]
    assert tools == ["read_file", "write_file", "run_command"]
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][1]["content"] == "What is in notes.txt?"


def test_a_tool_call_reads_through_the_client_and_the_result_goes_back(agent, tmp_path):
    replies = [tool_call("read_file", {"path": "notes.txt"}), text("It says alpha, beta.")]
    editor, endpoint, stop = prompt(agent, tmp_path, replies)
    assert stop == "end_turn"
    assert editor.reads == [str(tmp_path / "notes.txt")]
    assert editor.tool_statuses() == [("tool_call", "pending"), ("tool_call_update", "in_progress"),
                                      ("tool_call_update", "completed")]  # fmt: skip
    assert editor.permission_requests == []  # reads are not asked for
    second = endpoint.requests[1]["messages"]
    assert second[2]["tool_calls"][0]["function"] == {
        "name": "read_file",
        "arguments": '{"path": "notes.txt"}',
    }
    assert second[3] == {"role": "tool", "tool_call_id": "call_1", "content": "alpha\nbeta\n"}
    assert editor.text() == "On it.It says alpha, beta."


@pytest.mark.parametrize("permission", ["allow_once", "reject_once"])
def test_a_write_asks_permission_first(agent, tmp_path, permission):
    replies = [tool_call("write_file", {"path": "new.txt", "content": "fresh"}), text("Done.")]
    editor, endpoint, stop = prompt(agent, tmp_path, replies, permission=permission)
    assert stop == "end_turn"
    [asked] = editor.permission_requests
    assert asked.kind == "edit" and asked.content[0].type == "diff"
    assert asked.content[0].new_text == "fresh" and asked.content[0].old_text is None
    [result] = tool_messages(endpoint.requests[1])
    if permission == "allow_once":
        assert (tmp_path / "new.txt").read_text() == "fresh"
        assert editor.tool_statuses()[-1] == ("tool_call_update", "completed")
        assert result["content"].startswith("wrote 5 characters")
    else:
        assert not (tmp_path / "new.txt").exists() and editor.writes == []
        assert editor.tool_statuses()[-1] == ("tool_call_update", "failed")
        assert "denied" in result["content"]


def test_a_command_runs_in_a_client_terminal(agent, tmp_path):
    replies = [tool_call("run_command", {"command": "cat notes.txt; exit 3"}), text("Ran it.")]
    editor, endpoint, stop = prompt(agent, tmp_path, replies)
    assert stop == "end_turn"
    [asked] = editor.permission_requests
    assert asked.kind == "execute" and asked.title == "Run `cat notes.txt; exit 3`"
    assert list(editor.terminals) == ["term-0"]
    [result] = tool_messages(endpoint.requests[1])
    assert result["content"] == "exit code 3\nalpha\nbeta\n"
    updates = [u for u in editor.updates if u.session_update == "tool_call_update"]
    assert updates[0].content[0].terminal_id == "term-0"
    assert updates[-1].status == "failed"  # a non-zero exit


def test_a_cancelled_permission_request_cancels_the_turn(agent, tmp_path):
    replies = [tool_call("run_command", {"command": "true"})]
    editor, endpoint, stop = prompt(agent, tmp_path, replies, permission="cancelled")
    assert stop == "cancelled" and editor.terminals == {}
    assert len(endpoint.requests) == 1


def test_the_step_limit_ends_a_turn_that_keeps_calling(agent, tmp_path):
    calls = [tool_call("read_file", {"path": "notes.txt"}, call_id=f"call_{i}") for i in range(4)]
    editor, endpoint, stop = prompt(agent, tmp_path, calls)
    assert stop == "max_turn_requests"
    assert len(endpoint.requests) == MAX_STEPS and len(editor.reads) == MAX_STEPS


def test_a_length_cut_ends_with_max_tokens(agent, tmp_path):
    assert prompt(agent, tmp_path, [text("Trunc", finish="length")])[2] == "max_tokens"


def test_arguments_that_are_not_json_fail_the_call_not_the_turn(agent, tmp_path):
    bad = Reply([{"tool_calls": [{"index": 0, "id": "call_x", "type": "function",
                                  "function": {"name": "read_file", "arguments": "{oops"}}]},
                 {"finish": "tool_calls"}])  # fmt: skip
    editor, endpoint, stop = prompt(agent, tmp_path, [bad, text("Sorry.")])
    assert stop == "end_turn" and editor.reads == []
    [result] = tool_messages(endpoint.requests[1])
    assert "not a JSON object" in result["content"]
    call = endpoint.requests[1]["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {}


HERMES_CALL = '<tool_call>\n{"name": "read_file", "arguments": {"path": "notes.txt"}}\n</tool_call>'


def test_hermes_mode_writes_tools_into_the_prompt_and_reads_calls_from_text(agent, tmp_path):
    pieces = ["Let me look. ", *HERMES_CALL[:30], HERMES_CALL[30:]]  # the open marker split up
    replies = [Reply([{"content": p} for p in pieces] + [{"finish": "stop"}]), text("Read it.")]
    editor, endpoint, stop = prompt(agent, tmp_path, replies, tool_format="hermes")
    assert stop == "end_turn" and editor.reads == [str(tmp_path / "notes.txt")]
    assert editor.text() == "Let me look. Read it."  # no marker ever shown as text
    first, second = endpoint.requests
    assert "tools" not in first and "# Tools" in first["messages"][0]["content"]
    assert '"name": "read_file"' in first["messages"][0]["content"]
    assistant, response = second["messages"][2:4]
    assert assistant["role"] == "assistant" and "<tool_call>\n{" in assistant["content"]
    assert response == {
        "role": "user",
        "content": "<tool_response>\nalpha\nbeta\n\n</tool_response>",
    }


def test_auto_switches_to_hermes_when_calls_come_back_as_text(agent, tmp_path):
    replies = [Reply([{"content": HERMES_CALL}, {"finish": "stop"}]), text("Read it.")]
    editor, endpoint, stop = prompt(agent, tmp_path, replies)
    assert stop == "end_turn" and len(editor.reads) == 1
    first, second = endpoint.requests
    assert "tools" in first  # OpenAI first
    assert "tools" not in second and "<tool_response>" in second["messages"][-1]["content"]


def test_the_endpoints_error_reaches_the_editor_with_its_message(agent, tmp_path):
    refused = Reply(status=404, body={"error": {"message": "model 'x' is not served",
                                                "type": "invalid_request_error",
                                                "code": "model_not_found"}})  # fmt: skip
    with pytest.raises(RequestError) as caught:
        prompt(agent, tmp_path, [refused])
    assert str(caught.value) == "model 'x' is not served"
    assert caught.value.data == {"status": 404, "type": "invalid_request_error",
                                 "code": "model_not_found"}  # fmt: skip


def test_an_in_band_stream_error_reaches_the_editor(agent, tmp_path):
    broken = Reply([{"content": "Hel"}, {"error": {"message": "node alpha stream failed",
                                                   "code": "upstream_stream_error"}}])  # fmt: skip
    with pytest.raises(RequestError, match="node alpha stream failed"):
        prompt(agent, tmp_path, [broken])


def test_cancel_mid_stream_closes_the_upstream_stream(agent, tmp_path):
    bridge, endpoint = agent
    editor = bridge.fresh_editor(tmp_path)
    endpoint.script([Reply([{"content": "Writing a long answer"}], hang=True), text("Again.")])

    async def main():
        session = await bridge.conn.new_session(cwd=str(tmp_path))
        ask = bridge.conn.prompt(session_id=session.session_id, prompt=[text_block("Go")])
        running = asyncio.ensure_future(ask)
        await editor.wait_for_update("agent_message_chunk")
        await bridge.conn.cancel(session_id=session.session_id)
        assert (await running).stop_reason == "cancelled"
        await asyncio.wait_for(endpoint.disconnected.wait(), 10)
        again = await bridge.conn.prompt(session_id=session.session_id,
                                         prompt=[text_block("Go on")])  # fmt: skip
        assert again.stop_reason == "end_turn"

    bridge.call(main())
    turns = [(m["role"], m["content"]) for m in endpoint.requests[1]["messages"][1:]]
    assert turns == [("user", "Go"), ("assistant", "Writing a long answer"), ("user", "Go on")]


def test_cancel_while_a_command_runs_kills_it(agent, tmp_path):
    bridge, endpoint = agent
    editor = bridge.fresh_editor(tmp_path)
    endpoint.script([tool_call("run_command", {"command": "sleep 60"})])

    async def main():
        session = await bridge.conn.new_session(cwd=str(tmp_path))
        ask = bridge.conn.prompt(session_id=session.session_id, prompt=[text_block("Wait")])
        running = asyncio.ensure_future(ask)
        await editor.wait_for_update("tool_call_update")  # in progress, in its terminal
        await bridge.conn.cancel(session_id=session.session_id)
        stop = (await running).stop_reason
        return stop, await asyncio.wait_for(editor.terminals["term-0"].wait(), 10)

    stop, status = bridge.call(main())
    assert stop == "cancelled" and status == -9  # killed through terminal/kill


def test_a_session_is_loaded_and_replayed_after_a_restart(agent, tmp_path, state_dir):
    replies = [tool_call("read_file", {"path": "notes.txt"}), text("alpha, beta")]
    before = set(state_dir.glob("*.json"))
    prompt(agent, tmp_path, replies)
    [saved] = set(state_dir.glob("*.json")) - before
    with Bridge.running() as bridge:  # a new process: what it knows comes from the file
        endpoint = start(bridge, state_dir, shared=False)
        editor = bridge.fresh_editor(tmp_path)
        endpoint.script([text("Still here.")])

        async def main():
            await bridge.conn.load_session(cwd=str(tmp_path), session_id=saved.stem)
            assert editor.kinds() == ["user_message_chunk", "agent_message_chunk", "tool_call",
                                      "tool_call_update", "agent_message_chunk"]  # fmt: skip
            assert editor.text() == "On it.alpha, beta"
            await bridge.conn.prompt(session_id=saved.stem, prompt=[text_block("And?")])
            with pytest.raises(RequestError):
                await bridge.conn.load_session(cwd=str(tmp_path), session_id="0" * 32)

        bridge.call(main())
    roles = [m["role"] for m in endpoint.requests[0]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_a_failing_model_list_is_an_acp_error_at_session_new(agent, tmp_path):
    bridge, endpoint = agent
    endpoint.script([])
    endpoint.models_error = Reply(
        status=503, body={"error": {"message": "no healthy node", "code": "service_unavailable"}}
    )
    with pytest.raises(RequestError, match="no healthy node") as caught:
        bridge.call(bridge.conn.new_session(cwd=str(tmp_path)))
    assert caught.value.data == {"status": 503, "code": "service_unavailable"}


def test_an_unreachable_endpoint_names_itself():
    async def main():
        endpoint = Endpoint("http://127.0.0.1:9/v1", None)
        try:
            await endpoint.list_models()
        finally:
            await endpoint.aclose()

    with pytest.raises(
        EndpointUnreachable, match=r"endpoint http://127\.0\.0\.1:9/v1 failed: Conn"
    ):
        asyncio.run(main())
