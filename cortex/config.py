"""The gateway's configuration: `cortex.toml`, `CORTEX_…` overrides, and `models.toml`.

`load_config(path, env)` reads cortex.toml (optional; every key has a
default) with upstream helexa's keys (`models_config`, `[gateway]`,
`[eviction]`, `[[neurons]]`, `[entitlements]`) plus ours (`[fleet]`,
`[http]`, `[log]`), applies the environment (`ENV_VARS` lists every name, in
both the figment spelling `CORTEX_GATEWAY__LISTEN` and `CORTEX_GATEWAY_LISTEN`),
checks every value, reads the catalogue the file names (`load_catalogue`),
and returns a frozen `CortexConfig`. Problems name where they came from —
`cortex.toml: [[neurons]] #2 endpoint: must be an http:// or https:// URL,
got 'beast:13131'`, `CORTEX_FLEET_POLL_INTERVAL: expected number, got 'x'` —
and are raised together in one `ConfigError`. Unknown keys are not fatal:
they come back, with a did-you-mean, in `CortexConfig.notes` for the daemon
to log as warnings (this module runs before logging is set up). A malformed
models.toml is fatal; a missing one is an empty catalogue and a note.

Not for: watching files (the catalogue is read once at start, like
upstream), enforcing entitlements (`cortex.auth` does), or
anything `neuron` — cortex never imports it; the generic machinery (checks,
schema walking, the environment) is `protocol.settings`, which both share.
It is longer than most because it is two schemas with their one loader.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from cortex.eviction import EvictionPolicy, EvictionStrategy
from cortex.fleet_snapshot import Catalogue, ModelProfile
from protocol.ids import ModelId, NodeName
from protocol.models import ModelCost, ModelLimit
from protocol.settings import (
    ConfigError,
    Environment,
    Problem,
    at_least,
    located,
    not_a_key,
    positive,
    read_toml,
    setting,
    structure_checked,
    unknown_keys,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MODELS_PATH",
    "ENV_VARS",
    "ApiKey",
    "ConfigError",
    "CortexConfig",
    "Entitlements",
    "Eviction",
    "Fleet",
    "Gateway",
    "Http",
    "Log",
    "Neuron",
    "RateLimit",
    "Routing",
    "Window",
    "find_config_path",
    "load_catalogue",
    "load_config",
    "split_listen",
]

MIB = 1024 * 1024
DEFAULT_CONFIG_PATH = Path("/etc/cortex/cortex.toml")
DEFAULT_MODELS_PATH = "/etc/cortex/models.toml"


# ------------------------------------------------------------------ value checks


def _word(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    return "must not contain whitespace" if any(c.isspace() for c in value) else None


def split_listen(value: str) -> tuple[str, int]:
    """`"0.0.0.0:31313"` → `("0.0.0.0", 31313)`; `"[::]:31313"` → `("::", 31313)`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdecimal():
        raise ValueError(f"must be host:port (e.g. 0.0.0.0:31313), got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listen(value: str) -> str | None:
    try:
        split_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _url(value: str) -> str | None:
    wrong = f"must be an http:// or https:// URL, got {value!r}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return wrong
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return wrong
    if parts.query or parts.fragment:
        return f"must be a base URL without ?query or #fragment, got {value!r}"
    return None


# ------------------------------------------------------------------ cortex.toml


@attrs.frozen
class Gateway:
    """`[gateway]` — listen "0.0.0.0:31313" (the API), metrics_listen
    "0.0.0.0:31314" (Prometheus); both `host:port`, IPv6 as `[::]:31313`."""

    listen: str = setting("0.0.0.0:31313", _listen)
    metrics_listen: str = setting("0.0.0.0:31314", _listen)

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def metrics_address(self) -> tuple[str, int]:
        return split_listen(self.metrics_listen)


@attrs.frozen
class Eviction:
    """`[eviction]` — strategy "lru" | "priority"; defrag_after_cycles 0 (off);
    min_residency_seconds 30 (ours: a model this fresh is not evicted)."""

    strategy: Literal["lru", "priority"] = "lru"
    defrag_after_cycles: int = setting(0, at_least(0))
    min_residency_seconds: float = setting(30.0, at_least(0))

    def policy(self) -> EvictionPolicy:
        return EvictionPolicy(
            strategy=EvictionStrategy(self.strategy),
            min_residency_seconds=self.min_residency_seconds,
            defrag_after_cycles=self.defrag_after_cycles,
        )


@attrs.frozen
class Neuron:
    """One `[[neurons]]` entry: `name` (unique), `endpoint` (base URL; a
    trailing slash is dropped) and `token` (the neuron's `[auth] token`, sent
    as a bearer; default `[fleet] neuron_token`; never shown in repr)."""

    name: NodeName = setting(check=_word)  # noqa: RUF009 -- an attrs field, not a default
    endpoint: str = setting(check=_url)
    token: str | None = setting(None, _word, repr=False)


@attrs.frozen
class Fleet:
    """`[fleet]` (ours) — polling the neurons, seconds.

    poll_interval      5   between two polls of one neuron
    poll_timeout       5   one poll request
    failure_threshold  3   consecutive failed polls before a node is down
                           (fewer make it suspect)
    backoff_max        30  longest gap between polls of a down node
    neuron_token       —   the token of every neuron without its own `token`
    """

    poll_interval: float = setting(5.0, positive)
    poll_timeout: float = setting(5.0, positive)
    failure_threshold: int = setting(3, at_least(1))
    backoff_max: float = setting(30.0, positive)
    neuron_token: str | None = setting(None, _word, repr=False)


@attrs.frozen
class Routing:
    """`[routing]` (ours) — choosing among a model's replicas (`cortex.affinity`).

    prefix_affinity  true  requests sharing a prompt prefix go to the replica
                           that served it last (its prefix cache holds it);
                           false: always the least busy replica
    prefix_chars     4096  characters of the prefix (tools, system messages,
                           first user message) that name it
    load_factor      1.5   the affine replica is passed over for the least
                           busy one when its load (in flight + queued) is
                           above load_factor x the replicas' mean load...
    load_slack       4     ...and above the least busy replica's by more
                           than this many requests
    """

    prefix_affinity: bool = True
    prefix_chars: int = setting(4096, at_least(1))
    load_factor: float = setting(1.5, at_least(1))
    load_slack: int = setting(4, at_least(0))


@attrs.frozen
class Http:
    """`[http]` (ours) — request handling.

    max_body_bytes         33554432 (32 MiB)  larger bodies get 413
    keepalive_interval     1.0 s   SSE comment while a stream waits
    upstream_idle_timeout  300 s   a neuron stream silent this long fails
    load_timeout           1800 s  longest wait for a model to load
    retries                2       re-placements after a retriable failure
                                   before any byte reached the client
    drain_timeout          30 s    on SIGTERM, requests in flight get this
                                   long to finish before they are cancelled
    body_timeout           60 s    a request body not received in full within
                                   this long gets 408
    idle_timeout           75 s    a connection with no request in progress
                                   (idle, or still sending its head:
                                   slow-loris) is closed
    max_header_bytes       65536   a larger request head gets 431
    """

    max_body_bytes: int = setting(32 * MIB, at_least(1024))
    keepalive_interval: float = setting(1.0, positive)
    upstream_idle_timeout: float = setting(300.0, positive)
    load_timeout: float = setting(1800.0, positive)
    retries: int = setting(2, at_least(0))
    drain_timeout: float = setting(30.0, at_least(0))
    body_timeout: float = setting(60.0, positive)
    idle_timeout: float = setting(75.0, positive)
    max_header_bytes: int = setting(64 * 1024, at_least(1024))


@attrs.frozen
class Log:
    """`[log]` (ours) — format "plain" | "json"; level "debug" … "critical"."""

    format: Literal["plain", "json"] = "plain"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"


@attrs.frozen
class Window:
    """A key's budget window: `{kind = "balance"}` or `{kind = "rolling", seconds = N}`."""

    kind: Literal["balance", "rolling"] = "balance"
    seconds: int | None = setting(None, at_least(1))


@attrs.frozen
class RateLimit:
    """A key's `rate_limit = {requests = N, tokens = N, seconds = 60}` (ours):
    at most `requests` requests and `tokens` tokens per window of `seconds`."""

    requests: int | None = setting(None, at_least(1))
    tokens: int | None = setting(None, at_least(1))
    seconds: float = setting(60.0, positive)


@attrs.frozen
class ApiKey:
    """One `[[entitlements.keys]]` entry. `key` is the bearer secret (never
    shown in repr or errors); `key_id` defaults to `account_id`. Ours:
    `admin` (may use `/admin/*`), `models` (allowed names; None = all) and
    `rate_limit`."""

    key: str = setting(check=_word, repr=False)
    account_id: str = setting(check=_word)
    key_id: str | None = setting(None, _word)
    hard_cap: int | None = setting(None, at_least(0))
    window: Window = attrs.field(factory=Window)
    admin: bool = False
    models: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None


@attrs.frozen
class Entitlements:
    """`[entitlements]` (also spelt `[auth]`) — require_auth false, keys [],
    keys_file (ours: a TOML file of more `[[keys]]`, relative to cortex.toml)."""

    require_auth: bool = False
    keys: tuple[ApiKey, ...] = ()
    keys_file: str | None = None


@attrs.frozen
class _KeysFile:
    keys: tuple[ApiKey, ...] = ()


@attrs.frozen
class CortexConfig:
    """The whole configuration: `models_config` (catalogue path), `neurons`,
    and the sections above. `source` (the file read), `notes` (warnings for
    the log) and `catalogue` (what `models_config` holds) are not keys."""

    models_config: str = DEFAULT_MODELS_PATH
    gateway: Gateway = attrs.field(factory=Gateway)
    eviction: Eviction = attrs.field(factory=Eviction)
    neurons: tuple[Neuron, ...] = ()
    fleet: Fleet = attrs.field(factory=Fleet)
    routing: Routing = attrs.field(factory=Routing)
    http: Http = attrs.field(factory=Http)
    log: Log = attrs.field(factory=Log)
    entitlements: Entitlements = attrs.field(factory=Entitlements)
    source: str | None = not_a_key(default=None)
    notes: tuple[str, ...] = not_a_key(default=())
    catalogue: Catalogue = not_a_key(factory=Catalogue)  # noqa: RUF009 -- an attrs field

    @property
    def models_path(self) -> Path:
        return Path(self.models_config)

    def neuron(self, name: str) -> Neuron | None:
        return next((n for n in self.neurons if n.name == name), None)


# ------------------------------------------------------------------ models.toml


@attrs.frozen
class _Limit:
    context: int = setting(check=at_least(1))
    input: int | None = setting(None, at_least(1))
    output: int | None = setting(None, at_least(1))


@attrs.frozen
class _Cost:  # upstream: input/output default to 0.0 once the table exists
    input: float = setting(0.0, at_least(0))
    output: float = setting(0.0, at_least(0))
    cache_read: float | None = setting(None, at_least(0))
    cache_write: float | None = setting(None, at_least(0))


@attrs.frozen
class _Model:
    id: str = setting(check=_word)
    harness: str | None = None  # upstream requires it; one engine here
    quant: str | None = None
    vram_mb: int | None = setting(None, at_least(0))
    min_devices: int = setting(1, at_least(1))
    min_device_vram_mb: int | None = setting(None, at_least(0))
    pinned_on: tuple[str, ...] = ()
    residency_priority: int | None = setting(None, at_least(0))
    capabilities: tuple[str, ...] = ()
    limit: _Limit | None = None
    cost: _Cost | None = None
    source: str | None = None

    def profile(self) -> ModelProfile:
        limit, cost = self.limit, self.cost
        return ModelProfile(
            id=ModelId(self.id), vram_mb=self.vram_mb, min_devices=self.min_devices,
            min_device_vram_mb=self.min_device_vram_mb,
            pinned_on=tuple(NodeName(n) for n in self.pinned_on),
            residency_priority=self.residency_priority, capabilities=self.capabilities,
            limit=ModelLimit(context=limit.context, input=limit.input, output=limit.output)
            if limit else None,
            cost=ModelCost(input=cost.input, output=cost.output, cache_read=cost.cache_read,
                           cache_write=cost.cache_write) if cost else None,
            source=self.source,
        )  # fmt: skip


@attrs.frozen
class _CatalogueFile:
    models: tuple[_Model, ...] = ()
    aliases: dict[str, Any] = attrs.field(factory=dict)


# ------------------------------------------------------------------ the environment


def _neurons_value(text: str) -> list[dict[str, str]]:
    entries = []
    for item in (part.strip() for part in text.split(",")):
        name, sep, endpoint = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=url items separated by commas, got {item!r}")
        entries.append({"name": name.strip(), "endpoint": endpoint.strip()})
    return entries


ENVIRONMENT = Environment.of(  # also upstream's CORTEX_<SECTION>__<KEY>
    CortexConfig,
    "CORTEX_",
    lists={"CORTEX_NEURONS": (("neurons",), _neurons_value)},  # name=url,name=url
    ignore=["CORTEX_CONFIG", "CORTEX_URL", "CORTEX_API_KEY"],  # the file; `cortex status`'s
)
ENV_VARS: dict[str, tuple[tuple[str, ...], Any]] = ENVIRONMENT.variables


def _unknown_env_note(name: str) -> str:
    close = ENVIRONMENT.closest(name, cutoff=0.8)
    hint = f" (did you mean {close}?)" if close else ""
    return f"{name} is not a cortex setting, ignored{hint}"


# ------------------------------------------------------------------ upstream's spellings


def _translate(raw: dict[str, Any], source: str, origins: dict[tuple, str]) -> tuple[list, list]:
    """Rewrite other spellings in `raw` (noting them in `origins`): (problems, notes)."""
    problems, notes = [], []
    if "auth" in raw:
        if "entitlements" in raw:
            raw.pop("auth")
            problems.append(f"{source}: [auth] and [entitlements] are one section: keep one")
        else:
            raw["entitlements"] = raw.pop("auth")
            origins[("entitlements",)] = f"{source}: [auth]"
    if raw.pop("upstream", None) is not None:
        notes.append(f"{source}: [upstream] has no effect here (no usage reporting)")
    if "nodes" in raw:
        raw.pop("nodes")
        notes.append(f"{source}: [[nodes]] is upstream's obsolete spelling and is ignored: "
                     "list the neurons as [[neurons]] name, endpoint")  # fmt: skip
    return problems, notes


# ------------------------------------------------------------------ cross checks


def _cross_checks(config: CortexConfig) -> Iterator[Problem]:
    yield from _duplicates([n.name for n in config.neurons], ("neurons",), "name")
    yield from _key_checks(config.entitlements.keys, ("entitlements", "keys"))
    gateway = config.gateway
    if gateway.listen == gateway.metrics_listen and gateway.listen_address[1] != 0:
        yield ("gateway", "metrics_listen"), "must differ from listen"  # port 0: two free ports
    if config.fleet.backoff_max < config.fleet.poll_interval:
        yield ("fleet", "backoff_max"), (f"must be at least poll_interval "
                                         f"({config.fleet.poll_interval:g})")  # fmt: skip


def _key_checks(keys: Sequence[ApiKey], path: tuple) -> Iterator[Problem]:
    yield from _duplicates([k.key for k in keys], path, "key", secret=True)
    for i, key in enumerate(keys):
        if key.window.kind == "rolling" and key.window.seconds is None:
            yield (*path, i, "window", "seconds"), "required for a rolling window"


def _keys_file_checks(file: _KeysFile) -> Iterator[Problem]:
    return _key_checks(file.keys, ("keys",))


def _duplicates(values: list, path: tuple, key: str, *, secret: bool = False) -> Iterator[Problem]:
    seen: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            shown = f"the same as #{seen[value] + 1}" if secret else f"{value!r} appears twice"
            yield (*path, i, key), shown
        seen.setdefault(value, i)


def _advisories(config: CortexConfig, catalogue: Catalogue) -> Iterator[str]:
    where = config.source or "cortex.toml"
    if not config.neurons:
        yield f"{where}: no [[neurons]]: the gateway has nothing to route to"
    if config.entitlements.require_auth and not config.entitlements.keys:
        yield f"{where}: [entitlements] require_auth is on with no keys: every request is refused"
    names = {n.name for n in config.neurons}
    for profile in catalogue.profiles.values():
        unknown = [n for n in profile.pinned_on if n not in names]
        if unknown and config.neurons:
            yield (f"{config.models_config}: model {profile.id!r} pinned_on names "
                   f"{', '.join(unknown)}, not in [[neurons]]")  # fmt: skip


# ------------------------------------------------------------------ loading


def find_config_path(env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """`CORTEX_CONFIG` if set (it must exist), else ./cortex.toml, else
    /etc/cortex/cortex.toml, else None (run on defaults)."""
    if env.get("CORTEX_CONFIG"):
        return Path(env["CORTEX_CONFIG"])
    for candidate in ((cwd or Path.cwd()) / "cortex.toml", DEFAULT_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return None


def _structured(
    raw: dict,
    cls: type,
    origins: Mapping[tuple, str],
    source: str,
    cross_checks: Callable[[Any], Iterator[Problem]] | None = None,
) -> Any:
    """`raw` as `cls`, its values checked; ConfigError lists every problem."""
    value, found = structure_checked(raw, cls, cross_checks)
    if found:
        raise ConfigError(located(found, source, origins))
    return value


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, catalogue: bool = True
) -> CortexConfig:
    """Read `path` (None = no file), apply `env` (default `os.environ`), check
    it all, then read the catalogue (`catalogue=False` skips that)."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "cortex.toml"
    raw = read_toml(path) if path is not None else {}
    origins: dict[tuple, str] = {}
    problems, notes = _translate(raw, source, origins)
    notes += located(unknown_keys(raw, CortexConfig, ignored=True), source, origins)
    env_problems, unknown_names = ENVIRONMENT.apply(env, raw, origins)
    try:
        config = _structured(raw, CortexConfig, origins, source, _cross_checks)
    except ConfigError as exc:
        raise ConfigError([*env_problems, *problems, *exc.problems]) from None
    if problems or env_problems:
        raise ConfigError(env_problems + problems)
    base = path.parent if path is not None and ("models_config",) not in origins else Path.cwd()
    config = _normalised(config, base, str(path) if path is not None else None)
    from_file = path is not None and ("entitlements", "keys_file") not in origins
    config = _with_keys_file(config, path.parent if from_file else Path.cwd(), notes)
    cat_notes: list[str] = []
    loaded = load_catalogue(config.models_path, cat_notes) if catalogue else Catalogue()
    env_notes = [_unknown_env_note(name) for name in unknown_names]
    notes += env_notes + cat_notes + list(_advisories(config, loaded))
    return attrs.evolve(config, notes=tuple(notes), catalogue=loaded)


def _normalised(config: CortexConfig, base: Path, source: str | None) -> CortexConfig:
    """Absolute catalogue path, endpoints without a trailing slash, key ids filled."""
    models = os.path.normpath(base / Path(config.models_config).expanduser())
    neurons = tuple(attrs.evolve(n, endpoint=n.endpoint.rstrip("/")) for n in config.neurons)
    keys = tuple(attrs.evolve(k, key_id=k.key_id or k.account_id)
                 for k in config.entitlements.keys)  # fmt: skip
    entitlements = attrs.evolve(config.entitlements, keys=keys)
    return attrs.evolve(
        config, models_config=models, neurons=neurons, entitlements=entitlements, source=source
    )


def _with_keys_file(config: CortexConfig, base: Path, notes: list[str]) -> CortexConfig:
    """`keys_file`'s `[[keys]]` appended to the inline keys (key ids filled), and a
    note for each file holding secrets that every user on the host can read."""
    entitlements = config.entitlements
    tokens = config.fleet.neuron_token or any(n.token for n in config.neurons)
    holds_secrets = entitlements.keys or tokens
    if config.source and holds_secrets:
        notes.extend(_world_readable(Path(config.source), "API keys or neuron tokens"))
    if entitlements.keys_file is None:
        return config
    path = Path(os.path.normpath(base / Path(entitlements.keys_file).expanduser()))
    raw = read_toml(path)
    notes += located(unknown_keys(raw, _KeysFile, ignored=True), str(path))
    added = _structured(raw, _KeysFile, {}, str(path), _keys_file_checks).keys
    notes.extend(_world_readable(path, "API keys"))
    keys = (*entitlements.keys, *(attrs.evolve(k, key_id=k.key_id or k.account_id)
                                  for k in added))  # fmt: skip
    inline = {k.key for k in entitlements.keys}
    clashes = [f"{path}: [[keys]] #{i + 1} key: the same as a key in [entitlements]"
               for i, k in enumerate(added) if k.key in inline]  # fmt: skip
    if clashes:
        raise ConfigError(clashes)
    return attrs.evolve(config, entitlements=attrs.evolve(
        entitlements, keys=keys, keys_file=str(path)))  # fmt: skip


def _world_readable(path: Path, what: str) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return []
    if not mode & stat.S_IROTH:
        return []
    return [f"{path}: readable by every user on this host (mode {stat.S_IMODE(mode):04o}) "
            f"and it holds {what}: chmod o-r it (e.g. 0640, owned by the service's "
            "group)"]  # fmt: skip


def load_catalogue(path: Path, notes: list[str] | None = None) -> Catalogue:
    """models.toml as a `Catalogue`. Missing → empty (and a note); malformed →
    `ConfigError`. Advisories (unknown keys, aliases to ids the catalogue lacks,
    `quant`) are appended to `notes` when given."""
    notes = [] if notes is None else notes
    if not path.exists():
        notes.append(f"{path}: no such file: the catalogue is empty, so only models "
                     "the neurons report can be served")  # fmt: skip
        return Catalogue()
    raw = read_toml(path)
    notes += located(unknown_keys(raw, _CatalogueFile, ignored=True), str(path))
    parsed = _structured(raw, _CatalogueFile, {}, str(path))
    ids = [m.id for m in parsed.models]
    problems = located(_duplicates(ids, ("models",), "id"), str(path))
    aliases = dict(_aliases(parsed, path, problems, notes))
    if problems:
        raise ConfigError(problems)
    notes += [_quant_note(path, m) for m in parsed.models if m.quant]
    return Catalogue.of([m.profile() for m in parsed.models], aliases)


def _quant_note(path: Path, model: _Model) -> str:
    return (f"{path}: [[models]] {model.id!r} quant {model.quant!r} has no effect: neurons "
            "load dense weights, so its vram_mb may be too small")  # fmt: skip


def _aliases(
    parsed: _CatalogueFile, path: Path, problems: list[str], notes: list[str]
) -> Iterator[tuple[str, ModelId]]:
    ids = {m.id for m in parsed.models}
    for alias, target in parsed.aliases.items():
        if not isinstance(target, str) or not target.strip():
            problems.append(f"{path}: [aliases] {alias}: expected a model id (string)")
        elif alias in ids:
            notes.append(f"{path}: [aliases] {alias}: is also a model id; the model wins")
        else:
            if target not in ids:
                notes.append(f"{path}: [aliases] {alias}: {target!r} is not in [[models]]; "
                             "it resolves only while a neuron reports that model")  # fmt: skip
            yield alias, ModelId(target)
