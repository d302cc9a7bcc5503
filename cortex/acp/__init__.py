"""`helexa-acp`: an Agent Client Protocol agent over an OpenAI-compatible endpoint.

An editor that speaks ACP (Zed, and others) spawns `helexa-acp` and talks to it
over stdio; the agent talks to the fleet (the local cortex by default) with
plain OpenAI chat completions, and runs its tools — reading and writing files,
running commands — through the editor, asking the user's permission first.
See docs/acp.md.

Modules: `agent` (the ACP methods), `turn` (the agent loop), `tools`,
`hermes` (tool calls as `<tool_call>` text), `endpoint` (the HTTP side),
`session`, `config`, `errors`. Needs the `acp` extra; never torch.
"""
