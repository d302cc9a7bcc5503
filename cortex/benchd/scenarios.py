"""The scenarios: what each sample sends, and which row fields it measures.

Ids are upstream's and are the skip key: `chat:<n>` (a ~n-token prompt, 4
characters a token, then a ~300-word story request ending `/no_think`;
streamed, temperature 0; ours: each prompt opens with a unique ticket number,
so a server's prefix cache cannot turn a repeated sample into a warm one),
`concurrency:<n>` (n simultaneous streams of the `concurrency_prompt_tokens`
prompt: median and p95 TTFT, node throughput = all completion tokens over the
burst window, median queue wait = TTFT - the server's prefill time, and
429/503 counted as shed, not failed), `swap`
(unload → timed reload → a cold probe; neuron targets, unpinned models),
`capability:<name>` (a fixed prompt whose answer is stored for scoring), and
ours: `prefix:<n>` (an agent-style ~n-token system prompt sent twice with
different questions: the second's TTFT and `cached_tokens`, and the first's
as `ttft_cold_s`) and `image:<px>` (a pxxpx PNG in a chat request, for models
that take images: the `vision` capability, or `image` beside `text`, as helexa's
vision-language models advertise). Text scenarios skip models that advertise
`image` without `text` (generation). A scenario that does not apply says why
(`Scenario.skip_reason`); the sweep records it.

Not for: deciding what is already measured (`sweep`) or timing (`measure`).
"""

from __future__ import annotations

import base64
import struct
import uuid
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import attrs
import trio

from cortex.benchd.config import CapabilityProbe, Scenarios
from cortex.benchd.errors import RequestFailed, Shed
from cortex.benchd.measure import Measurement, median, p95, stream_chat
from cortex.benchd.target import ModelEntry, TargetClient

__all__ = ["Capability", "Chat", "Concurrency", "Context", "Image", "Prefix", "Scenario",
           "Swap", "plan", "png"]  # fmt: skip

CHARS_PER_TOKEN = 4
_FILLER = ("The committee reviewed the quarterly figures, noted the steady growth in "
           "northern depots, and asked for a breakdown of freight costs by route. ")  # fmt: skip
_STORY = ("\n\nNow write a story of about 300 words about a lighthouse keeper who finds "
          "a message in a bottle. /no_think")  # fmt: skip
_AGENT = ("You are a coding agent. Tools: read_file(path), write_file(path, text), run(cmd). "
          "Rules: explain each step; never delete files; keep answers short. ")  # fmt: skip
_QUESTIONS = ("List the files you would read first. /no_think",
              "Which command runs the tests? /no_think")  # fmt: skip


def fresh() -> str:
    """A unique opening, so that no sample's prompt shares a prefix with an earlier one:
    chat:<n> measures a cold prefill even on a server that caches prefixes (prefix:<n> is
    where caching is measured)."""
    return f"Ticket {uuid.uuid4().hex[:12]}. "


def filler(tokens: int, text: str = _FILLER) -> str:
    """About `tokens` tokens of deterministic prose."""
    chars = tokens * CHARS_PER_TOKEN
    return (text * (chars // len(text) + 1))[:chars]


def chat_body(model: str, content: Any, max_tokens: int, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"model": model, "messages": [*messages, {"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip


@attrs.frozen
class Context:
    """What a scenario needs to send a request."""

    client: TargetClient
    scenarios: Scenarios
    timeout: float

    async def stream(self, body: dict) -> Measurement:
        with trio.fail_after(self.timeout):
            return await stream_chat(self.client.http, self.client.chat_url, body,
                                     self.client.headers)  # fmt: skip


class Scenario(Protocol):
    id: str
    warmup: bool

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None: ...

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]: ...


def _text_only(model: ModelEntry) -> str | None:
    if "image" in model.capabilities and "text" not in model.capabilities:
        return "text scenarios skip image-generation models"
    return None


def takes_images(capabilities: tuple[str, ...]) -> bool:
    """Images in: upstream's `vision`, or helexa's `text` + `image` (a generation
    model advertises `image` alone)."""
    return "vision" in capabilities or {"text", "image"} <= set(capabilities)


def _measured(m: Measurement) -> dict[str, Any]:
    return {"ttft_s": m.ttft_s, "decode_tps": m.decode_tps, "total_s": m.total_s,
            "completion_tokens": m.completion_tokens, "prompt_tokens_actual": m.prompt_tokens,
            "prefill_tokens": m.prompt_tokens, "prefill_ms": m.prefill_ms,
            "decode_ms": m.decode_ms, "cached_tokens": m.cached_tokens}  # fmt: skip


@attrs.frozen
class Chat:
    size: int
    warmup: bool = True

    @property
    def id(self) -> str:
        return f"chat:{self.size}"

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        return _text_only(model)

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        max_tokens = ctx.scenarios.max_tokens
        prompt = fresh() + filler(self.size) + _STORY
        m = await ctx.stream(chat_body(model.served_id, prompt, max_tokens))
        return {**_measured(m), "prompt_size_approx": self.size, "max_tokens": max_tokens}


@attrs.frozen
class Concurrency:
    level: int
    warmup: bool = True

    @property
    def id(self) -> str:
        return f"concurrency:{self.level}"

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        return _text_only(model)

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        size, max_tokens = ctx.scenarios.concurrency_prompt_tokens, ctx.scenarios.max_tokens
        done: list[Measurement] = []
        shed: list[Shed] = []
        failed: list[RequestFailed] = []

        async def one() -> None:
            body = chat_body(model.served_id, fresh() + filler(size) + _STORY, max_tokens)
            try:
                done.append(await ctx.stream(body))
            except Shed as exc:
                shed.append(exc)
            except (RequestFailed, trio.TooSlowError) as exc:
                failed.append(exc if isinstance(exc, RequestFailed) else
                              RequestFailed(f"no answer within {ctx.timeout}s"))  # fmt: skip

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(self.level):
                nursery.start_soon(one)
        window = trio.current_time() - start
        if failed:
            raise RequestFailed(f"{len(failed)} of {self.level} streams failed: {failed[0]}")
        if not done:
            raise RequestFailed(f"all {self.level} streams were shed: {shed[0]}")
        return _burst(done, len(shed), window, size, max_tokens, self.level)


def _burst(done: list[Measurement], shed: int, window: float, size: int, max_tokens: int,
           level: int) -> dict[str, Any]:  # fmt: skip
    ttfts = [m.ttft_s for m in done if m.ttft_s is not None]
    waits = [m.ttft_s * 1000 - m.prefill_ms for m in done
             if m.ttft_s is not None and m.prefill_ms is not None]  # fmt: skip
    tokens = sum(m.completion_tokens for m in done)
    return {"ttft_s": median(ttfts), "ttft_p95_s": p95(ttfts), "total_s": window,
            "decode_tps": tokens / window if window > 0 else None, "completion_tokens": tokens,
            "queue_wait_ms": median(waits), "rejected": shed, "concurrency": level,
            "prompt_size_approx": size, "max_tokens": max_tokens,
            "prompt_tokens_actual": done[0].prompt_tokens}  # fmt: skip


@attrs.frozen
class Prefix:
    size: int
    warmup: bool = False  # the cold first request is part of the measurement

    @property
    def id(self) -> str:
        return f"prefix:{self.size}"

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        return _text_only(model)

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        system, max_tokens = filler(self.size, _AGENT), ctx.scenarios.max_tokens
        cold = await ctx.stream(chat_body(model.served_id, _QUESTIONS[0], max_tokens, system))
        warm = await ctx.stream(chat_body(model.served_id, _QUESTIONS[1], max_tokens, system))
        return {**_measured(warm), "ttft_cold_s": cold.ttft_s, "prompt_size_approx": self.size,
                "max_tokens": max_tokens}  # fmt: skip


@attrs.frozen
class Capability:
    probe: CapabilityProbe
    warmup: bool = False

    @property
    def id(self) -> str:
        return f"capability:{self.probe.name}"

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        return _text_only(model)

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        m = await ctx.stream(chat_body(model.served_id, self.probe.prompt, self.probe.max_tokens))
        return {**_measured(m), "max_tokens": self.probe.max_tokens, "artifact": m.text}


@attrs.frozen
class Image:
    px: int
    warmup: bool = True

    @property
    def id(self) -> str:
        return f"image:{self.px}"

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        if not takes_images(model.capabilities):
            return "the model does not take images (no vision, or image and text, capability)"
        return None

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        url = "data:image/png;base64," + base64.b64encode(png(self.px)).decode()
        content = [{"type": "text", "text": "Describe this image in one sentence. /no_think"},
                   {"type": "image_url", "image_url": {"url": url}}]  # fmt: skip
        m = await ctx.stream(chat_body(model.served_id, content, ctx.scenarios.max_tokens))
        return {**_measured(m), "max_tokens": ctx.scenarios.max_tokens}


def png(px: int) -> bytes:
    """A pxxpx grey gradient PNG (RGB, 8 bit), standard library only."""
    rows = b"".join(b"\x00" + bytes((y * 255 // max(px - 1, 1),) * 3) * px for y in range(px))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", px, px, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip


@attrs.frozen
class Swap:
    id: str = "swap"
    warmup: bool = False

    def skip_reason(self, client: TargetClient, model: ModelEntry) -> str | None:
        if client.target.kind != "neuron":
            return f"a swap needs a neuron's load API; this target is {client.target.kind!r}"
        if model.pinned:
            return "the model is pinned on its node ([[models]] pinned = true)"
        return _text_only(model)

    async def run(self, ctx: Context, model: ModelEntry) -> dict[str, Any]:
        with trio.fail_after(ctx.timeout):
            unload_ms, load_ms = await ctx.client.swap(model)
        size, max_tokens = ctx.scenarios.swap_probe_tokens, ctx.scenarios.max_tokens
        prompt = fresh() + filler(size) + _STORY
        m = await ctx.stream(chat_body(model.served_id, prompt, max_tokens))
        return {**_measured(m), "swap_unload_ms": unload_ms, "swap_load_ms": load_ms,
                "prompt_size_approx": size, "max_tokens": max_tokens}  # fmt: skip


def plan(scenarios: Scenarios, *, swap: bool) -> Iterator[Scenario]:
    """The configured scenarios, in sweep order; `swap` adds the swap scenario."""
    yield from (Chat(n) for n in scenarios.prompt_sizes)
    yield from (Concurrency(n) for n in scenarios.concurrency_levels)
    yield from (Prefix(n) for n in scenarios.prefix_sizes)
    yield from (Capability(p) for p in scenarios.capability_probes)
    yield from (Image(px) for px in scenarios.image_sizes)
    if swap:
        yield Swap()
