"""The gateway's recent traffic in memory, for the dashboard: a ring and a short series.

`Traffic.record` is handed each finished request's `cortex.metrics.RequestRecord`
(`CortexMetrics.on_finished`); it keeps the last `capacity` of them as rows (when,
route, model, node, outcome, tokens, time to first token, duration — never a
body, a key or a request id) and folds each into a ring of `bucket_s`-second
buckets covering the last `window_s` seconds (requests, errors, completion
tokens, time to first token). `to_dict()` is the body of `GET /admin/traffic`.
Everything starts empty when the gateway restarts; Prometheus (`/metrics`) is the
durable record.

Not for: requests in flight or queued — the dashboard reads those off
`/admin/fleet`, which has them per model from the nodes' own counts.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

from cortex.metrics import ERROR_OUTCOMES, RequestRecord

__all__ = ["Traffic"]


class _Bucket:
    __slots__ = ("completion_tokens", "errors", "requests", "start", "ttft_max", "ttft_sum",
                 "ttfts")  # fmt: skip

    def __init__(self, start: int) -> None:
        self.start = start
        self.requests = self.errors = self.completion_tokens = self.ttfts = 0
        self.ttft_sum = self.ttft_max = 0.0


class Traffic:
    def __init__(self, *, capacity: int = 200, window_s: int = 600, bucket_s: int = 10) -> None:
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self.bucket_s = bucket_s
        self.buckets: collections.deque[_Bucket] = collections.deque(maxlen=window_s // bucket_s)

    def record(self, record: RequestRecord, now: float | None = None) -> None:
        at = time.time() if now is None else now
        self.recent.append({
            "at": round(at, 3), "route": record.route, "model": record.model,
            "node": record.node, "outcome": record.outcome,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "ttft_s": _rounded(record.first_token), "duration_s": _rounded(record.duration),
            "cold_start": record.cold_start,
        })  # fmt: skip
        bucket = self._bucket(at)
        bucket.requests += 1
        bucket.errors += record.outcome in ERROR_OUTCOMES
        bucket.completion_tokens += record.completion_tokens
        if record.first_token is not None:
            bucket.ttfts += 1
            bucket.ttft_sum += record.first_token
            bucket.ttft_max = max(bucket.ttft_max, record.first_token)

    def _bucket(self, at: float) -> _Bucket:
        start = math.floor(at / self.bucket_s) * self.bucket_s
        if not self.buckets or self.buckets[-1].start < start:
            self.buckets.append(_Bucket(start))
        return self.buckets[-1]  # a clock stepped back: counted in the latest bucket

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """`series`: one point per bucket of the window, oldest first, empty ones too."""
        now = time.time() if now is None else now
        count = self.buckets.maxlen or 0
        last = math.floor(now / self.bucket_s) * self.bucket_s
        by_start = {b.start: b for b in self.buckets}
        starts = [last - self.bucket_s * i for i in reversed(range(count))]
        return {
            "bucket_s": self.bucket_s,
            "window_s": self.bucket_s * count,
            "series": [self._point(start, by_start.get(start)) for start in starts],
            "recent": list(reversed(self.recent)),  # newest first
        }

    def _point(self, start: int, bucket: _Bucket | None) -> dict[str, Any]:
        if bucket is None:
            return {"at": start, "requests": 0, "errors": 0, "tokens_per_s": 0.0,
                    "ttft_avg_s": None, "ttft_max_s": None}  # fmt: skip
        ttft = bucket.ttft_sum / bucket.ttfts if bucket.ttfts else None
        return {
            "at": start, "requests": bucket.requests, "errors": bucket.errors,
            "tokens_per_s": round(bucket.completion_tokens / self.bucket_s, 3),
            "ttft_avg_s": _rounded(ttft),
            "ttft_max_s": _rounded(bucket.ttft_max) if bucket.ttfts else None,
        }  # fmt: skip


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)
