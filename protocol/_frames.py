"""The device-worker frame codec (sans-IO) and thin I/O helpers over it.

`protocol.worker` documents the frame layout and re-exports the public
names; see there. The blocking helpers serve the worker process, the async
ones the trio parent; both use only `sendall`/`recv_into` or
`send_all`/`receive_some`, so this module imports neither trio nor torch.
"""

from __future__ import annotations

import array
import itertools
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from protocol._converter import decode_json, encode_json, structure
from protocol._tensors import DTYPE_SIZES, RawTensor
from protocol._worker_messages import (
    JOBS,
    KINDS,
    REPLIES,
    FinishReason,
    Generate,
    Message,
    SamplingParams,
    SeqId,
    SequenceTokens,
    StepTokens,
)
from protocol.errors import ApiError, FrameError
from protocol.ids import ModelId

if TYPE_CHECKING:
    import trio

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_BYTES",
    "FrameDecoder",
    "MessageReader",
    "encode",
    "encode_buffers",
    "recv_frame",
    "send_frame",
    "send_message",
]

MAX_FRAME_BYTES = 256 * 1024 * 1024
HEADER_SIZE = 5
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}

# ------------------------------------------------------------- body codecs

_HEADER = struct.Struct("<IB")
_U32 = struct.Struct("<I")
_STEP_HEAD = struct.Struct("<QI")
_FINISH_CODES: dict[FinishReason | None, int] = {
    None: 0,
    "stop": 1,
    "length": 2,
    "cancelled": 3,
    "error": 4,
}
_FINISH_REASONS: tuple[FinishReason | None, ...] = tuple(_FINISH_CODES)
_SWAP = sys.byteorder != "little"
Buffer: TypeAlias = bytes | bytearray | memoryview


def _pack_i32(values: Sequence[int]) -> bytes:
    packed = array.array("i", values)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def _unpack_i32(data: Buffer) -> tuple[int, ...]:
    unpacked = array.array("i")
    unpacked.frombytes(data)
    if _SWAP:
        unpacked.byteswap()
    return tuple(unpacked)


def _json_body(message: Any) -> list[Buffer]:
    return [encode_json(message)]


def _from_json(data: Buffer, cls: type) -> Any:
    try:
        return structure(decode_json(bytes(data)), cls, internal=True)
    except ApiError as exc:
        raise FrameError(f"bad {cls.__name__} frame: {exc.message}") from exc


def _step_body(message: StepTokens) -> list[Buffer]:
    seqs = message.sequences
    n = len(seqs)
    tokens = list(itertools.chain.from_iterable(s.token_ids for s in seqs))
    return [
        struct.pack(
            f"<QI{n}Q{n}I{n}B{len(tokens)}i",
            message.step,
            n,
            *(s.seq_id for s in seqs),
            *(len(s.token_ids) for s in seqs),
            *(_FINISH_CODES[s.finish_reason] for s in seqs),
            *tokens,
        )
    ]


def _step_from(body: Buffer) -> StepTokens:
    if len(body) < _STEP_HEAD.size:
        raise FrameError("StepTokens frame is too short")
    step, n = _STEP_HEAD.unpack_from(body)
    offset = _STEP_HEAD.size + 13 * n
    if offset > len(body):
        raise FrameError(f"StepTokens frame too short for {n} sequences")
    columns = struct.unpack_from(f"<{n}Q{n}I{n}B", body, _STEP_HEAD.size)
    counts = columns[n : 2 * n]
    if offset + 4 * sum(counts) != len(body):
        raise FrameError("StepTokens token counts do not match the frame length")
    tokens = _unpack_i32(body[offset:])
    sequences = []
    start = 0
    for seq_id, count, code in zip(columns[:n], counts, columns[2 * n :], strict=True):
        if code >= len(_FINISH_REASONS):
            raise FrameError(f"StepTokens has unknown finish code {code}")
        end = start + count
        sequences.append(SequenceTokens(seq_id, tokens[start:end], _FINISH_REASONS[code]))
        start = end
    return StepTokens(step, tuple(sequences))


@attrs.frozen
class _TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


@attrs.frozen
class _GenerateHeader:
    seq_id: SeqId
    model_id: ModelId
    prompt_tokens: int
    sampling: SamplingParams
    inputs: tuple[_TensorSpec, ...] = ()


def _generate_body(message: Generate) -> list[Buffer]:
    specs = tuple(_TensorSpec(k, t.dtype, t.shape) for k, t in message.inputs.items())
    header = encode_json(
        _GenerateHeader(
            message.seq_id,
            message.model_id,
            len(message.prompt_token_ids),
            message.sampling,
            specs,
        )
    )
    head = _U32.pack(len(header)) + header + _pack_i32(message.prompt_token_ids)
    return [head, *(t.data for t in message.inputs.values() if t.data)]


def _generate_from(body: Buffer) -> Generate:
    view = memoryview(body)
    if len(view) < _U32.size:
        raise FrameError("Generate frame is too short")
    (header_len,) = _U32.unpack_from(view)
    offset = _U32.size + header_len
    header: _GenerateHeader = _from_json(view[_U32.size : offset], _GenerateHeader)
    end = offset + 4 * header.prompt_tokens
    ends = list(itertools.accumulate((_tensor_nbytes(t) for t in header.inputs), initial=end))
    if header.prompt_tokens < 0 or ends[-1] != len(view):
        raise FrameError("Generate frame length does not match its header")
    if len({t.name for t in header.inputs}) != len(header.inputs):
        raise FrameError("Generate frame names an input tensor twice")
    prompt = _unpack_i32(view[offset:end])
    inputs = {
        spec.name: RawTensor(spec.dtype, spec.shape, view[start:stop])
        for spec, (start, stop) in zip(header.inputs, itertools.pairwise(ends), strict=True)
    }
    return Generate(header.seq_id, header.model_id, prompt, header.sampling, inputs)


def _tensor_nbytes(spec: _TensorSpec) -> int:
    if spec.dtype not in DTYPE_SIZES or any(n < 0 for n in spec.shape):
        raise FrameError(f"bad tensor spec for {spec.name!r}: {spec.dtype}{list(spec.shape)}")
    size = DTYPE_SIZES[spec.dtype]
    for n in spec.shape:
        size *= n
    return size


_ENCODERS = {StepTokens: _step_body, Generate: _generate_body}
_DECODERS = {StepTokens: _step_from, Generate: _generate_from}

# ----------------------------------------------------------------- framing


def encode_buffers(message: Message, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> list[Buffer]:
    """A frame as buffers to send in order; tensor bytes are not copied."""
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise FrameError(f"{type(message).__name__} is not a worker message")
    try:
        parts = _ENCODERS.get(type(message), _json_body)(message)
    except (struct.error, OverflowError, KeyError, ValueError) as exc:
        raise FrameError(f"cannot encode {type(message).__name__}: {exc}") from exc
    length = 1 + sum(len(p) for p in parts)
    if length > max_frame_bytes:
        raise FrameError(f"{type(message).__name__} frame of {length} bytes exceeds the limit")
    return [_HEADER.pack(length, kind) + parts[0], *parts[1:]]


def encode(message: Message, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """A frame as one `bytes` object."""
    return b"".join(encode_buffers(message, max_frame_bytes=max_frame_bytes))


def _decode_body(kind: int, body: bytearray) -> Message:
    cls = KINDS[kind]
    decoder = _DECODERS.get(cls)
    return decoder(body) if decoder else _from_json(body, cls)


class FrameDecoder:
    """Incremental frame decoder: `feed(bytes)` → complete messages.

    Any chunking works; a partial frame waits in the buffer. A frame header
    announcing more than `max_frame_bytes`, an unknown kind, or a kind not
    in `accepts` raises `FrameError` before the body is buffered. Messages
    decoded before a bad frame are returned first and the error is raised
    by the next call; after that the decoder refuses all input (the stream
    is out of sync, so the peer is to be treated as broken).
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        accepts: Iterable[type] | None = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        accepted = KINDS.values() if accepts is None else accepts
        self._kinds = frozenset(_KIND_OF[cls] for cls in accepted)
        self._buffer = bytearray()
        self._error: FrameError | None = None

    def feed(self, data: Buffer) -> list[Message]:
        self.check()
        self._buffer += data
        messages: list[Message] = []
        try:
            self._drain(messages)
        except FrameError as exc:
            self._error = exc
            if not messages:
                raise
        return messages

    def close(self) -> None:
        """End of stream: a partial frame left over is an error."""
        self.check()
        if self._buffer:
            self._error = FrameError(f"stream ended inside a frame ({len(self._buffer)} bytes)")
            raise self._error

    def check(self) -> None:
        """Raise the error found after the messages the last `feed` returned."""
        if self._error is not None:
            raise self._error

    def _drain(self, messages: list[Message]) -> None:
        buffer, offset = self._buffer, 0
        try:
            while len(buffer) - offset >= HEADER_SIZE:
                length, kind = _parse_header(buffer, offset, self.max_frame_bytes, self._kinds)
                end = offset + 4 + length
                if len(buffer) < end:
                    break
                messages.append(_decode_body(kind, buffer[offset + HEADER_SIZE : end]))
                offset = end
        finally:
            del buffer[:offset]


def _parse_header(data: Buffer, offset: int, limit: int, kinds: frozenset[int]) -> tuple[int, int]:
    length, kind = _HEADER.unpack_from(data, offset)
    if length > limit:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {limit}")
    if length < 1:
        raise FrameError("frame has no kind byte")
    if kind not in kinds:
        known = KINDS.get(kind)
        raise FrameError(
            f"unexpected {known.__name__} frame" if known else f"unknown frame kind 0x{kind:02x}"
        )
    return length, kind


# ------------------------------------------------- blocking (worker side)


def send_frame(
    sock: socket.socket, message: Message, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Send one frame on a blocking socket. Not thread-safe: serialise sends."""
    for part in encode_buffers(message, max_frame_bytes=max_frame_bytes):
        sock.sendall(part)


def recv_frame(
    sock: socket.socket,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    accepts: Iterable[type] | None = JOBS,
) -> Message | None:
    """Receive one frame from a blocking socket (no timeout set); None on EOF.

    By default only jobs are accepted: this is the worker's end.
    """
    header = _recv_exactly(sock, HEADER_SIZE, eof_ok=True)
    if header is None:
        return None
    kinds = frozenset(KINDS) if accepts is None else frozenset(_KIND_OF[c] for c in accepts)
    length, kind = _parse_header(header, 0, max_frame_bytes, kinds)
    body = _recv_exactly(sock, length - 1)
    assert body is not None
    return _decode_body(kind, body)


def _recv_exactly(sock: socket.socket, size: int, *, eof_ok: bool = False) -> bytearray | None:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0 and eof_ok:
                return None
            raise FrameError(f"stream ended inside a frame ({got} of {size} bytes)")
        got += n
    return data


# ---------------------------------------------------------- trio (parent side)


async def send_message(
    stream: trio.abc.SendStream, message: Message, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Send one frame. Cancelled midway, the stream is unusable (trio's rule)."""
    for part in encode_buffers(message, max_frame_bytes=max_frame_bytes):
        await stream.send_all(part)


class MessageReader:
    """Receive messages from a trio stream; `receive()` is None at EOF.

    This is the parent's end, so by default only replies are accepted.
    Cancellation-safe: bytes already read stay in the decoder.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        accepts: Iterable[type] | None = REPLIES,
    ) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_bytes=max_frame_bytes, accepts=accepts)
        self._pending: deque[Message] = deque()
        self._eof = False

    async def receive(self) -> Message | None:
        while not self._pending:
            if self._eof:
                return None
            self._decoder.check()  # don't wait for more bytes behind a bad frame
            data = await self._stream.receive_some()
            if not data:
                self._eof = True
                self._decoder.close()
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.popleft()
