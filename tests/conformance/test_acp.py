"""`helexa-acp` against the real fleet: an editor (the ACP client side, in the test)
spawns the bridge, which talks to a real gateway over a real neuron serving the
scripted model (tests/conformance/scripted_model.py).

The scripted model thinks, says one sentence and calls `read_file` on
`notes.txt` whatever it is asked, so with OpenAI tools the gateway and neuron
parse the call; in Hermes mode (no `tools` sent) the neuron shows the call as
text and the bridge parses it. Either way the file is read through the editor,
the result goes back, the model calls again, and the step limit ends the turn.
A cancel mid-stream must free the neuron's sequence.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from acp import text_block
from scripted_model import SCRIPTED, TEXT, THINKING

from neuron.synth import TOKEN_IDS
from tests.cortex.acp.editor import Bridge
from tests.neuron.daemon_harness import KEEP_ACROSS_TESTS, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MAX_STEPS = 2
NO_EOS = {str(TOKEN_IDS["<|im_end|>"]): -100, str(TOKEN_IDS["<|endoftext|>"]): -100}


def spawn(bridge: Bridge, gateway, state: Path, *flags: str) -> None:
    bridge.spawn("--endpoint", f"{gateway.url}/v1", "--model", SCRIPTED, "--state-dir", str(state),
                 "--max-steps", str(MAX_STEPS), *flags, env={KEEP_ACROSS_TESTS: "1"})  # fmt: skip


@pytest.fixture(scope="module")
def agent(gateway, tmp_path_factory):
    with Bridge.running() as bridge:
        spawn(bridge, gateway, tmp_path_factory.mktemp("acp-state"))
        yield bridge


@pytest.mark.parametrize("tool_format", ["openai", "hermes"])
def test_the_fleet_reads_a_file_through_the_editor_until_the_step_limit(agent, tmp_path,
                                                                        tool_format):  # fmt: skip
    (tmp_path / "notes.txt").write_text("alpha\n")
    editor = agent.fresh_editor(tmp_path)

    async def main():
        session = await agent.conn.new_session(cwd=str(tmp_path))
        models = [o.value for o in session.config_options[0].options]
        assert SCRIPTED in models and session.config_options[0].current_value == SCRIPTED
        await agent.conn.set_config_option(config_id="tool_format", value=tool_format,
                                           session_id=session.session_id)  # fmt: skip
        ask = [text_block("What is in notes.txt?")]
        return await agent.conn.prompt(session_id=session.session_id, prompt=ask)

    assert agent.call(main()).stop_reason == "max_turn_requests"
    assert editor.text("agent_thought_chunk") == THINKING * MAX_STEPS
    assert editor.text().replace("\n", "") == TEXT * MAX_STEPS
    assert editor.reads == [str(tmp_path / "notes.txt")] * MAX_STEPS
    starts = [u for u in editor.updates if u.session_update == "tool_call"]
    assert [(u.title, u.kind, u.raw_input) for u in starts] == \
        [("Read notes.txt", "read", {"path": "notes.txt"})] * MAX_STEPS  # fmt: skip
    assert editor.tool_statuses()[-1] == ("tool_call_update", "completed")


def test_cancel_mid_stream_frees_the_neurons_sequence(gateway, neuron, tmp_path):
    """Told never to stop, the model streams until the editor cancels the turn."""
    endless = json.dumps({"logit_bias": NO_EOS, "max_tokens": 4000})
    aborted = f'neuron_request_success_total{{finished_reason="abort",model="{SCRIPTED}"}}'
    aborted_before = neuron.metrics().get(aborted, 0.0)
    with Bridge.running() as bridge:
        spawn(bridge, gateway, tmp_path / "state", "--extra-body", endless)
        editor = bridge.fresh_editor(tmp_path)

        async def main():
            session = await bridge.conn.new_session(cwd=str(tmp_path))
            ask = bridge.conn.prompt(session_id=session.session_id, prompt=[text_block("Go")])
            running = asyncio.ensure_future(ask)
            await editor.wait_for_update("agent_message_chunk")
            load = await asyncio.to_thread(neuron.model_load, SCRIPTED)
            assert load["in_flight"] == 1  # generating now
            await bridge.conn.cancel(session_id=session.session_id)
            return await running

        assert bridge.call(main()).stop_reason == "cancelled"
        wait_for(lambda: neuron.model_load(SCRIPTED)["in_flight"] == 0, within=15,
                 what="the neuron's admission slot back")  # fmt: skip
        wait_for(lambda: not neuron.request_actors(), within=15, what="the request actor gone")
    assert neuron.metrics()[aborted] == aborted_before + 1  # ended by the cancel, not finished
