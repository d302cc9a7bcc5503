"""The neuron's configuration: `neuron.toml`, then `NEURON_…` environment overrides.

`load_config(path, env)` reads the TOML file (optional), accepts upstream
helexa's neuron keys (`port`, `[[default_models]]`, `[harness.candle.*]`) by
translating them, refuses unknown keys with a did-you-mean, applies the
environment overrides (`ENV_VARS` lists every name), checks each value, and
returns a frozen `NeuronConfig`. Every problem names where it came from —
`neuron.toml: [admission] max_in_flight: expected integer, got string`, or
`NEURON_LISTEN_PORT: expected integer, got 'http'` — and all problems are
reported together in one `ConfigError`. `docs/configuration.md` is the
operator's reference; the class docstrings below list the same keys.

Precedence: environment > file > defaults. The result also turns into what
the rest of the daemon needs: `device_specs()` (devices to start workers on)
and `worker_timeouts()`. This module reads files and the environment only; it
does not probe hardware (`neuron.discovery`) or log (it runs before logging is
configured: advisories are returned in `NeuronConfig.notes`). The generic
machinery — checks, schema walking, the environment — is `protocol.settings`,
shared with the gateway. It is longer than most modules because it is one
schema with its rules and its translation of upstream's keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import attrs

from neuron.devices import DeviceSpec, WorkerTimeouts
from neuron.discovery import HostResources, detect_host_resources, device_kind, device_ordinal
from neuron.worker.errors import UnsafeModelId
from neuron.worker.snapshot import check_model_id
from protocol.settings import (
    ConfigError,
    Environment,
    Problem,
    at_least,
    located,
    not_a_key,
    positive,
    read_toml,
    render_path,
    setting,
    split,
    structure_checked,
    unknown_keys,
)

__all__ = [
    "ENV_VARS",
    "Admission",
    "Auth",
    "Cache",
    "ConfigError",
    "Cpu",
    "DeviceConfig",
    "Engine",
    "Http",
    "Limits",
    "Listen",
    "Log",
    "ModelConfig",
    "NeuronConfig",
    "Timeouts",
    "Vision",
    "default_model_roots",
    "find_config_path",
    "load_config",
]

MIB = 1024 * 1024
DEFAULT_CONFIG_PATH = Path("/etc/neuron/neuron.toml")
SYSTEM_MODEL_ROOT = "/var/lib/neuron/models"
DTypeName = Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
_DEVICE_ID = re.compile(r"(cpu|cuda):(0|[1-9][0-9]*)")


# ------------------------------------------------------------------ value checks


def _dtype(value: str | None) -> str | None:
    if value is None or value in get_args(DTypeName):
        return None
    return f"must be one of {', '.join(get_args(DTypeName))}; got {value!r}"


def _no_whitespace(value: str) -> str | None:
    return "must not contain whitespace" if any(c.isspace() for c in value) else None


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port number 0-65535, got {value}"


# ------------------------------------------------------------------ schema


@attrs.frozen
class Listen:
    """`[listen]` — where the HTTP API binds.

    host  "0.0.0.0"  address to bind; every interface by default, because the
                     gateway reaches neurons over the network (set "127.0.0.1"
                     when cortex runs on the same host)
    port  13131      TCP port (0 = any free port, for tests)
    """

    host: str = "0.0.0.0"
    port: int = setting(13131, _port)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


@attrs.frozen
class Auth:
    """`[auth]` — optional bearer token.

    token  ""  when set, every route but `/health` requires
               `Authorization: Bearer <token>` or `x-api-key: <token>`
    """

    token: str = setting("", _no_whitespace)

    @property
    def enabled(self) -> bool:
        return bool(self.token)


@attrs.frozen
class Log:
    """`[log]` — format "plain" (key=value lines) or "json" (one object per line,
    for journald); level "debug" | "info" | "warning" | "error" | "critical"."""

    format: Literal["plain", "json"] = "plain"
    level: LogLevel = "info"


@attrs.frozen
class Http:
    """`[http]` — request handling.

    max_body_bytes      33554432 (32 MiB)  larger request bodies get 413
    keepalive_interval  1.0 s              SSE comment while a stream waits
                                           (queue, load, prefill)
    body_timeout        60 s               a request body not received in full
                                           within this long gets 408
    idle_timeout        75 s               a connection with no request in
                                           progress (idle, or still sending its
                                           head: slow-loris) is closed
    max_header_bytes    65536 (64 KiB)     a larger request head gets 431
    """

    max_body_bytes: int = setting(32 * MIB, at_least(1024))
    keepalive_interval: float = setting(1.0, positive)
    body_timeout: float = setting(60.0, positive)
    idle_timeout: float = setting(75.0, positive)
    max_header_bytes: int = setting(64 * 1024, at_least(1024))


@attrs.frozen
class Limits:
    """`[limits]` — token limits.

    default_max_tokens  8192   completion cap when a request names none
    max_prompt_tokens   16384  longest prompt accepted (upstream's
                               NEURON_MAX_PROMPT_TOKENS); reported on /discovery
    """

    default_max_tokens: int = setting(8192, at_least(1))
    max_prompt_tokens: int = setting(16384, at_least(1))


@attrs.frozen
class Cpu:
    """`[cpu]` — CPU devices.

    devices    1     CPU devices (worker processes) `devices = "auto"` creates
                     on a host without GPUs
    threads    —     torch threads per CPU device; default: usable cores
                     less one (left to the neuron parent and a gateway),
                     divided by the number of CPU devices (at least 1), so
                     workers x threads stays below the cores
    memory_mb  —     memory budget per CPU device; default: usable host
                     memory divided by the number of CPU devices
    """

    devices: int = setting(1, at_least(1))
    threads: int | None = setting(None, at_least(1))
    memory_mb: int | None = setting(None, at_least(1))


@attrs.frozen
class Engine:
    """`[engine]` — max_batch_size 16: sequences a device's engine decodes together
    (also the default `max_in_flight`); default_dtype "auto": dtype of loads
    that name none ("auto" = what the model's config.json declares);
    constrain_tool_calls true: a forced tool call (`tool_choice` required or named,
    Anthropic any/tool), and every call the model opens when a tool is `strict`,
    decodes under a grammar of the JSON call form, so the call is valid; false
    leaves the model to write calls in its own form (a forced one still starts
    inside the call), for models trained on another call syntax
    (Qwen3-Coder/Qwen3.5's `<function=…>` XML)."""

    max_batch_size: int = setting(16, at_least(1))
    default_dtype: str = setting("auto", _dtype)
    constrain_tool_calls: bool = True


@attrs.frozen
class Cache:
    """`[cache]` — the prefix cache: a prompt's computed state is kept after its
    request and reused by any later prompt that starts with the same tokens.

    prefix_cache     true  false turns it off on every model (no memory kept)
    prefix_cache_mb  —     budget per loaded model; default: a quarter of the
                           model's KV budget, at most 1024 MiB on a CPU device
    """

    prefix_cache: bool = True
    prefix_cache_mb: int | None = setting(None, at_least(1))


@attrs.frozen
class Vision:
    """`[vision]` — images sent to vision-language models (inline data URIs / base64
    only; a URL is never fetched). Each limit refused is a 400 `image_limit_exceeded`
    naming its key.

    max_image_bytes         10485760 (10 MiB)  one image's decoded bytes
    max_image_pixels        16777216 (4096²)   one image's width x height, read from
                                               its header before decoding
    max_images_per_request  8                  images in one request's messages
    max_image_aspect_ratio  100                longer side / shorter side
    """

    max_image_bytes: int = setting(10 * MIB, at_least(1))
    max_image_pixels: int = setting(4096 * 4096, at_least(1))
    max_images_per_request: int = setting(8, at_least(1))
    max_image_aspect_ratio: float = setting(100.0, at_least(1))


@attrs.frozen
class Admission:
    """`[admission]` — per-model admission (each loaded model has its own).

    max_in_flight    —      requests generating at once; default: the
                            device's max_batch_size
    max_queue_depth  64     requests waiting for a slot; beyond → 503
    queue_timeout    30.0 s longest wait for a slot; beyond → 503
    """

    max_in_flight: int | None = setting(None, at_least(1))
    max_queue_depth: int = setting(64, at_least(0))
    queue_timeout: float = setting(30.0, positive)


@attrs.frozen
class Timeouts:
    """`[timeouts]` — seconds.

    worker_ready               120   worker spawn → ready (torch import, device init)
    worker_heartbeat_interval  0.5   how often a worker reports in
    worker_heartbeat           5     silence after which a worker is killed
    worker_step                60    sequences in flight but no step → killed
    worker_shutdown            5     shutdown message → exit, else SIGTERM
    worker_terminate           3     SIGTERM → exit, else SIGKILL
    load                       1800  one model load on a worker
    unload_drain               30    unload waits this long for requests in flight
    request_idle               300   a live stream with no new token for this
                                     long ends with an in-band error
    drain                      30    on SIGTERM, in-flight requests get this
                                     long to finish before they are cancelled
    """

    worker_ready: float = setting(120.0, positive)
    worker_heartbeat_interval: float = setting(0.5, positive)
    worker_heartbeat: float = setting(5.0, positive)
    worker_step: float = setting(60.0, positive)
    worker_shutdown: float = setting(5.0, positive)
    worker_terminate: float = setting(3.0, positive)
    load: float = setting(1800.0, positive)
    unload_drain: float = setting(30.0, positive)
    request_idle: float = setting(300.0, positive)
    drain: float = setting(30.0, positive)


@attrs.frozen
class DeviceConfig:
    """One `[[devices]]` entry: `id` "cpu:N" or "cuda:N" (required); `threads`,
    `memory_mb` (default: [cpu]'s for CPU devices, the whole GPU for CUDA) and
    `max_batch_size` (default: [engine]'s)."""

    id: str = setting(check=lambda v: None if _DEVICE_ID.fullmatch(v)
                      else f"must be 'cpu:N' or 'cuda:N', got {v!r}")  # fmt: skip
    threads: int | None = setting(None, at_least(1))
    memory_mb: int | None = setting(None, at_least(1))
    max_batch_size: int | None = setting(None, at_least(1))


@attrs.frozen
class ModelConfig:
    """One `[[models]]` entry, loaded in order once the API is up.

    id             (required)  model id, resolved under model_roots, or an
                               absolute path (allow_absolute_model_paths)
    alias          —           the id it is served under; default: `id`, and
                               for an absolute path its last part (without
                               `.gguf`): /srv/models/SmolLM2 → "SmolLM2"
    dtype          —           default: [engine] default_dtype
    devices        []          device ids ("cpu:0") or /discovery indices;
                               empty = the least-loaded device
    pinned         false       refuse unloads through the API (a gateway's
                               eviction cannot remove it)
    max_in_flight  —           overrides [admission] max_in_flight
    prefix_cache   —           overrides [cache] prefix_cache (false: off)
    prefix_cache_mb  —         overrides [cache] prefix_cache_mb
    tensor_parallel  1         split the model over this many devices, one
                               worker per rank (`devices` names them, in rank
                               order; else the least-loaded)
    min_devices    1           upstream's catalogue key: above 1 it is the
                               tensor_parallel (when that is not set)
    """

    id: str = setting(check=lambda v: None if v.strip() else "must not be empty")
    alias: str | None = setting(None, lambda v: _alias_problem(v))
    dtype: str | None = setting(None, _dtype)
    devices: tuple[int | str, ...] = ()
    pinned: bool = False
    max_in_flight: int | None = setting(None, at_least(1))
    prefix_cache: bool | None = None
    prefix_cache_mb: int | None = setting(None, at_least(1))
    tensor_parallel: int = setting(1, at_least(1))
    min_devices: int = setting(1, at_least(1))

    @property
    def ranks(self) -> int:
        """Devices the model is split over: `tensor_parallel`, else `min_devices`."""
        return self.tensor_parallel if self.tensor_parallel > 1 else self.min_devices

    @property
    def served_id(self) -> str:
        """The id clients use: the alias, else a path's last part, else the id."""
        if self.alias:
            return self.alias
        if self.id.startswith("/"):
            return PurePosixPath(self.id).name.removesuffix(".gguf") or self.id
        return self.id


def _alias_problem(alias: str) -> str | None:
    try:
        check_model_id(alias)
    except UnsafeModelId as exc:
        return str(exc).removeprefix(f"refusing model id {alias!r}: ")
    return None


@attrs.frozen
class NeuronConfig:
    """The whole configuration. Top-level keys:

    model_roots                 /var/lib/neuron/models + the Hugging Face hub
                                cache if present   directories searched for models
                                (plain `org/name` or HF cache layout), in order
    allow_absolute_model_paths  false   may a load name an absolute path
    devices                     "auto"  "auto" (every GPU; none → [cpu] devices
                                CPU devices), `[[devices]]` tables, or a
                                list of ids (`["cpu:0", "cpu:1"]`)
    models                      []      `[[models]]` tables: load at start

    and the sections `[listen]`, `[auth]`, `[log]`, `[http]`, `[limits]`,
    `[cpu]`, `[engine]`, `[cache]`, `[vision]`, `[admission]`, `[timeouts]`. `source`
    (the file read) and `notes` (advisories for the log) are not keys.
    """

    model_roots: tuple[str, ...] | None = None
    allow_absolute_model_paths: bool = False
    devices: Literal["auto"] | tuple[DeviceConfig, ...] = "auto"
    models: tuple[ModelConfig, ...] = ()
    listen: Listen = attrs.field(factory=Listen)
    auth: Auth = attrs.field(factory=Auth)
    log: Log = attrs.field(factory=Log)
    http: Http = attrs.field(factory=Http)
    limits: Limits = attrs.field(factory=Limits)
    cpu: Cpu = attrs.field(factory=Cpu)
    engine: Engine = attrs.field(factory=Engine)
    cache: Cache = attrs.field(factory=Cache)
    vision: Vision = attrs.field(factory=Vision)
    admission: Admission = attrs.field(factory=Admission)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    source: str | None = not_a_key(default=None)
    notes: tuple[str, ...] = not_a_key(default=())

    @property
    def model_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(root) for root in self.model_roots or ())

    def worker_timeouts(self) -> WorkerTimeouts:
        t = self.timeouts
        return WorkerTimeouts(
            ready=t.worker_ready, heartbeat_interval=t.worker_heartbeat_interval,
            heartbeat=t.worker_heartbeat, step=t.worker_step, shutdown=t.worker_shutdown,
            terminate=t.worker_terminate, load=t.load,
        )  # fmt: skip

    def device_specs(
        self, gpus: Sequence[int] = (), host: HostResources | None = None
    ) -> list[DeviceSpec]:
        """The devices to start workers on: CUDA by ordinal, then CPU by number.

        `gpus` are the CUDA ordinals discovery found (used by "auto"); a
        device's index on `/discovery` is its position in this list.
        """
        host = host or detect_host_resources()
        entries = self._device_entries(gpus)
        cpus = sum(device_kind(e.id) == "cpu" for e in entries)
        return [self._spec(e, cpus, host) for e in entries]

    def _device_entries(self, gpus: Sequence[int]) -> list[DeviceConfig]:
        if self.devices != "auto":
            entries = list(self.devices)
        elif gpus:
            entries = [DeviceConfig(f"cuda:{i}") for i in sorted(set(gpus))]
        else:
            entries = [DeviceConfig(f"cpu:{n}") for n in range(self.cpu.devices)]
        return sorted(entries, key=lambda e: (device_kind(e.id) != "cuda", device_ordinal(e.id)))

    def _spec(self, entry: DeviceConfig, cpus: int, host: HostResources) -> DeviceSpec:
        batch = entry.max_batch_size or self.engine.max_batch_size
        if device_kind(entry.id) == "cuda":
            memory = entry.memory_mb * MIB if entry.memory_mb else None
            return DeviceSpec(entry.id, entry.threads or 1, memory, batch)
        threads = entry.threads or self.cpu.threads or default_cpu_threads(host.cores, cpus)
        memory_mb = entry.memory_mb or self.cpu.memory_mb
        memory = memory_mb * MIB if memory_mb else host.memory_bytes // max(1, cpus)
        return DeviceSpec(entry.id, threads, memory, batch)

    def model_devices(
        self, specs: Sequence[DeviceSpec]
    ) -> list[tuple[ModelConfig, tuple[int, ...]]]:
        """Each `[[models]]` entry with its devices as `/discovery` indices."""
        where = self.source or "configuration"
        ids = {spec.id: i for i, spec in enumerate(specs)}
        problems, resolved = [], []
        served: dict[str, int] = {}
        for n, model in enumerate(self.models, 1):
            first = served.setdefault(model.served_id, n)
            if first != n:
                problems.append(f"{where}: [[models]] #{n} is served as {model.served_id!r}, "
                                f"like #{first}; give one of them an `alias`")  # fmt: skip
            indices = []
            for device in model.devices:
                index = ids.get(device) if isinstance(device, str) else device
                if index is None or not 0 <= index < len(specs):
                    problems.append(f"{where}: [[models]] #{n} devices: no device {device!r} "
                                    f"(this node has {', '.join(ids) or 'none'})")  # fmt: skip
                else:
                    indices.append(index)
            if model.ranks > 1 and model.devices and len(model.devices) != model.ranks:
                problems.append(f"{where}: [[models]] #{n} devices: tensor_parallel = "
                                f"{model.ranks} needs one device per rank")  # fmt: skip
            resolved.append((model, tuple(indices)))
        if problems:
            raise ConfigError(problems)
        return resolved


# ------------------------------------------------------------------ the environment


def _models_value(text: str) -> list[dict[str, str]]:
    return [{"id": i} for i in split(text, ",")]


def _devices_value(text: str) -> str | list[dict[str, str]]:
    ids = split(text, ",")
    return "auto" if ids == ["auto"] else [{"id": i} for i in ids]


ENVIRONMENT = Environment.of(
    NeuronConfig,
    "NEURON_",
    aliases={  # upstream helexa's names
        "NEURON_PORT": ("listen", "port"),
        "NEURON_MAX_PROMPT_TOKENS": ("limits", "max_prompt_tokens"),
    },
    lists={
        "NEURON_DEVICES": (("devices",), _devices_value),
        "NEURON_MODELS": (("models",), _models_value),
    },
    ignore=["NEURON_CONFIG"],
)
ENV_VARS: dict[str, tuple[tuple[str, ...], Any]] = ENVIRONMENT.variables


def _unknown_env_note(name: str) -> str | None:
    """A typo of a known name is worth a note; other NEURON_* variables are
    left alone (upstream's runtime knobs and the workers' own use that prefix)."""
    close = ENVIRONMENT.closest(name, cutoff=0.85)
    return f"{name} is not a neuron setting (did you mean {close}?)" if close else None


# ------------------------------------------------------------------ upstream's keys

_UPSTREAM_ADMISSION = {
    "max_in_flight": "max_in_flight",
    "max_queue_depth": "max_queue_depth",
    "max_wait_secs": "queue_timeout",
}


@attrs.define
class _Upstream:
    """What translating upstream helexa's keys left behind."""

    where: str
    origins: dict[tuple, str] = attrs.Factory(dict)  # our path → upstream key
    notes: list[str] = attrs.Factory(list)  # upstream keys without effect here
    roots: list[str] = attrs.Factory(list)  # [harness.candle] hf_cache


def _from_upstream(raw: dict[str, Any], where: str) -> _Upstream:
    """Rewrite upstream's neuron.toml keys in `raw` into ours; ours win on conflict."""
    up = _Upstream(where)
    listen = raw.get("listen", {})
    if "port" in raw and isinstance(listen, dict):
        raw["listen"] = {"port": raw.pop("port"), **listen}
        if "port" not in listen:
            up.origins[("listen", "port")] = f"{where}: port"
    if raw.pop("harnesses", None) is not None:
        up.notes.append(f"{where}: [[harnesses]] has no effect: this neuron serves with "
                        "its own transformers engine")  # fmt: skip
    if isinstance(raw.get("default_models"), list):
        _translate_default_models(raw, raw.pop("default_models"), up)
    if isinstance(raw.get("harness"), dict):
        _translate_harness(raw, raw.pop("harness"), up)
    return up


def _translate_default_models(raw: dict, upstream: list, up: _Upstream) -> None:
    models = raw.setdefault("models", [])
    for n, entry in enumerate(upstream, 1):
        if isinstance(entry, dict):
            entry = {("id" if k == "model_id" else k): v for k, v in entry.items()}
            entry.pop("harness", None)
            if entry.get("tensor_parallel") == 1:
                del entry["tensor_parallel"]
        if isinstance(models, list):
            up.origins[("models", len(models))] = f"{up.where}: [[default_models]] #{n}"
            models.append(entry)


def _translate_harness(raw: dict, harness: dict, up: _Upstream) -> None:
    candle = harness.get("candle")
    for key, value in (candle if isinstance(candle, dict) else {}).items():
        if key == "hf_cache" and isinstance(value, str):
            up.roots.append(value)
        elif key == "admission" and isinstance(value, dict):
            _translate_admission(raw, value, up)
        else:
            up.notes.append(f"{up.where}: [harness.candle] {key} has no effect here")
    for name in sorted(harness.keys() - {"candle"}):
        up.notes.append(f"{up.where}: [harness.{name}] has no effect here")


def _translate_admission(raw: dict, upstream: dict, up: _Upstream) -> None:
    ours = raw.setdefault("admission", {})
    for key, value in upstream.items():
        if key not in _UPSTREAM_ADMISSION or not isinstance(ours, dict):
            up.notes.append(f"{up.where}: [harness.candle.admission] {key} has no effect here")
        elif _UPSTREAM_ADMISSION[key] not in ours:
            ours[_UPSTREAM_ADMISSION[key]] = value
            up.origins[("admission", _UPSTREAM_ADMISSION[key])] = (
                f"{up.where}: [harness.candle.admission] {key}"
            )


# ------------------------------------------------------------------ problems


def _tail(origin: str, rest: tuple) -> str:
    """A variable sets its whole value: it alone is named."""
    return "" if origin.startswith("NEURON_") or not rest else render_path(rest)


_UNSUPPORTED = {  # upstream's load options this neuron cannot honour: refused, not ignored
    "quant": "quantised loading is not supported by this neuron; load the dense weights",
}


def _cross_checks(config: NeuronConfig) -> Iterator[Problem]:
    if config.devices != "auto":
        if not config.devices:
            yield ("devices",), 'needs at least one [[devices]] entry, or "auto"'
        yield from _duplicates([d.id for d in config.devices], ("devices",), "id")
    yield from _duplicates([m.id for m in config.models], ("models",), "id")
    t = config.timeouts
    if t.worker_heartbeat_interval >= t.worker_heartbeat:
        yield (
            ("timeouts", "worker_heartbeat_interval"),
            (
                f"must be less than worker_heartbeat ({t.worker_heartbeat:g}), "
                f"got {t.worker_heartbeat_interval:g}"
            ),
        )


def _duplicates(values: list[str], path: tuple, key: str) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            yield (*path, i, key), f"{value!r} appears more than once"
        seen.add(value)


# ------------------------------------------------------------------ loading


def find_config_path(env: Mapping[str, str]) -> Path | None:
    """`NEURON_CONFIG` if set (it must exist), else /etc/neuron/neuron.toml if present."""
    if env.get("NEURON_CONFIG"):
        return Path(env["NEURON_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def default_cpu_threads(cores: int, cpu_devices: int) -> int:
    """Torch threads per CPU device: the cores less one, shared out (at least 1).

    The spare core runs the neuron parent (tokenising, detokenising, HTTP) and a
    gateway beside it. A worker whose OpenMP threads outnumber the free cores
    collapses: SmolLM2-135M decoded at 0.4 tok/s with 2 threads on a busy 2-core box
    and at 4.2 tok/s with 1 (bench/threads.py; figures in bench/README.md).
    """
    return max(1, (cores - 1) // max(1, cpu_devices))


def default_model_roots(env: Mapping[str, str]) -> tuple[str, ...]:
    """/var/lib/neuron/models, then the Hugging Face hub cache if it exists
    (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`)."""
    if env.get("HF_HUB_CACHE"):
        hub = _expand(env["HF_HUB_CACHE"], env)
    elif env.get("HF_HOME"):
        hub = _expand(env["HF_HOME"], env) / "hub"
    else:
        hub = _expand("~/.cache/huggingface/hub", env)
    return (SYSTEM_MODEL_ROOT, *([str(hub)] if hub.is_dir() else []))


def _expand(path: str, env: Mapping[str, str]) -> Path:
    """`~` as the HOME of `env` (the daemon's user), not of whoever runs the tests."""
    if path == "~" or path.startswith("~/"):
        return Path(env.get("HOME") or Path.home(), path[2:])
    return Path(path)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> NeuronConfig:
    """Read `path` (None = no file), apply `env` (default `os.environ`), check it all."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "neuron.toml"
    raw = read_toml(path) if path is not None else {}
    upstream = _from_upstream(raw, source)
    _device_ids_as_tables(raw)
    origins = upstream.origins
    problems = list(unknown_keys(raw, NeuronConfig, explained=_UNSUPPORTED))
    env_problems, unknown_names = ENVIRONMENT.apply(env, raw, origins)
    # unknown keys are reported above, with suggestions: the tolerant converter
    config, found = structure_checked(raw, NeuronConfig, _cross_checks)
    problems += found
    if problems or env_problems:
        raise ConfigError(env_problems + located(problems, source, origins, _tail))
    base = Path.cwd() if path is None or ("model_roots",) in origins else path.parent
    roots = _model_roots(config.model_roots, upstream.roots, env, base)
    env_notes = [n for n in map(_unknown_env_note, unknown_names) if n]
    notes = (*upstream.notes, *env_notes, *_advisories(config))
    return attrs.evolve(config, model_roots=roots, source=str(path) if path else None, notes=notes)


def _device_ids_as_tables(raw: dict[str, Any]) -> None:
    """`devices = ["cpu:0", "cpu:1"]` is short for `[[devices]]` tables with those ids."""
    devices = raw.get("devices")
    if isinstance(devices, list):
        raw["devices"] = [{"id": d} if isinstance(d, str) else d for d in devices]


def _model_roots(
    configured: Sequence[str] | None, extra: Sequence[str], env: Mapping[str, str], base: Path
) -> tuple[str, ...]:
    """Absolute roots, in order, once each: `~` expanded, relative ones against
    `base` (the config file's directory, or the working directory for
    NEURON_MODEL_ROOTS). Unset = the defaults, then upstream's `hf_cache`."""
    roots = [*(default_model_roots(env) if configured is None else configured), *extra]
    return tuple(dict.fromkeys(os.path.normpath(base / _expand(root, env)) for root in roots))


def _advisories(config: NeuronConfig) -> list[str]:
    notes = []
    if not config.auth.enabled and not config.listen.is_loopback:
        notes.append(f"listening on {config.listen.host}:{config.listen.port} without an "
                     "auth token: anyone who can reach this port can load and unload models "
                     "(set [auth] token / NEURON_AUTH_TOKEN, or firewall the port)")  # fmt: skip
    return notes
