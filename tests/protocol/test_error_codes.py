"""One enum of wire error codes (`protocol.errors.ErrorCode`), used by both daemons.

Every code either daemon can put on the wire — an `ApiError` class's, a `code="…"`
written in the source, a boxed worker failure's kind, a model status's
`model_<status>`, a placement refusal's reason — must be a member; the gateway
retries exactly the protocol's `RETRIABLE_CODES`.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
from typing import get_args

import pytest

from protocol.errors import RETRIABLE_CODES, ApiError, ErrorCode

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "cortex", "neuron")
CODES = {code.value for code in ErrorCode}


def _import_all() -> None:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if not info.name.endswith("__main__") and ".worker.main" not in info.name:
                importlib.import_module(info.name)


def _subclasses(cls: type) -> list[type]:
    return [c for s in cls.__subclasses__() for c in (s, *_subclasses(s))]


def test_every_api_error_class_code_is_a_wire_code():
    _import_all()
    stray = {c.__qualname__: c.code for c in _subclasses(ApiError)
             if c.code is not None and c.code not in CODES}  # fmt: skip
    assert stray == {}


def test_every_code_written_in_the_source_is_a_wire_code():
    written = {
        (str(path.relative_to(ROOT)), code)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "worker" not in path.parts  # the worker's own codes never reach the wire
        for code in re.findall(r'\bcode="([a-z_]+)"', path.read_text())
    }
    assert {(where, code) for where, code in written if code not in CODES} == set()


def test_boxed_worker_failures_model_statuses_and_placement_refusals_are_wire_codes():
    from cortex.placement import ImpossibleReason
    from protocol.node import ModelStatus
    from protocol.worker import FailureKind

    kinds = set(get_args(FailureKind)) - {"peer_lost"}  # delivered as worker_died
    statuses = {f"model_{s}" for s in get_args(ModelStatus) if s != "loaded"}
    reasons = {r.value for r in ImpossibleReason}
    assert kinds | statuses | reasons <= CODES


def test_the_gateway_retries_the_protocols_retriable_codes():
    from cortex import relay

    assert relay.RETRIABLE_CODES is RETRIABLE_CODES
    assert set(ErrorCode) >= RETRIABLE_CODES


@pytest.mark.parametrize("kind", ["capacity", "device_fault", "not_found"])
def test_a_boxed_failure_carries_its_kind_as_an_error_code(kind):
    from neuron.errors import JobFailed

    assert JobFailed(kind, "x", retriable=False).code == ErrorCode(kind)
