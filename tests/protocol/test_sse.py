"""The SSE codec: spec parsing under any chunking, and encoder round trips."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import EventStreamError
from protocol.sse import (
    DONE,
    KEEPALIVE,
    SseComment,
    SseDecoder,
    SseEvent,
    encode,
    encode_comment,
    encode_data,
    encode_event,
    encode_json_event,
)

# Any text that UTF-8 can carry, weighted towards line breaks and multi-byte
# characters (2-, 3- and 4-byte sequences) so splits land inside them.
_chars = st.one_of(
    st.characters(exclude_categories=("Cs",)),
    st.sampled_from(["\n", "\r", "\r\n", "é", "€", "😀", ":", " "]),
)
any_text = st.lists(_chars, max_size=12).map("".join)
one_line = any_text.map(lambda s: re.sub(r"[\r\n]", "", s))

events = st.builds(
    SseEvent,
    data=any_text,
    event=st.none() | one_line.filter(bool),
    id=st.none() | one_line.map(lambda s: s.replace("\0", "")),
    retry=st.none() | st.integers(0, 2**40),
)
comments = st.builds(SseComment, one_line)
items = st.lists(events | comments, max_size=8)


def decoded(item: SseEvent | SseComment) -> SseEvent | SseComment:
    """What a decoder yields for `item`: line breaks in data become LF."""
    if isinstance(item, SseEvent):
        return SseEvent(re.sub(r"\r\n|\r", "\n", item.data), item.event, item.id, item.retry)
    return item


def decode_chunks(chunks: list[bytes], **kwargs) -> tuple[list, SseDecoder]:
    decoder = SseDecoder(**kwargs)
    out = [x for chunk in chunks for x in decoder.feed(chunk)]
    decoder.close()
    return out, decoder


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def wire(draw, stream: list) -> bytes:
    """Render `stream` with a random line ending per line and maybe a BOM."""
    lines = b"".join(encode(item) for item in stream).split(b"\n")[:-1]
    out, previous = [b"\xef\xbb\xbf" if draw(st.booleans()) else b""], b""
    for line in lines:
        eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        if previous == b"\r" and not line and eol == b"\n":
            eol = b"\r\n"  # CR then LF would read as a single CRLF
        out += [line, eol]
        previous = eol
    return b"".join(out)


@given(items)
def test_encoder_decoder_round_trip(stream):
    out, decoder = decode_chunks([b"".join(encode(item) for item in stream)])
    assert out == [decoded(item) for item in stream]
    assert not decoder.truncated


@given(st.data(), items)
def test_any_chunking_and_line_endings_decode_alike(data, stream):
    raw = data.draw(wire(stream))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=len(raw) + 1))
    whole, _ = decode_chunks([raw])
    assert decode_chunks(split_at(raw, cuts))[0] == whole == [decoded(i) for i in stream]


@given(items)
def test_byte_at_a_time(stream):
    raw = b"".join(encode(item) for item in stream)
    assert decode_chunks([raw[i : i + 1] for i in range(len(raw))])[0] == [
        decoded(item) for item in stream
    ]


def test_spec_field_rules():
    raw = (
        b"\xef\xbb\xbfdata\n"  # BOM stripped; no colon: empty value
        b"data:no space\n"
        b"data:  two spaces\n"
        b"unknown: ignored\n"
        b"id: a\0b\n"  # NUL: the id field is ignored
        b"retry: 12x\n"  # not all digits: ignored
        b"event: update\n\n"
    )
    out, decoder = decode_chunks([raw])
    assert out == [SseEvent("\nno space\n two spaces", event="update")]
    assert decoder.last_event_id == "" and decoder.retry is None


def test_bom_only_at_start_and_split():
    out, _ = decode_chunks([b"\xef", b"\xbb", b"\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n"])
    assert out == [SseEvent("x")]  # the second BOM makes an unknown field name


def test_event_without_data_is_not_dispatched_but_id_sticks():
    out, decoder = decode_chunks([b"event: e\nid: 7\nretry: 50\n\ndata: z\n\n"])
    assert out == [SseEvent("z")]
    assert decoder.last_event_id == "7" and decoder.retry == 50


def test_cr_at_chunk_end_then_lf():
    out, _ = decode_chunks([b"data: a\r", b"\ndata: b\r", b"\r\n"])
    assert out == [SseEvent("a\nb")]


def test_invalid_utf8_becomes_replacement_character():
    out, _ = decode_chunks([b"data: \xff\xfe ok\n\n"])
    assert out == [SseEvent("\ufffd\ufffd ok")]


def test_comments_are_surfaced_in_order():
    out, _ = decode_chunks([b": keepalive\n\ndata: a\n:\n: x\ndata: b\n\n"])
    assert out == [SseComment("keepalive"), SseComment(""), SseComment("x"), SseEvent("a\nb")]


@pytest.mark.parametrize(
    "tail", [b"data: cut", b"data: done\n", b"event: e\n", b"data: \xe2\x82", b"retry: 5\n"]
)
def test_unterminated_event_is_dropped_at_close(tail):
    out, decoder = decode_chunks([b"data: whole\n\n" + tail])
    assert out == [SseEvent("whole")]
    assert decoder.truncated


def test_clean_close_is_not_truncated():
    assert not decode_chunks([DONE + KEEPALIVE])[1].truncated


def test_max_event_size_guards_long_lines_and_many_data_lines():
    decoder = SseDecoder(max_event_size=64)
    decoder.feed(b"data: " + b"x" * 40)
    with pytest.raises(EventStreamError):
        decoder.feed(b"x" * 40)
    with pytest.raises(EventStreamError):
        decoder.feed(b"\n\n")  # refuses input after an error
    decoder = SseDecoder(max_event_size=64)
    with pytest.raises(EventStreamError):
        decoder.feed(b"data: 0123456789\n" * 6)
    decoder = SseDecoder(max_event_size=64)  # dispatched events do not accumulate
    assert len(decoder.feed(b"data: 0123456789\n\n" * 100)) == 100


def test_feed_after_close_raises():
    decoder = SseDecoder()
    decoder.close()
    with pytest.raises(EventStreamError):
        decoder.feed(b"data: x\n\n")


def test_encoder_renders_fields_and_splits_data():
    assert encode_event("a\r\nb\rc\nd", event="e", id="1", retry=3) == (
        b"event: e\nid: 1\nretry: 3\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert encode_comment("keepalive") == KEEPALIVE
    assert encode_comment() == b":\n\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_event("x", event="a\nb"),
        lambda: encode_event("x", event=""),
        lambda: encode_event("x", id="a\rb"),
        lambda: encode_event("x", id="a\0b"),
        lambda: encode_event("x", retry=-1),
        lambda: encode_comment("two\nlines"),
        lambda: encode_data(b"two\nlines"),
    ],
)
def test_encoder_refuses_what_would_break_framing(call):
    with pytest.raises(ValueError):
        call()


def test_json_fast_path_and_done():
    payload = {"text": "line\nbreak\r", "emoji": "😀"}
    raw = encode_json_event(payload)
    assert raw == 'data: {"text":"line\\nbreak\\r","emoji":"😀"}\n\n'.encode()
    assert encode_json_event([1], event="response.created") == (
        b"event: response.created\ndata: [1]\n\n"
    )
    out, _ = decode_chunks([raw, DONE])
    assert out[0].data == '{"text":"line\\nbreak\\r","emoji":"😀"}'
    assert not out[0].is_done and out[1].is_done


@given(st.recursive(st.none() | st.booleans() | st.integers() | any_text, st.lists))
def test_json_events_are_always_one_event(payload):
    out, _ = decode_chunks([encode_json_event(payload)])
    assert len(out) == 1 and "\n" not in out[0].data
