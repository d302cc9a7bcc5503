"""`cortex.traffic.Traffic`: the dashboard's ring of recent requests and its 10 s series."""

from __future__ import annotations

from cortex.metrics import RequestRecord
from cortex.traffic import Traffic

T0 = 1_800_000_000.0  # a wall-clock second on a bucket boundary


def record(outcome: str = "ok", tokens: int = 10, first: float | None = 0.5) -> RequestRecord:
    return RequestRecord(route="/v1/chat/completions", model="m", node="n1", outcome=outcome,
                         duration=1.0, first_token=first, prompt_tokens=3,
                         completion_tokens=tokens)  # fmt: skip


def test_recent_rows_are_newest_first_and_bounded_with_no_body_or_key():
    traffic = Traffic(capacity=3)
    for i in range(5):
        traffic.record(record(tokens=i), now=T0 + i)
    recent = traffic.to_dict(now=T0 + 5)["recent"]
    assert [r["completion_tokens"] for r in recent] == [4, 3, 2]
    assert set(recent[0]) == {"at", "route", "model", "node", "outcome", "prompt_tokens",
                              "completion_tokens", "ttft_s", "duration_s",
                              "cold_start"}  # fmt: skip


def test_series_sums_tokens_per_bucket_and_averages_ttft_and_fills_gaps():
    traffic = Traffic(window_s=60, bucket_s=10)
    traffic.record(record(tokens=20, first=0.2), now=T0 + 1)
    traffic.record(record(tokens=30, first=0.4), now=T0 + 9)
    traffic.record(record(outcome="upstream_error", tokens=0, first=None), now=T0 + 25)
    body = traffic.to_dict(now=T0 + 55)
    series = body["series"]
    assert (body["bucket_s"], body["window_s"], len(series)) == (10, 60, 6)
    assert [p["at"] for p in series] == [T0 + 10 * i for i in range(6)]
    first, _, third = series[0], series[1], series[2]
    assert (first["requests"], first["tokens_per_s"], first["ttft_max_s"]) == (2, 5.0, 0.4)
    assert abs(first["ttft_avg_s"] - 0.3) < 1e-9
    assert series[1] == {"at": T0 + 10, "requests": 0, "errors": 0, "tokens_per_s": 0.0,
                         "ttft_avg_s": None, "ttft_max_s": None}  # fmt: skip
    assert (third["requests"], third["errors"], third["ttft_avg_s"]) == (1, 1, None)


def test_buckets_older_than_the_window_drop_out():
    traffic = Traffic(window_s=30, bucket_s=10)
    traffic.record(record(), now=T0)
    traffic.record(record(), now=T0 + 100)
    series = traffic.to_dict(now=T0 + 100)["series"]
    assert sum(p["requests"] for p in series) == 1
    assert len(traffic.buckets) == 2  # bounded by the window's bucket count (3)
