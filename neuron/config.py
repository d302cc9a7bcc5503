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
configured: advisories are returned in `NeuronConfig.notes`). It is longer
than most modules because it is one schema with its one loader.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from neuron.devices import DeviceSpec, WorkerTimeouts
from neuron.discovery import HostResources, detect_host_resources, device_kind, device_ordinal
from protocol import structure
from protocol.errors import ValidationFailed

__all__ = [
    "ENV_VARS",
    "Admission",
    "Auth",
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
_CHECK = "neuron.config.check"
_NOT_A_KEY = "neuron.config.not_a_key"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "".join(f"\n  {p}" for p in self.problems)
            super().__init__(f"{len(self.problems)} configuration problems:{lines}")


# ------------------------------------------------------------------ value checks


def _setting(default: Any = attrs.NOTHING, check: Callable[[Any], str | None] | None = None):
    """A TOML key; `check(value)` returns what is wrong with a value, or None."""
    return attrs.field(default=default, metadata={_CHECK: check} if check else {})


def _at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value is None or value >= low else f"must be at least {low}, got {value}"

    return check


def _positive(value: float | None) -> str | None:
    return None if value is None or value > 0 else f"must be greater than 0, got {value}"


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
    port: int = _setting(13131, _port)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


@attrs.frozen
class Auth:
    """`[auth]` — optional bearer token.

    token  ""  when set, every route but `/health` requires
               `Authorization: Bearer <token>` or `x-api-key: <token>`
    """

    token: str = _setting("", _no_whitespace)

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

    max_body_bytes: int = _setting(32 * MIB, _at_least(1024))
    keepalive_interval: float = _setting(1.0, _positive)
    body_timeout: float = _setting(60.0, _positive)
    idle_timeout: float = _setting(75.0, _positive)
    max_header_bytes: int = _setting(64 * 1024, _at_least(1024))


@attrs.frozen
class Limits:
    """`[limits]` — token limits.

    default_max_tokens  8192   completion cap when a request names none
    max_prompt_tokens   16384  longest prompt accepted (upstream's
                               NEURON_MAX_PROMPT_TOKENS); reported on /discovery
    """

    default_max_tokens: int = _setting(8192, _at_least(1))
    max_prompt_tokens: int = _setting(16384, _at_least(1))


@attrs.frozen
class Cpu:
    """`[cpu]` — CPU devices.

    devices    1     CPU devices (worker processes) `devices = "auto"` creates
                     on a host without GPUs
    threads    —     torch threads per CPU device; default: usable cores
                     divided by the number of CPU devices (at least 1), so
                     workers x threads never exceeds the cores
    memory_mb  —     memory budget per CPU device; default: usable host
                     memory divided by the number of CPU devices
    """

    devices: int = _setting(1, _at_least(1))
    threads: int | None = _setting(None, _at_least(1))
    memory_mb: int | None = _setting(None, _at_least(1))


@attrs.frozen
class Engine:
    """`[engine]` — max_batch_size 16: sequences a device's engine decodes together
    (also the default `max_in_flight`); default_dtype "auto": dtype of loads
    that name none ("auto" = what the model's config.json declares)."""

    max_batch_size: int = _setting(16, _at_least(1))
    default_dtype: str = _setting("auto", _dtype)


@attrs.frozen
class Admission:
    """`[admission]` — per-model admission (each loaded model has its own).

    max_in_flight    —      requests generating at once; default: the
                            device's max_batch_size
    max_queue_depth  64     requests waiting for a slot; beyond → 503
    queue_timeout    30.0 s longest wait for a slot; beyond → 503
    """

    max_in_flight: int | None = _setting(None, _at_least(1))
    max_queue_depth: int = _setting(64, _at_least(0))
    queue_timeout: float = _setting(30.0, _positive)


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

    worker_ready: float = _setting(120.0, _positive)
    worker_heartbeat_interval: float = _setting(0.5, _positive)
    worker_heartbeat: float = _setting(5.0, _positive)
    worker_step: float = _setting(60.0, _positive)
    worker_shutdown: float = _setting(5.0, _positive)
    worker_terminate: float = _setting(3.0, _positive)
    load: float = _setting(1800.0, _positive)
    unload_drain: float = _setting(30.0, _positive)
    request_idle: float = _setting(300.0, _positive)
    drain: float = _setting(30.0, _positive)


@attrs.frozen
class DeviceConfig:
    """One `[[devices]]` entry: `id` "cpu:N" or "cuda:N" (required); `threads`,
    `memory_mb` (default: [cpu]'s for CPU devices, the whole GPU for CUDA) and
    `max_batch_size` (default: [engine]'s)."""

    id: str = _setting(check=lambda v: None if _DEVICE_ID.fullmatch(v)
                       else f"must be 'cpu:N' or 'cuda:N', got {v!r}")  # fmt: skip
    threads: int | None = _setting(None, _at_least(1))
    memory_mb: int | None = _setting(None, _at_least(1))
    max_batch_size: int | None = _setting(None, _at_least(1))


@attrs.frozen
class ModelConfig:
    """One `[[models]]` entry, loaded in order once the API is up.

    id             (required)  model id, resolved under model_roots
    dtype          —           default: [engine] default_dtype
    devices        []          device ids ("cpu:0") or /discovery indices;
                               empty = the least-loaded device
    pinned         false       refuse unloads through the API (a gateway's
                               eviction cannot remove it)
    max_in_flight  —           overrides [admission] max_in_flight
    """

    id: str = _setting(check=lambda v: None if v.strip() else "must not be empty")
    dtype: str | None = _setting(None, _dtype)
    devices: tuple[int | str, ...] = ()
    pinned: bool = False
    max_in_flight: int | None = _setting(None, _at_least(1))


def _not_a_key(default: Any) -> Any:
    return attrs.field(default=default, eq=False, metadata={_NOT_A_KEY: True})


@attrs.frozen
class NeuronConfig:
    """The whole configuration. Top-level keys:

    model_roots                 /var/lib/neuron/models + the Hugging Face hub
                                cache if present   directories searched for models
                                (plain `org/name` or HF cache layout), in order
    allow_absolute_model_paths  false   may a load name an absolute path
    devices                     "auto"  "auto" (every GPU; none → [cpu] devices
                                CPU devices) or `[[devices]]` tables
    models                      []      `[[models]]` tables: load at start

    and the sections `[listen]`, `[auth]`, `[log]`, `[http]`, `[limits]`,
    `[cpu]`, `[engine]`, `[admission]`, `[timeouts]`. `source` (the file read)
    and `notes` (advisories for the log) are not keys.
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
    admission: Admission = attrs.field(factory=Admission)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    source: str | None = _not_a_key(None)
    notes: tuple[str, ...] = _not_a_key(())

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
        threads = entry.threads or self.cpu.threads or max(1, host.cores // max(1, cpus))
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
        for n, model in enumerate(self.models, 1):
            indices = []
            for device in model.devices:
                index = ids.get(device) if isinstance(device, str) else device
                if index is None or not 0 <= index < len(specs):
                    problems.append(f"{where}: [[models]] #{n} devices: no device {device!r} "
                                    f"(this node has {', '.join(ids) or 'none'})")  # fmt: skip
                else:
                    indices.append(index)
            resolved.append((model, tuple(indices)))
        if problems:
            raise ConfigError(problems)
        return resolved


# ------------------------------------------------------------------ schema walking


def _unwrap(tp: Any) -> list[Any]:
    """The members of `X | Y | None`, without None."""
    if get_origin(tp) in (Union, type(int | str)):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


@functools.cache
def _fields(cls: type) -> dict[str, attrs.Attribute]:
    return {
        a.name: a for a in attrs.fields(attrs.resolve_types(cls)) if _NOT_A_KEY not in a.metadata
    }


def _table_type(tp: Any) -> type | None:
    """The attrs class a key holds as a table (`[x]`) or array of tables (`[[x]]`)."""
    for member in _unwrap(tp):
        if attrs.has(member):
            return member
        args = get_args(member)
        if get_origin(member) is tuple and args and attrs.has(args[0]):
            return args[0]
    return None


def _scalar_keys() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, type) of every key an environment variable can set."""
    for name, a in _fields(NeuronConfig).items():
        table = _table_type(a.type)
        if table is None:
            yield (name,), a.type
        elif attrs.has(a.type):
            for key, b in _fields(table).items():
                yield (name, key), b.type


# ------------------------------------------------------------------ the environment

_ENV_ALIASES = {  # upstream helexa's names
    "NEURON_PORT": ("listen", "port"),
    "NEURON_MAX_PROMPT_TOKENS": ("limits", "max_prompt_tokens"),
}
_ENV_LISTS = {"NEURON_DEVICES": ("devices",), "NEURON_MODELS": ("models",)}


def _env_table() -> dict[str, tuple[tuple[str, ...], Any]]:
    """Every `NEURON_…` name: `NEURON_<SECTION>_<KEY>`, the figment-style
    `NEURON_<SECTION>__<KEY>`, upstream's aliases, and the list shorthands."""
    table: dict[str, tuple[tuple[str, ...], Any]] = {}
    types = dict(_scalar_keys())
    for path, tp in types.items():
        for sep in ("_", "__")[: len(path)]:
            table["NEURON_" + sep.join(path).upper()] = (path, tp)
    table.update({name: (path, types[path]) for name, path in _ENV_ALIASES.items()})
    table.update({name: (path, str) for name, path in _ENV_LISTS.items()})
    return table


ENV_VARS: dict[str, tuple[tuple[str, ...], Any]] = _env_table()
_NOT_OVERRIDES = {"NEURON_CONFIG"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _env_value(name: str, text: str, tp: Any) -> Any:
    """Parse `text` for a key of type `tp`; ValueError says what was expected."""
    if name == "NEURON_DEVICES":
        ids = _split(text, ",")
        return "auto" if ids == ["auto"] else [{"id": i} for i in ids]
    if name == "NEURON_MODELS":
        return [{"id": i} for i in _split(text, ",")]
    members = _unwrap(tp)
    if members == [tuple[str, ...]]:
        return _split(text, os.pathsep)
    return _scalar(text, members[0])


def _split(text: str, sep: str) -> list[str]:
    return [part.strip() for part in text.split(sep) if part.strip()]


def _scalar(text: str, tp: Any) -> Any:
    text = text.strip()
    if tp is bool:
        if text.lower() not in _TRUE | _FALSE:
            raise ValueError(f"expected true/false (1/0, yes/no, on/off), got {text!r}")
        return text.lower() in _TRUE
    if tp is int:
        try:
            return int(text, 10)
        except ValueError:
            raise ValueError(f"expected integer, got {text!r}") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"expected number, got {text!r}")
        return value
    return text  # str and Literal values; Literals are checked with the rest


def _env_overrides(
    env: Mapping[str, str],
) -> tuple[dict[tuple[str, ...], tuple[str, Any]], list[str], list[str]]:
    """({path: (variable, value)}, problems, notes). Empty values count as unset."""
    found, problems, notes = {}, [], []
    for name, text in sorted(env.items()):
        if not name.startswith("NEURON_") or name in _NOT_OVERRIDES or not text.strip():
            continue
        if name not in ENV_VARS:
            notes.extend(_unknown_env_note(name))
            continue
        path, tp = ENV_VARS[name]
        try:
            found[path] = (name, _env_value(name, text, tp))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return found, problems, notes


def _unknown_env_note(name: str) -> list[str]:
    """A typo of a known name is worth a note; other NEURON_* variables are
    left alone (upstream's runtime knobs and the workers' own use that prefix)."""
    close = difflib.get_close_matches(name, ENV_VARS, n=1, cutoff=0.85)
    return [f"{name} is not a neuron setting (did you mean {close[0]}?)"] if close else []


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    table = raw
    for key in path[:-1]:
        if not isinstance(table.get(key), dict):
            table[key] = {}
        table = table[key]
    table[path[-1]] = value


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


def _render_path(path: Sequence[str | int]) -> str:
    """("admission", "max_in_flight") → "[admission] max_in_flight",
    ("devices", 0, "threads") → "[[devices]] #1 threads", ("model_roots", 1) →
    "model_roots[1]"."""
    last = max((i for i, part in enumerate(path) if isinstance(part, str)), default=-1)
    if last < 0:
        return "(top level)"
    key = str(path[last]) + "".join(f"[{i}]" for i in path[last + 1 :])
    tables, names = [], []
    for part in path[:last]:
        if isinstance(part, int):
            tables.append(f"[[{'.'.join(names)}]] #{part + 1}")
            names = []
        else:
            names.append(part)
    if names:
        tables.append(f"[{'.'.join(names)}]")
    return " ".join([*tables, key])


def _where(path: tuple, origins: Mapping[tuple, str], source: str) -> str:
    """Where the value at `path` came from: a variable, an upstream key, the file."""
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            origin = origins[path[:n]]
            rest = _render_path(path[n:]) if n < len(path) else ""
            return f"{origin} {rest}".strip() if not origin.startswith("NEURON_") else origin
    return f"{source}: {_render_path(path)}"


_UNSUPPORTED = {  # upstream's load options this neuron cannot honour: refused, not ignored
    "quant": "quantised loading is not supported by this neuron; load the dense weights",
    "tensor_parallel": "tensor parallelism is not supported by this neuron yet",
}


def _unknown_keys(raw: Any, cls: type, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """(path, message) for every key the schema does not have, with a suggestion."""
    if not isinstance(raw, dict):
        return
    fields = _fields(cls)
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield (*path, key), _UNSUPPORTED.get(key, f"unknown key{hint}")
            continue
        table = _table_type(fields[key].type)
        if table is not None and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _unknown_keys(item, table, (*path, key, i))
        elif table is not None:
            yield from _unknown_keys(value, table, (*path, key))


_PATH_PART = re.compile(r"\.(\w+)|\[(\d+)\]")


def _structure_problems(exc: ValidationFailed) -> Iterator[tuple[tuple, str]]:
    """The converter's JSON-worded messages, in TOML's words (TOML has no null)."""
    for message in exc.extra.get("errors", [str(exc)]):
        text, _, where = message.rpartition(" @ ")
        path = tuple(int(i) if i else name for name, i in _PATH_PART.findall(where))
        text = re.sub(r"\bobject\b", "table", text.replace(" or null", ""))
        yield path, text or message


def _check_values(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """The `check` of every key, then the rules that span several keys."""
    if isinstance(obj, tuple):
        for i, item in enumerate(obj):
            yield from _check_values(item, (*path, i))
        return
    if not attrs.has(type(obj)):
        return
    for name, a in _fields(type(obj)).items():
        value = getattr(obj, name)
        check = a.metadata.get(_CHECK)
        if check and (problem := check(value)):
            yield (*path, name), problem
        yield from _check_values(value, (*path, name))
    if isinstance(obj, NeuronConfig):
        yield from _cross_checks(obj)


def _cross_checks(config: NeuronConfig) -> Iterator[tuple[tuple, str]]:
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


def _duplicates(values: list[str], path: tuple, key: str) -> Iterator[tuple[tuple, str]]:
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


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> NeuronConfig:
    """Read `path` (None = no file), apply `env` (default `os.environ`), check it all."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "neuron.toml"
    raw = _read_toml(path) if path is not None else {}
    upstream = _from_upstream(raw, source)
    origins = upstream.origins
    problems = list(_unknown_keys(raw, NeuronConfig))
    overrides, env_problems, env_notes = _env_overrides(env)
    for key_path, (name, value) in overrides.items():
        _apply(raw, key_path, value)
        origins[key_path] = name
    try:  # unknown keys are reported above, with suggestions: the tolerant converter
        config = structure(raw, NeuronConfig)
    except ValidationFailed as exc:
        problems.extend(_structure_problems(exc))
    else:
        problems.extend(_check_values(config))
    if problems or env_problems:
        raise ConfigError(
            env_problems + [f"{_where(p, origins, source)}: {m}" for p, m in problems]
        )
    base = Path.cwd() if path is None or ("model_roots",) in origins else path.parent
    roots = _model_roots(config.model_roots, upstream.roots, env, base)
    notes = (*upstream.notes, *env_notes, *_advisories(config))
    return attrs.evolve(config, model_roots=roots, source=str(path) if path else None, notes=notes)


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
