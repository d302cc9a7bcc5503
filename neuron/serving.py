"""Serving logic for the inference routes: request in, job out, events to bytes.

`Serving.chat_job` / `completion_job` turn a parsed request into a
`GenerationJob` (prompt rendered and tokenised in this process, sampling
resolved, output parser ready) or raise the request's 4xx;
`count_chat_tokens` renders and tokenises a chat prompt the same way without
generating. `stream` runs a job as a request actor and returns the SSE body
once the sequence has started — so a refusal (busy, restarting) is still an
HTTP error — with a comment keepalive whenever the stream is idle, and an
in-band error plus a final chunk if it fails later. `collect` runs a job in
the caller's task for non-streaming responses.

The streaming body is `protocol.streaming`'s, fed by the request actor (no
yield inside a nursery); a client that goes away — even before the body's
first step — cancels the actor, which cancels the sequence in its worker.
`SseRenderer` adapts a dialect's renderer (`neuron.render`) to it.

Not for: HTTP specifics (status codes, headers) — that is `neuron.http`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

import actors
from neuron.events import Failed, Finished, GenerationEvent, Started
from neuron.generation import GenerationJob, generate_choices
from neuron.metrics import NeuronMetrics
from neuron.registry import ModelRegistry, ServedModel
from neuron.text.constraints import chat_grammar
from neuron.text.images import ImageLimits, has_images
from neuron.text.output import OutputParser
from neuron.text.prompt import ChatPrompt
from neuron.text.reasoning import Markers, probe_markers
from neuron.text.sampling import SamplingRequest, resolve_sampling
from protocol import sse
from protocol.completions import CompletionRequest
from protocol.errors import InternalError, InvalidRequest, ServiceUnavailable
from protocol.node import TokenCount
from protocol.openai import ChatCompletionRequest
from protocol.streaming import END, IDLE, open_event_stream

# Requests whose images are decoded and preprocessed at once (each in its own thread).
IMAGE_THREADS = 2


class Renderer(Protocol):
    def start(self) -> bytes: ...
    def feed(self, event: GenerationEvent) -> bytes: ...
    def finish(self, event: Finished) -> bytes: ...
    def fail(self, event: Failed) -> bytes: ...


@attrs.frozen
class ServingSettings:
    keepalive_interval: float = 1.0  # SSE comment while a stream is idle
    default_max_tokens: int = 8192
    stream_buffer: int = 256  # events between actor and body: backpressure past this
    idle_timeout: float = math.inf  # `[timeouts] request_idle`: a sequence's longest silence
    constrain_tool_calls: bool = True  # `[engine]`: forced/strict calls obey a JSON grammar
    image_limits: ImageLimits = attrs.field(factory=ImageLimits)  # `[vision]`


class Serving:
    def __init__(
        self,
        registry: ModelRegistry,
        requests: actors.SupervisorRef,
        settings: ServingSettings,
        metrics: NeuronMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.requests = requests
        self.settings = settings
        self.metrics = metrics
        self._markers: dict[str, Markers] = {}
        self._images = trio.CapacityLimiter(IMAGE_THREADS)

    # -- building jobs ---------------------------------------------------------------------

    def markers(self, model: ServedModel) -> Markers:
        if model.id not in self._markers:
            self._markers[model.id] = probe_markers(model.tokenizer)
        return self._markers[model.id]

    def chat_job(
        self, request: ChatCompletionRequest, prompt: ChatPrompt | None = None
    ) -> GenerationJob:
        """The request's job; `prompt`: already built (`prepare_chat_job`)."""
        model = self.registry.get(request.model)
        markers = self.markers(model)
        prompt = prompt or self._chat_prompt(request, model, markers)
        grammar = chat_grammar(
            request, prompt, markers, constrain_tool_calls=self.settings.constrain_tool_calls
        )
        sampling = self._sampling(model, SamplingRequest.from_chat(request), prompt.token_ids)
        if grammar is not None:
            params = attrs.evolve(sampling.params, grammar=grammar)
            sampling = attrs.evolve(sampling, params=params)
        parser = prompt.output_parser(model.tokenizer, markers)
        job = GenerationJob(model, prompt.token_ids, sampling, parser, self.metrics,
                            idle_timeout=self.settings.idle_timeout,
                            inputs=prompt.inputs)  # fmt: skip
        return _with_copies(job, request.n, lambda: prompt.output_parser(model.tokenizer, markers))

    async def prepare_chat_job(self, request: ChatCompletionRequest) -> GenerationJob:
        """`chat_job`, with a request's images decoded and preprocessed in a thread
        (at most `IMAGE_THREADS` at once), never on the event loop."""
        return self.chat_job(request, await self._prompt_off_loop(request))

    async def prepare_chat_count(self, request: ChatCompletionRequest) -> TokenCount:
        """`count_chat_tokens`, images off the event loop as in `prepare_chat_job`."""
        return self.count_chat_tokens(request, await self._prompt_off_loop(request))

    async def _prompt_off_loop(self, request: ChatCompletionRequest) -> ChatPrompt | None:
        if not has_images(request.messages):
            return None  # built on the loop, as text prompts always are
        model = self.registry.get(request.model)
        markers = self.markers(model)
        return await trio.to_thread.run_sync(self._chat_prompt, request, model, markers,
                                             limiter=self._images)  # fmt: skip

    def count_chat_tokens(
        self, request: ChatCompletionRequest, prompt: ChatPrompt | None = None
    ) -> TokenCount:
        """The prompt tokens `request` costs, rendered exactly as `chat_job` renders it."""
        model = self.registry.get(request.model)
        prompt = prompt or self._chat_prompt(request, model, self.markers(model))
        return TokenCount(model=model.id, count=len(prompt.token_ids),
                          max_context=model.context_length)  # fmt: skip

    def _chat_prompt(self, request: ChatCompletionRequest, model: ServedModel, markers: Markers):
        return ChatPrompt.build(
            request, model.tokenizer, markers, images=model.images,
            image_limits=self.settings.image_limits, model_id=model.id,
        )  # fmt: skip

    def completion_job(self, request: CompletionRequest) -> GenerationJob:
        model = self.registry.get(request.model)
        prompt_ids = _completion_prompt(request, model)
        sampling = self._sampling(model, SamplingRequest.from_completion(request), prompt_ids)

        def parser() -> OutputParser:
            return OutputParser(
                model.tokenizer, Markers(), context=prompt_ids[-4:],
                hidden_ids=model.tokenizer.eos_token_ids,
            )  # fmt: skip

        job = GenerationJob(model, prompt_ids, sampling, parser(), self.metrics,
                            idle_timeout=self.settings.idle_timeout)  # fmt: skip
        return _with_copies(job, request.n, parser)

    def _sampling(self, model: ServedModel, request: SamplingRequest, prompt: tuple[int, ...]):
        return resolve_sampling(
            request,
            tokenizer=model.tokenizer,
            defaults=model.info.generation,
            prompt_len=len(prompt),
            context_len=model.context_length,
            vocab_size=model.info.vocab_size,
            default_max_tokens=self.settings.default_max_tokens,
        )

    # -- running jobs ----------------------------------------------------------------------

    async def stream(self, job: GenerationJob, renderer: Renderer, request_id: str):
        """Start `job`; once it has started, return its SSE body (else raise)."""
        stream = await open_event_stream(
            lambda send: self.requests.start_task(_produce, job, send, name=request_id,
                                                  kind="request"),
            keepalive=self.settings.keepalive_interval, first_timeout=math.inf,
            buffer=self.settings.stream_buffer,
        )  # fmt: skip
        first = stream.first
        if not isinstance(first, Started):
            stream.close()
            raise first.error if isinstance(first, Failed) else InternalError(
                "generation ended before it started")  # fmt: skip
        return stream.body(SseRenderer(renderer))

    async def collect(self, job: GenerationJob, request_id: str) -> list[GenerationEvent]:
        """Run `job` in this task (as a request actor) and return all its events.

        Cancelling the request actor (shutdown past its drain) ends the block
        quietly; the caller then gets a 503 rather than a partial reply.
        """
        send, receive = trio.open_memory_channel[GenerationEvent](math.inf)
        async with actors.open_task(self.requests, request_id, kind="request") as task:
            job.task = task
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_generate_then_close, job, send)
                return [event async for event in receive]
        raise ServiceUnavailable("the request was cancelled before it finished", retry_after=1,
                                 code="request_cancelled")  # fmt: skip


async def _generate_then_close(job: GenerationJob, send: trio.MemorySendChannel) -> None:
    async with send:
        await generate_choices(job, send)


async def _produce(task: Any, job: GenerationJob, send: trio.MemorySendChannel) -> None:
    job.task = task
    async with send:
        with contextlib.suppress(trio.BrokenResourceError):  # the client went away
            await generate_choices(job, send)


def _with_copies(job: GenerationJob, n: int | None, parser: Callable[[], Any]) -> GenerationJob:
    """n > 1: the other choices, each with a fresh parser and seed + index (when seeded)."""
    if not n or n == 1:
        return job
    params = job.sampling.params
    copies = []
    for index in range(1, n):
        seed = None if params.seed is None else (params.seed + index) % 2**64
        sampling = attrs.evolve(job.sampling, params=attrs.evolve(params, seed=seed))
        copies.append(attrs.evolve(job, sampling=sampling, parser=parser(), copies=()))
    job.copies = tuple(copies)
    return job


class SseRenderer:
    """A dialect's renderer driven by generation events: its opening bytes first, a
    comment keepalive whenever the stream is idle, an in-band failure at the end."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.done = False
        self._opened = False

    def render(self, event: Any) -> bytes:
        opening = b"" if self._opened else self.renderer.start()
        self._opened = True
        return opening + self._render(event)

    def _render(self, event: Any) -> bytes:
        if event is IDLE:
            return sse.KEEPALIVE
        if event is END:
            event = Failed(InternalError("generation ended without finishing"))
        if isinstance(event, Finished):
            self.done = True
            return self.renderer.finish(event)
        if isinstance(event, Failed):
            self.done = True
            return self.renderer.fail(event)
        return b"" if isinstance(event, Started) else self.renderer.feed(event)

    def closed(self) -> None:
        """Nothing to settle: the request actor counts its own outcome."""


def _completion_prompt(request: CompletionRequest, model: ServedModel) -> tuple[int, ...]:
    prompts = request.prompts
    if len(prompts) != 1:
        raise InvalidRequest("exactly one prompt per request is supported", param="prompt",
                             code="unsupported_value")  # fmt: skip
    prompt = prompts[0]
    ids = tuple(model.tokenizer.encode(prompt)) if isinstance(prompt, str) else tuple(prompt)
    if not ids:
        raise InvalidRequest("prompt is empty", param="prompt")
    if any(not 0 <= i < model.tokenizer.vocab_size for i in ids):
        raise InvalidRequest("prompt has token ids outside the vocabulary", param="prompt")
    return ids
