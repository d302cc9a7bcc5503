"""helexa's wire protocol: types, the one converter, codecs and error envelopes.

Public modules, each one wire: `openai` (chat completions), `completions`
(legacy), `models` (`/v1/models`), `responses` (OpenAI Responses),
`anthropic` (Messages), `node` (neuron's node API), `worker` (device-worker
frames), `sse` (event-stream codec), `http` (the HTTP edge both daemons
share), `errors` (the error tree and envelopes), `ids`. The conversion entry
points are re-exported here. Importing this package never imports torch,
trio or an HTTP framework.
"""

from protocol._converter import (
    decode_json,
    encode_json,
    field,
    keep_null,
    parse,
    rest_keys,
    structure,
    unstructure,
)
from protocol.errors import ApiError, ProtocolError

__all__ = [
    "ApiError",
    "ProtocolError",
    "decode_json",
    "encode_json",
    "field",
    "keep_null",
    "parse",
    "rest_keys",
    "structure",
    "unstructure",
]
