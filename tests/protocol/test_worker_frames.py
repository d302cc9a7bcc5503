"""Device-worker frames: codec round trips, refusals, tensors, real sockets."""

from __future__ import annotations

import itertools
import socket
import struct
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from protocol._converter import encode_json
from protocol.errors import FrameError
from protocol.worker import (
    DTYPE_SIZES,
    JOBS,
    KINDS,
    REPLIES,
    CancelSequence,
    EngineStatistics,
    FrameDecoder,
    Generate,
    Heartbeat,
    JobFailed,
    LoadModel,
    MessageReader,
    ModelLoaded,
    ModelUnloaded,
    PrefixReused,
    RawTensor,
    SamplingParams,
    SequenceFailed,
    SequenceTokens,
    Shutdown,
    StepLogprobs,
    StepTokens,
    TensorParallel,
    TokenLogprobs,
    UnloadModel,
    WorkerReady,
    encode,
    encode_buffers,
    raw_tensor_from_torch,
    recv_frame,
    send_frame,
    send_message,
)

# ------------------------------------------------------------- strategies

u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
ints = st.integers()
text = st.text(max_size=20)
floats = st.floats(allow_nan=False, allow_infinity=False)
maybe = st.none().__or__
failure_kinds = st.sampled_from(
    [
        "bad_request",
        "not_found",
        "load_failed",
        "unsupported_model",
        "out_of_memory",
        "device_fault",
        "internal",
    ]
)


@st.composite
def raw_tensors(draw) -> RawTensor:
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    size = DTYPE_SIZES[dtype]
    for n in shape:
        size *= n
    return RawTensor(dtype, shape, draw(st.binary(min_size=size, max_size=size)))


sampling = st.builds(
    SamplingParams,
    max_tokens=ints,
    temperature=floats,
    top_p=floats,
    top_k=maybe(ints),
    min_p=floats,
    seed=maybe(ints),
    repetition_penalty=floats,
    presence_penalty=floats,
    frequency_penalty=floats,
    logit_bias=st.dictionaries(ints, floats, max_size=4),
    stop_token_ids=st.lists(ints, max_size=4).map(tuple),
    ignore_eos=st.booleans(),
    logprobs=maybe(st.integers(0, 20)),
)
sequence_tokens = st.builds(
    SequenceTokens,
    u64,
    st.lists(i32, max_size=5).map(tuple),
    maybe(st.sampled_from(["stop", "length", "cancelled", "error"])),
)
engine_statistics = st.builds(
    EngineStatistics, text, ints, ints, ints, ints, ints, maybe(floats), maybe(floats),
    maybe(ints), maybe(ints), ints, ints, ints, ints, ints,
)  # fmt: skip
jobs = st.one_of(
    st.builds(
        LoadModel,
        ints,
        text,
        text,
        text,
        maybe(ints),
        maybe(ints),
        maybe(st.builds(TensorParallel, ints, ints, text)),
        maybe(ints),
    ),
    st.builds(UnloadModel, ints, text),
    st.builds(
        Generate,
        u64,
        text,
        st.lists(i32, max_size=50).map(tuple),
        sampling,
        st.dictionaries(text, raw_tensors(), max_size=3),
    ),
    st.builds(CancelSequence, u64),
    st.just(Shutdown()),
)
replies = st.one_of(
    st.builds(WorkerReady, ints, text, ints, text, maybe(text), maybe(text)),
    st.builds(ModelLoaded, ints, text, ints, floats, maybe(ints), maybe(ints), ints),
    st.builds(ModelUnloaded, ints, text, maybe(ints)),
    st.builds(StepTokens, u64, st.lists(sequence_tokens, max_size=6).map(tuple)),
    st.builds(PrefixReused, u64, ints),
    st.builds(
        StepLogprobs,
        st.lists(
            st.builds(TokenLogprobs, u64, i32, floats, st.lists(st.tuples(i32, floats)).map(tuple)),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(SequenceFailed, u64, failure_kinds, text, st.booleans()),
    st.builds(JobFailed, ints, failure_kinds, text, st.booleans()),
    st.builds(Heartbeat, st.lists(engine_statistics, max_size=3).map(tuple)),
)
messages = jobs | replies


def frame(kind: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, kind) + body


def chunks(raw: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


# ------------------------------------------------------------ round trips


def test_kind_table_is_closed_and_split_by_direction():
    assert len(KINDS) == len(set(KINDS.values())) == 14
    assert set(JOBS) | set(REPLIES) == set(KINDS.values())
    assert not set(JOBS) & set(REPLIES)


@given(st.data(), st.lists(messages, min_size=1, max_size=6))
def test_round_trip_under_any_chunking(data, originals):
    raw = b"".join(encode(m) for m in originals)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    decoder = FrameDecoder()
    out = [m for piece in chunks(raw, cuts) for m in decoder.feed(piece)]
    decoder.close()
    assert out == originals


@given(messages)
def test_byte_at_a_time(message):
    raw = encode(message)
    decoder = FrameDecoder()
    out = [m for i in range(len(raw)) for m in decoder.feed(raw[i : i + 1])]
    assert out == [message]


def test_step_tokens_are_compact():
    one = StepTokens(1, (SequenceTokens(7, (42,)),))
    assert len(encode(one)) == 5 + 12 + 17 == 34
    batch = StepTokens(
        2**40, tuple(SequenceTokens(i, (i, i + 1), "stop" if i % 2 else None) for i in range(64))
    )
    assert len(encode(batch)) == 5 + 12 + 64 * (17 + 4)  # header + 17 B/seq + 4 B/extra token
    realistic = StepTokens(10**6, tuple(SequenceTokens(10**9 + i, (151_643,)) for i in range(64)))
    assert len(encode(realistic)) * 2 < len(encode_json(realistic))  # vs the same as JSON


def test_generate_prompt_is_binary():
    prompt = tuple(range(100_000, 104_000))
    raw = encode(Generate(1, "m", prompt, SamplingParams(max_tokens=8)))
    assert len(raw) < 4 * len(prompt) + 400
    assert str(prompt[0]).encode() not in raw


def test_tensor_bytes_are_sent_without_copy():
    data = bytearray(1024)
    message = Generate(1, "m", (1,), SamplingParams(1), {"x": RawTensor("float32", (256,), data)})
    buffers = encode_buffers(message)
    assert len(buffers) == 2 and buffers[1].obj is data
    assert b"".join(buffers) == encode(message)


def test_logit_bias_keys_travel_as_integers():
    message = Generate(1, "m", (), SamplingParams(4, logit_bias={-5: 1.5, 300: -100.0}))
    (out,) = FrameDecoder().feed(encode(message))
    assert out.sampling.logit_bias == {-5: 1.5, 300: -100.0}


# --------------------------------------------------------------- refusals


def test_oversize_frame_is_refused_from_its_header():
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(struct.pack("<IB", 101, 0x06))
    with pytest.raises(FrameError, match="exceeds"):
        encode(Heartbeat(), max_frame_bytes=2)


def test_unknown_kind_is_refused():
    with pytest.raises(FrameError, match="unknown frame kind 0x3f"):
        FrameDecoder().feed(frame(0x3F, b"{}"))


def test_wrong_direction_is_refused():
    with pytest.raises(FrameError, match="unexpected CancelSequence"):
        FrameDecoder(accepts=REPLIES).feed(encode(CancelSequence(1)))
    with pytest.raises(FrameError, match="unexpected ModelUnloaded"):
        FrameDecoder(accepts=JOBS).feed(encode(ModelUnloaded(1, "m")))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"seq_id": 1, "extra": 2}', "unknown fields \\(extra\\)"),
        (b'{"seq_id": "1"}', "expected integer"),
        (b"{}", "required field missing"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_json_body_is_refused(body, problem):
    with pytest.raises(FrameError, match=problem):
        FrameDecoder().feed(frame(0x04, body))


def test_unknown_key_in_nested_sampling_is_refused():
    raw = bytearray(encode(Generate(1, "m", (), SamplingParams(5))))
    raw = raw.replace(b'"max_tokens":5', b'"max_tokens":5,"typo":1')
    raw[:4] = struct.pack("<I", len(raw) - 4)
    raw[5:9] = struct.pack("<I", struct.unpack_from("<I", raw, 5)[0] + 9)
    with pytest.raises(FrameError, match="typo"):
        FrameDecoder().feed(bytes(raw))


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("<QI", 1, 1),  # too short for one sequence
        struct.pack("<QIQIBi", 1, 1, 7, 2, 0, 5),  # count says 2 tokens, 1 present
        struct.pack("<QIQIBi", 1, 1, 7, 1, 9, 5),  # unknown finish code
        b"\x00",
    ],
)
def test_corrupt_step_tokens_are_refused(body):
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(0x43, body))


def test_generate_length_must_match_header():
    raw = encode(Generate(1, "m", (1, 2, 3), SamplingParams(5)))
    for bad in (raw[5:-1], raw[5:] + b"\0\0\0\0", raw[5:9]):
        with pytest.raises(FrameError):
            FrameDecoder().feed(frame(0x03, bad))


def test_messages_before_a_bad_frame_are_delivered_first():
    decoder = FrameDecoder()
    unloaded = ModelUnloaded(1, "m")
    assert decoder.feed(encode(unloaded) + frame(0x3F, b"")) == [unloaded]
    with pytest.raises(FrameError):
        decoder.feed(encode(ModelUnloaded(2, "m")))
    with pytest.raises(FrameError):
        decoder.close()


def test_close_inside_a_frame_is_an_error():
    decoder = FrameDecoder()
    decoder.feed(encode(ModelUnloaded(1, "m"))[:-1])
    with pytest.raises(FrameError, match="inside a frame"):
        decoder.close()


@pytest.mark.parametrize(
    "message",
    [
        Heartbeat((EngineStatistics("m", 0, 0, 0, 0, 0, tok_s_decode=float("nan")),)),
        StepTokens(1, (SequenceTokens(-1, (1,)),)),
        StepTokens(1, (SequenceTokens(1, (2**31,)),)),
        Generate(1, "m", (2**40,), SamplingParams(1)),
        "not a message",
    ],
)
def test_unencodable_messages_raise_frame_error(message):
    with pytest.raises(FrameError):
        encode(message)


def test_raw_tensor_checks_its_size():
    with pytest.raises(FrameError, match="needs 8 bytes"):
        RawTensor("float32", (2,), b"\0" * 7)
    with pytest.raises(FrameError, match="dtype"):
        RawTensor("complex32", (1,), b"\0\0\0\0")


# ------------------------------------------------------------------- torch


def _random_tensor(torch, dtype, shape):
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, dtype=torch.uint8).bool()
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    bits = width[torch.empty((), dtype=dtype).element_size()]
    info = torch.iinfo(bits)
    return torch.randint(info.min, info.max, shape, dtype=bits).view(dtype)  # any bit pattern


def _bits(torch, t):
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize(
    "dtype",
    ["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool", "int8"],
)
@pytest.mark.parametrize("shape", [(3, 5), (), (0, 4), (2, 3, 4)])
def test_tensor_round_trip_is_bit_exact(dtype, shape):
    torch = pytest.importorskip("torch")
    original = _random_tensor(torch, getattr(torch, dtype), shape)
    message = Generate(1, "m", (1,), SamplingParams(1), {"x": raw_tensor_from_torch(original)})
    (out,) = FrameDecoder().feed(encode(message))
    restored = out.inputs["x"].to_torch()
    assert restored.dtype == original.dtype and restored.shape == original.shape
    assert torch.equal(_bits(torch, restored), _bits(torch, original))


def test_non_contiguous_tensor_and_read_only_bytes():
    torch = pytest.importorskip("torch")
    original = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).T
    raw = raw_tensor_from_torch(original)
    assert raw.shape == (4, 3)
    frozen = RawTensor(raw.dtype, raw.shape, bytes(raw.data))  # read-only: copied, no warning
    assert torch.equal(frozen.to_torch(), original)


def test_non_cpu_tensor_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(FrameError, match="meta"):
        raw_tensor_from_torch(torch.empty(4, device="meta"))
    with pytest.raises(FrameError, match="layout"):
        raw_tensor_from_torch(torch.eye(3).to_sparse())


def test_importing_the_protocol_loads_neither_torch_nor_trio():
    code = (
        "import sys, protocol.worker, protocol.sse, protocol.node;"
        "assert 'torch' not in sys.modules and 'trio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------ real sockets


def _trio_stream(sock: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def test_blocking_worker_end_and_trio_parent_end_over_a_socketpair():
    parent_sock, worker_sock = socket.socketpair()
    stream = _trio_stream(parent_sock)
    big = RawTensor("uint8", (3_000_000,), bytes(range(256)) * 11718 + bytes(192))
    job = Generate(9, "m", tuple(range(5000)), SamplingParams(16), {"pixel_values": big})
    steps = [StepTokens(i, (SequenceTokens(9, (i,)),)) for i in range(200)]

    def worker() -> list:
        with worker_sock:
            received = [recv_frame(worker_sock), recv_frame(worker_sock)]
            for step in steps:
                send_frame(worker_sock, step)
            send_frame(worker_sock, JobFailed(3, "device_fault", "boom", retriable=True))
            received.append(recv_frame(worker_sock))
            return received

    async with stream, trio.open_nursery() as nursery:
        result: list = []

        async def run_worker() -> None:
            result.extend(await trio.to_thread.run_sync(worker))

        nursery.start_soon(run_worker)
        await send_message(stream, job)
        await send_message(stream, CancelSequence(3))
        reader = MessageReader(stream)
        got = [await reader.receive() for _ in range(201)]
        await send_message(stream, Shutdown())
        assert await reader.receive() is None  # the worker closed its end
        assert await reader.receive() is None
    assert got == [*steps, JobFailed(3, "device_fault", "boom", retriable=True)]
    assert result == [job, CancelSequence(3), Shutdown()]


async def test_receive_is_cancellation_safe(autojump_clock):
    parent_end, worker_end = trio.testing.memory_stream_pair()
    reader = MessageReader(parent_end)
    raw = encode(ModelUnloaded(5, "m"))
    await worker_end.send_all(raw[:3])
    with trio.move_on_after(1):
        await reader.receive()
    await worker_end.send_all(raw[3:])
    assert await reader.receive() == ModelUnloaded(5, "m")


async def test_a_bad_frame_is_raised_after_the_good_ones_without_more_input():
    parent_end, worker_end = trio.testing.memory_stream_pair()
    await worker_end.send_all(encode(ModelUnloaded(1, "m")) + frame(0x3F, b""))
    reader = MessageReader(parent_end)
    assert await reader.receive() == ModelUnloaded(1, "m")
    with pytest.raises(FrameError, match="unknown frame kind"):
        await reader.receive()


async def test_eof_inside_a_frame_is_an_error():
    parent_end, worker_end = trio.testing.memory_stream_pair()
    await worker_end.send_all(encode(ModelUnloaded(5, "m"))[:-2])
    await worker_end.aclose()
    with pytest.raises(FrameError):
        await MessageReader(parent_end).receive()


_CHILD = textwrap.dedent(
    """
    import os, socket, sys
    from protocol.worker import (PROTOCOL_VERSION, ModelUnloaded, UnloadModel, WorkerReady,
                                 recv_frame, send_frame)
    sock = socket.socket(fileno=int(sys.argv[1]))
    send_frame(sock, WorkerReady(os.getpid(), "cpu:0", PROTOCOL_VERSION, sys.version.split()[0]))
    while (job := recv_frame(sock)) is not None and isinstance(job, UnloadModel):
        send_frame(sock, ModelUnloaded(job.job_id, job.model_id))
    sock.close()
    """
)


@pytest.mark.slow
async def test_worker_process_over_an_inherited_socket():
    parent_sock, child_sock = socket.socketpair()
    fd = child_sock.fileno()
    with child_sock:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _CHILD, str(fd)], pass_fds=(fd,)
        )
    try:
        async with _trio_stream(parent_sock) as stream:
            reader = MessageReader(stream)
            ready = await reader.receive()
            assert isinstance(ready, WorkerReady) and ready.pid == process.pid
            for job_id in range(3):
                await send_message(stream, UnloadModel(job_id, "m"))
                assert await reader.receive() == ModelUnloaded(job_id, "m")
            await send_message(stream, Shutdown())
            assert await reader.receive() is None
        assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()
