"""Wire renderers: one generation's events (`neuron.events`) as each API's reply.

`chat` (chat completions), `completions` (legacy `text_completion`) and
`responses` (the Responses API) each offer a stream — `start()`, `feed(event)`,
`finish()` / `fail()`, every call returning the SSE bytes to send — and a
`collect_*` function building the non-streaming reply from the same events.
`template` keeps the per-token path to one string escape per delta.

All of it is pure and synchronous: ids and timestamps are inputs, nothing
here does I/O, reads a clock or knows about HTTP; the routes own that.
"""

from neuron.render.chat import ChatStream, collect_chat
from neuron.render.completions import CompletionStream, collect_completion
from neuron.render.responses import ResponsesStream, collect_response

__all__ = [
    "ChatStream",
    "CompletionStream",
    "ResponsesStream",
    "collect_chat",
    "collect_completion",
    "collect_response",
]
