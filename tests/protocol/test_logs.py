"""Log lines cannot be forged or turned into terminal escapes by what a client sent."""

from __future__ import annotations

import json
import logging

import pytest

from protocol.logs import JsonFormatter, PlainFormatter, RequestIdFilter, printable

HOSTILE = [
    "/v1/nope\n2026-12-06 00:00:00,000 INFO cortex.http: FORGED line",
    "model\r\x1b[2K\x1b[31mred",
    "a\x85b\u2028c\u2029d",  # NEL and the Unicode line/paragraph separators
    "x\u202eevil\x00\x7f\t",  # a bidi override, NUL, DEL, a tab
]


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("cortex.http", logging.INFO, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    RequestIdFilter().filter(record)
    return record


@pytest.mark.parametrize("text", HOSTILE)
def test_printable_escapes_every_control_character_and_keeps_the_rest(text):
    escaped = printable(text)
    assert escaped.isprintable()
    assert escaped.encode().decode("unicode_escape") == text  # nothing lost


def test_printable_leaves_printable_text_alone():
    assert printable("ünïcode ok / path?q=1") == "ünïcode ok / path?q=1"


@pytest.mark.parametrize("text", HOSTILE)
def test_a_plain_line_stays_one_printable_line(text):
    line = PlainFormatter().format(_record("answered path=%s", text, request_id=text))
    assert "\n" not in line and line.isprintable(), line


@pytest.mark.parametrize("text", HOSTILE)
def test_a_json_line_carries_no_control_character(text):
    line = JsonFormatter().format(_record("answered path=%s", text, request_id=text, key=text))
    assert line.isprintable(), line  # json.dumps alone lets \x85, \u2028 and \u202e through
    entry = json.loads(line)
    assert entry["msg"] == "answered path=" + printable(text)
    assert entry["request_id"] == entry["key"] == printable(text)


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record():
    try:
        raise ValueError("bad\n2026-12-06 00:00:00,000 INFO cortex.http: FORGED")
    except ValueError:
        import sys

        text = PlainFormatter().format(_record("failed", exc_info=sys.exc_info()))
    first, *rest = text.split("\n")
    assert first.endswith("cortex.http: failed") and "    Traceback" in rest[0]
    assert all(line.startswith("    ") for line in rest)  # only a record starts a line
    assert rest[-1].strip() == "2026-12-06 00:00:00,000 INFO cortex.http: FORGED"
