"""One generation, from token ids to typed events: the neuron's hot path.

`generate` takes a slot from the model's admission, submits the prompt to
the model's device worker, and turns each engine step's token ids into
`neuron.events` — through the request's `OutputParser` (reasoning, tool
calls, incremental detokenisation) and its stop strings — sending them to a
channel the renderer reads. It owns the sequence: whatever way it ends
(finished, stop string, client gone, error), the worker's slot is given back.

Every outcome is an event: a `Failed` before `Started` is a refusal (the
caller answers with an HTTP error), a `Failed` after it is reported in-band
by a stream that already began. Every outcome is also counted in the job's
`NeuronMetrics`: a refusal by reason, a generation by how it ended
(`stop`, `length`, `tool_calls`, `error`, or `abort` when the reader went
away or the job was cancelled). Not for: prompt building or wire formats.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from neuron.events import (
    ChoiceEvent,
    ContentDelta,
    Failed,
    Finished,
    GenerationEvent,
    LogprobsDelta,
    Started,
    TokenLogprob,
    ToolCallParsed,
)
from neuron.metrics import NeuronMetrics, refusal_reason
from neuron.registry import ServedModel
from neuron.text.output import OutputParser
from neuron.text.sampling import ResolvedSampling
from neuron.text.stop import StopMatcher
from protocol.errors import ApiError, GatewayTimeout, InternalError
from protocol.worker import RawTensor

log = logging.getLogger(__name__)


@attrs.define
class GenerationJob:
    """Everything one generation needs; built by the serving code per request."""

    model: ServedModel
    prompt_ids: tuple[int, ...]
    sampling: ResolvedSampling
    parser: OutputParser
    metrics: NeuronMetrics | None = None  # where the outcome is counted (optional)
    task: Any = None  # the request's task actor, for status fields (optional)
    arrived_at: float = attrs.field(factory=trio.current_time)
    idle_timeout: float = math.inf  # `[timeouts] request_idle`: longest wait for a step
    # n > 1: the other choices' jobs (index 1, 2, ...), same prompt, own parser and seed.
    copies: tuple[GenerationJob, ...] = ()
    # Extra CPU tensors for the worker: a vision model's images (neuron.text.images).
    inputs: Mapping[str, RawTensor] = attrs.field(factory=dict)
    # Set once the prompt is prefilled (the first step came) or the job ended: n > 1
    # starts the other choices then, so they find the prompt in the prefix cache.
    prefilled: trio.Event | None = None

    def status(self, **fields: Any) -> None:
        if self.task is not None:
            self.task.set_status(**fields)

    def admitted(self) -> None:
        if self.metrics is not None:
            self.metrics.request_queue_time.labels(self.model.id).observe(
                trio.current_time() - self.arrived_at
            )

    def refused(self, error: ApiError) -> None:
        if self.metrics is not None:
            self.metrics.request_refused(self.model.id, refusal_reason(error))


class _Progress:
    """Counts and clocks of one generation."""

    def __init__(self, job: GenerationJob) -> None:
        self.job = job
        self.stops = StopMatcher(job.sampling.stop_strings)
        self.completion_tokens = 0
        self.tool_calls = 0
        self.submitted_at = trio.current_time()
        self.first_token_at: float | None = None
        self.last_token: int | None = None
        self.cached_tokens = 0  # prompt tokens the worker's prefix cache supplied

    def step(self, token_ids: tuple[int, ...], logprobs: Any = ()) -> list[GenerationEvent]:
        if token_ids and self.first_token_at is None:
            self.first_token_at = trio.current_time()
        self.completion_tokens += len(token_ids)
        if token_ids:
            self.last_token = token_ids[-1]
        events = self._filter(self.job.parser.feed(token_ids))
        if self.job.sampling.params.logprobs is not None and token_ids:
            entries = [logprobs.popleft() for _ in token_ids if logprobs]
            if entries and self.stops.matched is None:
                events.insert(0, self._logprobs(entries))
        return events

    def _logprobs(self, entries: list) -> LogprobsDelta:
        """Token texts for the worker's (id, logprob, top) entries."""
        tokenizer = self.job.model.tokenizer

        def token(token_id: int, logprob: float, top=()) -> TokenLogprob:
            text = tokenizer.decode([token_id], skip_special_tokens=False)
            return TokenLogprob(text, logprob, tuple(text.encode()), top)

        return LogprobsDelta(tuple(
            token(e.token_id, e.logprob, tuple(token(i, lp) for i, lp in e.top))
            for e in entries
        ))  # fmt: skip

    def finish(self) -> list[GenerationEvent]:
        events = self._filter(self.job.parser.finish())
        if self.stops.matched is None and (held := self.stops.finish()):
            events.append(ContentDelta(held))
        return events

    def _filter(self, events: list) -> list[GenerationEvent]:
        """Apply stop strings to content; count tool calls."""
        out: list[GenerationEvent] = []
        for event in events:
            if self.stops.matched is not None:
                break
            if isinstance(event, ContentDelta):
                scan = self.stops.push(event.text)
                if scan.text:
                    out.append(ContentDelta(scan.text))
                continue
            if isinstance(event, ToolCallParsed):
                self.tool_calls += 1
            out.append(event)
        return out

    def record(self, outcome: str) -> None:
        """Count this generation in the job's metrics, however it ended."""
        job = self.job
        if job.metrics is None:
            return
        now = trio.current_time()
        first = self.first_token_at
        job.metrics.request_finished(
            job.model.id, outcome, prompt_tokens=len(job.prompt_ids),
            generation_tokens=self.completion_tokens, e2e_seconds=now - job.arrived_at,
            first_token_seconds=None if first is None else first - self.submitted_at,
            queue_seconds=self.submitted_at - job.arrived_at,
        )  # fmt: skip

    def finished(self, worker_reason: str | None) -> Finished:
        now = trio.current_time()
        first = self.first_token_at or now
        stop_sequence = self.stops.matched
        if stop_sequence is None and worker_reason == "stop":
            stop_sequence = self.job.sampling.stop_token_strings.get(self.last_token)
        if worker_reason == "length" and stop_sequence is None:
            reason = "length"
        elif self.tool_calls and stop_sequence is None:
            reason = "tool_calls"
        else:
            reason = "stop"
        return Finished(
            reason=reason,
            prompt_tokens=len(self.job.prompt_ids),
            completion_tokens=self.completion_tokens,
            reasoning_tokens=self.job.parser.reasoning_tokens,
            cached_tokens=self.cached_tokens,
            stop_sequence=stop_sequence,
            prefill_ms=(first - self.submitted_at) * 1000,
            decode_ms=(now - first) * 1000,
        )


async def generate(job: GenerationJob, send: trio.MemorySendChannel[GenerationEvent]) -> None:
    """Run `job` to its end, sending events to `send`.

    A refusal before the sequence starts (busy, worker restarting, bad
    request) is sent as a `Failed` before any `Started`.
    """
    job.status(phase="queued", model=job.model.id)
    try:
        await _run(job, send)
    finally:
        if job.prefilled is not None:
            job.prefilled.set()


async def _run(job: GenerationJob, send: trio.MemorySendChannel[GenerationEvent]) -> None:
    try:
        async with job.model.admission.slot():
            job.admitted()
            job.status(phase="prefill")
            progress = _Progress(job)
            stream = await job.model.device.generate(
                job.model.id, job.prompt_ids, job.sampling.params, job.inputs
            )
            outcome = "abort"  # unless the relay ends: the reader went away, or cancelled
            try:
                await send.send(Started(len(job.prompt_ids)))
                outcome = await _relay(job, progress, stream, send)
            finally:
                progress.record(outcome)
                await stream.aclose()
    except ApiError as exc:  # refused before the sequence started
        job.refused(exc)
        await send.send(Failed(exc, len(job.prompt_ids)))


async def generate_choices(
    job: GenerationJob, send: trio.MemorySendChannel[GenerationEvent]
) -> None:
    """`generate`, or for a job with `copies` (n > 1) every choice at once.

    With copies, the sequences run side by side, each its own worker sequence. When
    the model keeps a prefix cache, the copies start once the first choice's prompt is
    prefilled, so each finds it there and prefills only its last token (else they
    start together and their prompts are prefilled as one packed batch). A refusal of any is
    the request's refusal (`Failed` before `Started`, the others cancelled). Then one
    `Started`, each choice's events as `ChoiceEvent`s in the order they come, its
    `Finished` included, and a last `Finished` whose counts cover every choice; a
    `Failed` of any choice ends the request in-band.
    """
    jobs = (job, *job.copies)
    if len(jobs) == 1:
        await generate(job, send)
        return
    if job.model.prefix_cache_bytes and not job.inputs:
        job.prefilled = trio.Event()
    async with trio.open_nursery() as nursery:
        receives = []
        for each in jobs:
            sub_send, sub_receive = trio.open_memory_channel[GenerationEvent](math.inf)
            after = None if each is job else job.prefilled
            nursery.start_soon(_generate_into, each, sub_send, after)
            receives.append(sub_receive)
        firsts = [await receive.receive() for receive in receives]
        if refusal := next((e for e in firsts if not isinstance(e, Started)), None):
            nursery.cancel_scope.cancel()
            await send.send(refusal)
            return
        await send.send(firsts[0])
        merged_send, merged_receive = trio.open_memory_channel[ChoiceEvent](math.inf)
        async with merged_send:
            for index, receive in enumerate(receives):
                nursery.start_soon(_tag, index, receive, merged_send.clone())
        finished: list[Finished] = []
        async for item in merged_receive:
            if isinstance(item.event, Failed):
                nursery.cancel_scope.cancel()
                await send.send(item.event)
                return
            await send.send(item)
            if isinstance(item.event, Finished):
                finished.append(item.event)
        await send.send(_all_finished(finished))


async def _generate_into(
    job: GenerationJob, send: trio.MemorySendChannel, after: trio.Event | None
) -> None:
    async with send:
        if after is not None:
            await after.wait()
        await generate(job, send)


async def _tag(index: int, receive: trio.MemoryReceiveChannel, send: trio.MemorySendChannel):
    async with send, receive:
        async for event in receive:
            await send.send(ChoiceEvent(index, event))


def _all_finished(finished: list[Finished]) -> Finished:
    """The request's usage over all choices: the prompt once, every completion."""
    first = finished[0]
    return attrs.evolve(
        first,
        completion_tokens=sum(f.completion_tokens for f in finished),
        reasoning_tokens=sum(f.reasoning_tokens for f in finished),
        decode_ms=max(f.decode_ms for f in finished),
    )


class RequestIdle(GatewayTimeout):
    """A sequence went `[timeouts] request_idle` without a step: it is cancelled."""

    code = "request_idle_timeout"


async def _next_step(stream: Any, idle_timeout: float) -> Any:
    """The stream's next step, None at its end; RequestIdle after `idle_timeout` of nothing."""
    with trio.move_on_after(idle_timeout):
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None
    raise RequestIdle(
        f"no token for {idle_timeout:g} s: the generation stalled and was cancelled"
        " ([timeouts] request_idle)"
    )


async def _relay(
    job: GenerationJob, progress: _Progress, stream: Any, send: trio.MemorySendChannel
) -> str:
    """Relay the sequence's steps as events; return how it ended."""
    worker_reason: str | None = None
    try:
        while (step := await _next_step(stream, job.idle_timeout)) is not None:
            progress.cached_tokens = getattr(stream, "cached_tokens", 0)
            logprobs = getattr(stream, "logprobs", ())
            if job.prefilled is not None:
                job.prefilled.set()
            for event in progress.step(step.token_ids, logprobs):
                await send.send(event)
            job.status(phase="streaming", tokens=progress.completion_tokens)
            worker_reason = step.finish_reason
            if progress.stops.matched is not None:
                break  # `finally` in `generate` cancels the sequence in the worker
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise  # the reader is gone (client disconnected): nobody to tell
    except ApiError as exc:
        await send.send(Failed(exc, len(job.prompt_ids), progress.completion_tokens))
        return "error"
    except Exception as exc:  # the request boundary: report in-band, keep serving
        log.exception("generation failed model=%s", job.model.id)
        error = InternalError(f"generation failed: {exc}")
        await send.send(Failed(error, len(job.prompt_ids), progress.completion_tokens))
        return "error"
    for event in progress.finish():
        await send.send(event)
    finished = progress.finished(worker_reason)
    await send.send(finished)
    return finished.reason
