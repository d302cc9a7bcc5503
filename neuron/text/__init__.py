"""The neuron parent's text pipeline: everything between HTTP JSON and token ids.

`tokenizer` loads a snapshot's tokenizer and chat template (read by
`tokenizer_files`) and renders prompts (`messages` prepares protocol messages
for it, `chat_template` is the sandboxed Jinja renderer); `sampling` resolves a
request's sampling fields into the worker's `SamplingParams`; `detokenize`,
`output` (with `reasoning` markers and `tool_calls` bodies) and `stop` turn the
worker's token ids back into content, reasoning and tool-call events; `prompt`
composes them for one chat request. All of it is pure, synchronous and
torch-free; errors are in `errors`.

Not for: HTTP, streaming chunk shapes or anything that touches a device. This
`__init__` imports nothing, so importing one module stays cheap.
"""
