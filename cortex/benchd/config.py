"""helexa-bench's configuration: `helexa-bench.toml`, then `BENCH_…` environment overrides.

The keys are upstream's (`[bench]`, `[scenarios]`, `[api]`, `[[targets]]`),
plus a few of ours, marked below. Loading, checking, the environment and the
wording of problems are `protocol.settings`, the same machinery the daemons
use; unknown keys are warnings (`notes`), a wrong value is a `ConfigError`.
Environment: `BENCH_<SECTION>__<KEY>` (figment's spelling) or
`BENCH_<SECTION>_<KEY>`, lists comma-separated, `BENCH_DB_PATH` for
`[bench] db_path`, and `BENCH_TARGETS=name=url,name=url` for neuron targets.

Not for: what a scenario does with these numbers (`cortex.benchd.scenarios`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from cortex.config import _listen, _url, _word, split_listen
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
    split,
    structure_checked,
    unknown_keys,
)

__all__ = ["BenchConfig", "ConfigError", "Target", "load_config"]

DEFAULT_CONFIG = "helexa-bench.toml"
TargetKind = Literal["neuron", "openai", "cortex"]


def _sizes(values: tuple[int, ...]) -> str | None:
    bad = [v for v in values if v < 1]
    return f"every entry must be at least 1, got {bad}" if bad else None


def _text(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@attrs.frozen
class Bench:
    """`[bench]` — the sweep loop and the database."""

    sweep_interval_secs: float = setting(1800.0, positive)
    samples_per_version: int = setting(5, at_least(1))
    iteration_pause_secs: float = setting(2.0, at_least(0))
    request_timeout_secs: float = setting(600.0, positive)
    db_path: str = setting("/var/lib/helexa-bench/bench.sqlite", _text)


@attrs.frozen
class CapabilityProbe:
    """One `[[scenarios.capability_probes]]`: a fixed prompt whose answer is kept."""

    name: str = setting(check=_word)
    prompt: str = setting(check=_text)
    max_tokens: int = setting(2048, at_least(1))


@attrs.frozen
class Scenarios:
    """`[scenarios]` — which scenarios run, and their sizes.

    `prefix_sizes` (ours: `prefix:<n>`, opt-in), `swap` (ours: include `swap` in
    every sweep; upstream measures it only with `swap-cost`) and
    `swap_probe_tokens` (the cold probe's prompt) are not upstream keys."""

    prompt_sizes: tuple[int, ...] = setting((128, 4096), _sizes)
    max_tokens: int = setting(256, at_least(1))
    concurrency_levels: tuple[int, ...] = setting((), _sizes)
    concurrency_prompt_tokens: int = setting(512, at_least(1))
    prefix_sizes: tuple[int, ...] = setting((), _sizes)
    image_sizes: tuple[int, ...] = setting((1024,), _sizes)
    swap: bool = False
    swap_probe_tokens: int = setting(128, at_least(1))
    capability_probes: tuple[CapabilityProbe, ...] = ()


@attrs.frozen
class Api:
    """`[api]` — the read API `run` and `serve` start."""

    enabled: bool = True
    listen: str = setting("0.0.0.0:13132", _listen)

    @property
    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


@attrs.frozen
class Target:
    """One `[[targets]]`. Upstream's `name`, `kind`, `endpoint`, `label`; ours:

    kind "cortex"  a gateway: chat at `/v1/chat/completions`, build from `/version`
    token          sent as a bearer (a neuron's `[auth] token`, a peer's key)
    build          the build stamp of a target that reports none (an `openai` peer,
                   e.g. "vllm-0.11"); default "unknown"
    models         the models to bench, instead of the target's warm ones
    aliases        served id → the id reports compare it under (a peer that names
                   the same weights by a path)
    """

    name: str = setting(check=_word)
    endpoint: str = setting(check=_url)
    kind: TargetKind = "neuron"
    label: str | None = None
    token: str | None = setting(None, _word, repr=False)
    build: str | None = setting(None, _word)
    models: tuple[str, ...] | None = None
    aliases: dict[str, str] = attrs.field(factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@attrs.frozen
class BenchConfig:
    bench: Bench = Bench()
    scenarios: Scenarios = Scenarios()
    api: Api = Api()
    targets: tuple[Target, ...] = ()
    source: str | None = not_a_key(default=None)
    notes: tuple[str, ...] = not_a_key(default=())


def _ints(text: str) -> list[int]:
    try:
        return [int(part, 10) for part in split(text, ",")]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _targets_value(text: str) -> list[dict[str, Any]]:
    """`BENCH_TARGETS=name=url,name=url` → neuron targets."""
    entries = []
    for item in split(text, ","):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError(f"expected name=url[,name=url…], got {item!r}")
        entries.append({"name": name.strip(), "endpoint": url.strip()})
    return entries


_LISTS = {
    f"BENCH_SCENARIOS{sep}{key.upper()}": (("scenarios", key), _ints)
    for key in ("prompt_sizes", "concurrency_levels", "prefix_sizes", "image_sizes")
    for sep in ("_", "__")
}
ENVIRONMENT = Environment.of(
    BenchConfig,
    "BENCH_",
    aliases={"BENCH_DB_PATH": ("bench", "db_path")},
    lists={**_LISTS, "BENCH_TARGETS": (("targets",), _targets_value)},
    ignore=["BENCH_CONFIG"],
)


def _cross_checks(config: BenchConfig) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, target in enumerate(config.targets):
        if target.name in seen:
            yield ("targets", i, "name"), f"{target.name!r} names two targets"
        seen.add(target.name)
    names = [p.name for p in config.scenarios.capability_probes]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield ("scenarios", "capability_probes", i, "name"), f"{name!r} names two probes"


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> BenchConfig:
    """Read `path` (None or a missing default file = defaults only), apply `env`
    (default `os.environ`), check it all."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else DEFAULT_CONFIG
    raw = read_toml(path) if path is not None else {}
    origins: dict[tuple, str] = {}
    notes = located(unknown_keys(raw, BenchConfig, ignored=True), source, origins)
    env_problems, unknown_names = ENVIRONMENT.apply(env, raw, origins)
    config, problems = structure_checked(raw, BenchConfig, _cross_checks)
    if problems or env_problems:
        raise ConfigError(env_problems + located(problems, source, origins))
    notes += [f"{name}: not a helexa-bench setting, ignored" for name in unknown_names]
    targets = tuple(attrs.evolve(t, endpoint=t.endpoint.rstrip("/")) for t in config.targets)
    return attrs.evolve(config, targets=targets, source=source, notes=tuple(notes))


def find_config(given: Path | None, env: Mapping[str, str]) -> Path | None:
    """`-c PATH`, else `$BENCH_CONFIG`, else `./helexa-bench.toml` if it exists."""
    if given is not None:
        return given
    if env.get("BENCH_CONFIG"):
        return Path(env["BENCH_CONFIG"])
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None
