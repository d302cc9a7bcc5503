"""Tensor parallelism on a real `neuron serve`: one model over two CPU device workers.

One daemon (module-scoped: its start-up and the group formations dominate the
time) serves the synthesized tiny Qwen3 (4 heads, 2 KV heads) twice: as
`helexa/qwen3-one` on one device (`tensor_parallel = 1`) and as
`helexa/qwen3-two` over `cpu:0` and `cpu:1` (`tensor_parallel = 2`, gloo). The
tests hold the TP model to the TP=1 one — greedy output token-identical, alone
and 8 at once, and on a prefix-cache hit (the daemon's default cache is on) —
and check each rank's measured bytes, the group failing and coming back as a
whole when either rank is SIGKILLed, or rank 1 SIGSTOPped (wedged), mid-stream,
and unload / reload. Last, the synthetic Qwen3-VL takes the group's place: image
requests at TP = 2 are greedy-identical to TP = 1.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import psutil
import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    QWEN,
    Models,
    chat_body,
    next_data,
    open_sse,
    sse_events,
    start_daemon,
    wait_for,
)

PIL_Image = pytest.importorskip("PIL.Image")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

SMALL = "helexa/qwen3-one"  # tensor_parallel = 1
TP = "helexa/qwen3-two"  # the same snapshot, tensor_parallel = 2
VL_ONE, VL_TWO = "helexa/qwen3_vl-one", "helexa/qwen3_vl-two"  # Qwen3-VL, TP 1 and 2
NO_EOS = {"4089": -100, "4087": -100}
HEARTBEAT = 3  # [timeouts] worker_heartbeat: a stopped rank is killed after this silence
_RENDEZVOUS = re.compile(
    r"model=helexa/qwen3-two devices=cpu:0,cpu:1 rendezvous=tcp://127\.0\.0\.1:(\d+)"
)


@pytest.fixture(scope="module")
def tp_daemon(daemon_models: Models, synth_snapshot, tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-models")
    for name in (SMALL, TP):  # the session's tiny Qwen3, under two names
        shutil.copytree(daemon_models.root / QWEN, root / name)
    for name in (VL_ONE, VL_TWO):  # the synthetic Qwen3-VL, loaded by the last test
        shutil.copytree(synth_snapshot("qwen3_vl"), root / name)
    daemon = start_daemon(
        tmp_path_factory.mktemp("neuron-tp"),
        Models(root),
        default_models=(
            {"id": TP, "tensor_parallel": 2, "devices": ["cpu:0", "cpu:1"]},
            {"id": SMALL, "devices": ["cpu:1"]},
        ),
        settings={"timeouts": {"worker_heartbeat": HEARTBEAT}},
    )
    try:
        yield daemon
    finally:
        daemon.stop()


def prompts(n: int) -> list[str]:
    return [f"request {i}: " + " ".join(["tensor", "parallel", "words"][: 1 + i % 3] * (i + 1))
            for i in range(n)]  # fmt: skip


async def complete(client, model: str, content: str, max_tokens: int = 12) -> list[str]:
    body = chat_body(content, model=model, max_tokens=max_tokens, temperature=0,
                     logprobs=False, logit_bias=NO_EOS)  # fmt: skip
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


async def test_greedy_output_matches_tensor_parallel_1_alone_and_eight_at_once(tp_daemon):
    texts = prompts(8)
    async with tp_daemon.async_http(timeout=120) as client:
        reference = [await complete(client, SMALL, text) for text in texts]
        assert await complete(client, TP, texts[0]) == reference[0]
        together: dict[int, str] = {}

        async def one(i: int) -> None:
            together[i] = await complete(client, TP, texts[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(texts)):
                nursery.start_soon(one, i)
    assert [together[i] for i in range(len(texts))] == reference
    assert len(set(reference)) > 1  # the prompts lead to different outputs


async def test_prefix_cache_hits_on_every_rank_alike(tp_daemon):
    """Each rank's engine keeps its own prefix cache (of its shard's K/V); the ranks
    see the same admissions in the same order, so they hit alike, and a hit is
    greedy-identical to TP = 1. A rank that missed where the lead hit would run a
    different forward and the collective, or the output, would show it."""
    shared = f"Session {uuid.uuid4().hex}. " + "The quick brown fox jumps over the lazy dog. " * 15
    usages = []

    async def chat(client, model: str, question: str) -> str:
        messages = [{"role": "system", "content": shared}, {"role": "user", "content": question}]
        body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0,
                "logit_bias": NO_EOS}  # fmt: skip
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        if model == TP:
            usages.append(response.json()["usage"])
        return response.json()["choices"][0]["message"]["content"]

    questions = ["Summarise that.", "Now say it backwards, in French."]
    async with tp_daemon.async_http(timeout=120) as client:
        reference = [await chat(client, SMALL, q) for q in questions]
        assert [await chat(client, TP, q) for q in questions] == reference
    first, second = usages
    assert first["prompt_tokens"] > 100 and first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] >= 0.8 * first["prompt_tokens"]
    assert second["helexa_timing"]["prefill_tokens"] < second["prompt_tokens"] / 4


def test_each_rank_holds_half_the_sharded_weights(tp_daemon):
    models = {m["id"]: m for m in tp_daemon.get("/models")}
    tp, whole = models[TP], models[SMALL]
    assert tp["devices"] == [0, 1] and tp["status"] == "loaded"
    ranks = tp["device_memory_bytes"]
    assert len(ranks) == 2 and tp["memory_bytes"] == sum(ranks)
    replicated, sharded = _weight_split(Path(tp["path"]))
    assert abs(whole["memory_bytes"] - (replicated + sharded)) <= 0.01 * whole["memory_bytes"]
    for rank_bytes in ranks:
        assert abs(rank_bytes - replicated - sharded / 2) <= 0.1 * sharded / 2, (ranks, sharded)
    health = {d["id"]: d for d in tp_daemon.health()["devices"]}  # counted on each device
    assert health["cpu:0"]["vram_used_mb"] == ranks[0] >> 20
    assert health["cpu:1"]["vram_used_mb"] == (ranks[1] + whole["memory_bytes"]) >> 20


def _weight_split(snapshot: Path) -> tuple[int, int]:
    """(replicated, sharded) weight bytes: the plan splits the layers' projections."""
    from safetensors import safe_open

    replicated = sharded = 0
    for file in snapshot.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                size = weights.get_slice(name)
                nbytes = 4 if size.get_dtype() == "F32" else 2
                count = 1
                for dim in size.get_shape():
                    count *= dim
                projection = re.search(r"\.(q|k|v|o|gate|up|down)_proj\.", name)
                if projection:
                    sharded += count * nbytes
                else:
                    replicated += count * nbytes
    return replicated, sharded


@pytest.mark.parametrize(
    ("rank", "sent", "within"),
    [
        (1, signal.SIGKILL, 1.0),
        (0, signal.SIGKILL, 1.0),
        # Wedged: alive but stuck (rank 0 then waits in a collective, beating on);
        # the stopped rank's heartbeat watchdog catches it.
        (1, signal.SIGSTOP, HEARTBEAT + 2.0),
    ],
    ids=["sigkill-rank1", "sigkill-rank0", "sigstop-rank1"],
)
async def test_a_rank_killed_or_wedged_fails_the_group_in_band_and_it_comes_back(
    tp_daemon, rank, sent, within
):
    before = _rank_pids(tp_daemon)
    formations = _rendezvous_ports(tp_daemon)
    port = formations[-1]
    body = chat_body("a long one", model=TP, max_tokens=2000, stream=True, logit_bias=NO_EOS)
    async with (
        tp_daemon.async_http(timeout=60) as client,
        open_sse(client, "/v1/chat/completions", body) as (_, lines),
    ):
        await next_data(lines)
        await next_data(lines)  # decoding, on both ranks
        psutil.Process(before[rank]).send_signal(sent)
        signalled = time.monotonic()
        rest = [line async for line in lines]
        ended = time.monotonic() - signalled
    events = list(sse_events(rest))
    errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
    # Whichever notices first ends the stream: the parent seeing a rank's worker gone,
    # or rank 0's collective failing on the dead peer: both are worker_died (retriable).
    assert errors and errors[0]["code"] == "worker_died", events[-4:]
    assert events[-1] == "[DONE]"
    assert ended < within, f"the stream ended {ended:.2f}s after the signal"
    # meanwhile the model is recovering: a request gets the retriable 503
    wait_for(lambda: _status(tp_daemon) == "recovering", within=10, what="recovering")
    with tp_daemon.http() as client:
        refused = client.post("/v1/chat/completions", json=chat_body(model=TP, max_tokens=1))
    assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    assert refused.json()["error"]["code"] == "model_recovering"
    # both ranks replaced, the group re-formed on a new rendezvous, serving again
    wait_for(lambda: len(_rendezvous_ports(tp_daemon)) > len(formations), within=90,
             what="the group to re-form")  # fmt: skip
    after = wait_for(lambda: _loaded(tp_daemon) and _rank_pids(tp_daemon), within=30,
                     what="the TP model loaded again")  # fmt: skip
    assert not set(before) & set(after)
    assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in before)
    # killed and reaped, the stopped one included: no stopped process, no zombie
    assert not set(before) & {c.pid for c in psutil.Process(tp_daemon.process.pid).children()}
    with socket.socket() as probe:  # nothing listens on the old rendezvous port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    async with tp_daemon.async_http(timeout=60) as client:
        text = prompts(1)[0]
        assert await complete(client, TP, text) == await complete(client, SMALL, text)


async def test_unload_frees_both_ranks_and_reload_works(tp_daemon):
    text = prompts(1)[0]
    async with tp_daemon.async_http(timeout=60) as client:
        reference = await complete(client, SMALL, text)
    pids = _rank_pids(tp_daemon)
    ranks = next(m for m in tp_daemon.get("/models") if m["id"] == TP)["device_memory_bytes"]
    rss = [psutil.Process(pid).memory_info().rss for pid in pids]
    with tp_daemon.http(timeout=60) as client:
        response = client.post("/models/unload", json={"model_id": TP})
        assert response.status_code == 200, response.text
        freed = [
            before - psutil.Process(pid).memory_info().rss
            for before, pid in zip(rss, pids, strict=True)
        ]
        assert all(f >= share // 2 for f, share in zip(freed, ranks, strict=True)), (freed, ranks)
        assert _rank_pids(tp_daemon) == pids  # unloading restarts nothing
        # reload through the API, as a gateway would, with the ranks the other way round
        spec = {"model_id": TP, "tensor_parallel": 2, "devices": [1, 0]}
        response = client.post("/models/load", json=spec)
        assert response.status_code == 200, response.text
    model = next(m for m in tp_daemon.get("/models") if m["id"] == TP)
    assert model["devices"] == [1, 0] and len(model["device_memory_bytes"]) == 2
    async with tp_daemon.async_http(timeout=60) as client:
        assert await complete(client, TP, text) == reference


async def test_an_image_request_over_two_ranks_is_greedy_identical_to_one(tp_daemon):
    """Every rank runs the vision tower (whole) and the splice on the images the lead
    broadcasts with the sequence; only the language model is split. The group's
    workers take one group at a time, so the text TP model makes way."""
    with tp_daemon.http(timeout=120) as client:
        for path, spec in (
            ("/models/unload", {"model_id": TP}),
            ("/models/load", {"model_id": VL_ONE, "devices": [1]}),
            ("/models/load", {"model_id": VL_TWO, "tensor_parallel": 2, "devices": [0, 1]}),
        ):
            response = client.post(path, json=spec)
            assert response.status_code == 200, response.text
    models = {m["id"]: m for m in tp_daemon.get("/models")}
    assert models[VL_TWO]["devices"] == [0, 1] and len(models[VL_TWO]["device_memory_bytes"]) == 2

    def body(model: str, seed: int) -> dict:
        noise = random.Random(seed).randbytes(64 * 64 * 3)  # 64x64: 4 image tokens
        out = io.BytesIO()
        PIL_Image.frombytes("RGB", (64, 64), noise).save(out, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
        content = [{"type": "image_url", "image_url": {"url": uri}},
                   {"type": "text", "text": "What is in the picture?"}]  # fmt: skip
        return {"model": model, "messages": [{"role": "user", "content": content}],
                "max_tokens": 12, "temperature": 0, "logit_bias": NO_EOS}  # fmt: skip

    async def answer(client, model: str, seed: int) -> str:
        response = await client.post("/v1/chat/completions", json=body(model, seed))
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    async with tp_daemon.async_http(timeout=120) as client:
        reference = [await answer(client, VL_ONE, seed) for seed in (0, 1)]
        assert [await answer(client, VL_TWO, seed) for seed in (0, 1)] == reference
    assert reference[0] != reference[1]  # the image decides the output


# ------------------------------------------------------------------------------------------


def _rank_pids(daemon) -> list[int]:
    """The worker pids of cpu:0 and cpu:1, in rank order."""
    children = psutil.Process(daemon.process.pid).children()
    by_device = {}
    for child in children:
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--device" in command:
            by_device[command[command.index("--device") + 1]] = child.pid
    return [by_device.get("cpu:0"), by_device.get("cpu:1")]


def _rendezvous_ports(daemon) -> list[int]:
    """The loopback port of each formation of the group so far."""
    return [int(p) for p in _RENDEZVOUS.findall(daemon.log())]


def _status(daemon) -> str | None:
    return next((m["status"] for m in daemon.get("/models") if m["id"] == TP), None)


def _loaded(daemon) -> bool:
    return _status(daemon) == "loaded"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
