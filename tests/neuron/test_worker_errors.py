"""`retriable` has one spelling, from the worker's compute errors to the wire."""

from __future__ import annotations

import pathlib
import re

import pytest

from neuron.worker import errors
from neuron.worker.service import _retriable

RETRIABLE = [errors.DeviceFault, errors.DeviceOutOfMemory, errors.CapacityExceeded,
             errors.BatchFull, errors.KvBudgetExceeded]  # fmt: skip
FINAL = [errors.PromptTooLong, errors.RequestTooLarge, errors.ModelNotFound, errors.LoadFailed]


@pytest.mark.parametrize("cls", RETRIABLE)
def test_capacity_and_device_faults_are_boxed_retriable(cls):
    assert cls.retriable
    assert _retriable(cls("x"))


@pytest.mark.parametrize("cls", FINAL)
def test_other_errors_are_boxed_final(cls):
    assert not _retriable(cls("x"))


def test_a_subclass_that_sets_retriable_is_boxed_retriable():
    class Full(errors.EngineError):
        retriable = True

    assert _retriable(Full("x"))
    assert not _retriable(ValueError("x"))


def test_no_second_spelling_in_the_packages():
    root = pathlib.Path(__file__).resolve().parents[2]
    spelled = [
        f"{path.relative_to(root)}:{n}"
        for package in ("actors", "cortex", "neuron", "protocol")
        for path in sorted((root / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"retryable", line, re.IGNORECASE)
    ]
    assert spelled == []


def test_a_boxed_worker_failure_is_an_api_error_retriable_as_the_worker_said():
    from neuron.errors import JobFailed, SequenceFailed

    retry = SequenceFailed("capacity", "full", retriable=True)
    final = JobFailed("bad_request", "no", retriable=False)
    assert retry.retriable and retry.retry_after == 1
    assert not final.retriable and final.retry_after is None
