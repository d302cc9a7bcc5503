"""Typed TOML settings with environment overrides: what both daemons' config modules share.

A daemon's config module declares its schema as frozen attrs classes whose
keys are `setting(default, check)` fields, and keeps its cross-field rules and
its translations of other spellings. This module does the rest, the same way
for both: it walks a schema to find unknown keys with a did-you-mean
(`unknown_keys`), structures and checks a table
(`structure_checked`, the converter's JSON wording put in TOML's), says where
a problem came from (`located`, `render_path`), reads TOML (`read_toml`), and
builds and parses a `PREFIX_…` environment (`Environment`). Not for: defaults,
wording that names a daemon, or whether an unknown key is fatal — those stay
with the daemon, as parameters here.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union, get_args, get_origin

import attrs

from protocol._converter import structure
from protocol.errors import ValidationFailed

__all__ = [
    "ConfigError",
    "Environment",
    "Problem",
    "at_least",
    "located",
    "not_a_key",
    "positive",
    "read_toml",
    "render_path",
    "setting",
    "split",
    "structure_checked",
    "unknown_keys",
]

KeyPath = tuple[str | int, ...]
Problem = tuple[KeyPath, str]
Check = Callable[[Any], str | None]
_CHECK = "protocol.settings.check"
_NOT_A_KEY = "protocol.settings.not_a_key"
_NONE: Mapping[str, Any] = MappingProxyType({})
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "".join(f"\n  {p}" for p in self.problems)
            super().__init__(f"{len(self.problems)} configuration problems:{lines}")


# ------------------------------------------------------------------ declaring keys


def setting(default: Any = attrs.NOTHING, check: Check | None = None, **kwargs: Any) -> Any:
    """A TOML key; `check(value)` returns what is wrong with a value, or None."""
    return attrs.field(default=default, metadata={_CHECK: check} if check else {}, **kwargs)


def not_a_key(**kwargs: Any) -> Any:
    """A field of the loaded result that no file or variable sets (`source`, `notes`)."""
    return attrs.field(eq=False, metadata={_NOT_A_KEY: True}, **kwargs)


def at_least(low: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None or value >= low else f"must be at least {low}, got {value}"

    return check


def positive(value: float | None) -> str | None:
    return None if value is None or value > 0 else f"must be greater than 0, got {value}"


# ------------------------------------------------------------------ schema walking


def _unwrap(tp: Any) -> list[Any]:
    """The members of `X | Y | None`, without None."""
    if get_origin(tp) in (Union, type(int | str)):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


@functools.cache
def _keys(cls: type) -> dict[str, attrs.Attribute]:
    """The fields of `cls` that are keys, by name."""
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


def unknown_keys(
    raw: Any,
    cls: type,
    path: tuple = (),
    *,
    ignored: bool = False,
    explained: Mapping[str, str] = _NONE,
) -> Iterator[Problem]:
    """(path, message) for every key the schema does not have, with a suggestion.

    `ignored` says so in the message (for a daemon that only warns);
    `explained` holds a message of its own for some names."""
    if not isinstance(raw, dict):
        return
    fields = _keys(cls)
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield (*path, key), explained.get(key, f"unknown key{', ignored' * ignored}{hint}")
            continue
        table = _table_type(fields[key].type)
        if table is None:
            continue
        entries = enumerate(value) if isinstance(value, list) else [((), value)]
        for i, entry in entries:  # an array of tables, or one table
            below = (*path, key, i) if isinstance(i, int) else (*path, key)
            yield from unknown_keys(entry, table, below, ignored=ignored, explained=explained)


def _check_values(obj: Any, path: tuple = ()) -> Iterator[Problem]:
    """The `check` of every key that holds a value, depth first."""
    if isinstance(obj, tuple):
        for i, item in enumerate(obj):
            yield from _check_values(item, (*path, i))
        return
    if not attrs.has(type(obj)):
        return
    for name, a in _keys(type(obj)).items():
        value = getattr(obj, name)
        check = a.metadata.get(_CHECK)
        if check and value is not None and (problem := check(value)):
            yield (*path, name), problem
        yield from _check_values(value, (*path, name))


_PATH_PART = re.compile(r"\.(\w+)|\[(\d+)\]")


def _structure_problems(exc: ValidationFailed) -> Iterator[Problem]:
    """The converter's JSON-worded messages, in TOML's words (TOML has no null)."""
    for message in exc.extra.get("errors", [str(exc)]):
        text, _, where = message.rpartition(" @ ")
        path = tuple(int(i) if i else name for name, i in _PATH_PART.findall(where))
        text = re.sub(r"\bobject\b", "table", text.replace(" or null", ""))
        yield path, text or message


def structure_checked(
    raw: dict[str, Any],
    cls: type,
    cross_checks: Callable[[Any], Iterable[Problem]] | None = None,
) -> tuple[Any, list[Problem]]:
    """`raw` as `cls`, and what is wrong with it: the converter's problems (and
    None), else every key's `check`, then `cross_checks(value)`."""
    try:
        value = structure(raw, cls)
    except ValidationFailed as exc:
        return None, list(_structure_problems(exc))
    return value, [*_check_values(value), *(cross_checks(value) if cross_checks else ())]


# ------------------------------------------------------------------ saying where


def render_path(path: Sequence[str | int]) -> str:
    """("gateway", "listen") → "[gateway] listen"; ("neurons", 1, "endpoint") →
    "[[neurons]] #2 endpoint"; ("models", 0, "limit", "context") →
    "[[models]] #1 limit.context"; ("model_roots", 1) → "model_roots[1]"."""
    last = max((i for i, part in enumerate(path) if isinstance(part, str)), default=-1)
    if last < 0:
        return "(top level)"
    key = str(path[last]) + "".join(f"[{i}]" for i in path[last + 1 :])
    tables: list[str] = []
    names: list[str] = []
    for part in path[:last]:
        if isinstance(part, int):
            tables.append(f"[[{'.'.join(names)}]] #{part + 1}")
            names = []
        else:
            names.append(part)
    if tables:
        return " ".join([*tables, ".".join([*names, key])])
    return f"[{'.'.join(names)}] {key}" if names else key


def _in_words(origin: str, rest: KeyPath) -> str:
    """The part of a path below an origin as words: ("keys", 0, "key") → "keys #1 key"."""
    return " ".join(f"#{p + 1}" if isinstance(p, int) else p for p in rest)


def located(
    problems: Iterable[Problem],
    source: str,
    origins: Mapping[tuple, str] = _NONE,
    tail: Callable[[str, KeyPath], str] = _in_words,
) -> list[str]:
    """Each problem as a line that says where its value came from: the origin of
    the nearest ancestor of its path in `origins` (a variable, another spelling)
    and `tail(origin, the rest of the path)`, else `source` (the file) and the path."""
    return [f"{_where(path, origins, source, tail)}: {message}" for path, message in problems]


def _where(path: KeyPath, origins: Mapping[tuple, str], source: str, tail: Callable) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            origin = origins[path[:n]]
            return f"{origin} {tail(origin, path[n:])}".strip()
    return f"{source}: {render_path(path)}"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


# ------------------------------------------------------------------ the environment

Parser = Callable[[str], Any]


def _scalar(text: str, tp: Any) -> Any:
    """`text` as a value of `tp`; ValueError says what was expected."""
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


def split(text: str, sep: str) -> list[str]:
    """The non-empty items of `text`, stripped."""
    return [part.strip() for part in text.split(sep) if part.strip()]


@attrs.frozen
class Environment:
    """The `PREFIX_…` variables that set a schema's keys.

    `variables` maps each name to (key path, type); the list-valued ones have
    their own `parsers`; `ignore` are names with the prefix that are not
    overrides (the config file's own variable, a client's)."""

    prefix: str
    variables: dict[str, tuple[tuple[str, ...], Any]]
    parsers: Mapping[str, Parser] = _NONE
    ignore: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        root: type,
        prefix: str,
        *,
        aliases: Mapping[str, tuple[str, ...]] = _NONE,
        lists: Mapping[str, tuple[tuple[str, ...], Parser]] = _NONE,
        ignore: Sequence[str] = (),
    ) -> Environment:
        """`PREFIX_<KEY>` for each top-level key of `root`, `PREFIX_<SECTION>_<KEY>`
        and figment's `PREFIX_<SECTION>__<KEY>` for each key of a section, then
        `aliases` (other names of a key) and `lists` (name → (path, parser))."""
        variables: dict[str, tuple[tuple[str, ...], Any]] = {}
        for name, a in _keys(root).items():
            table = _table_type(a.type)
            if table is None:
                variables[prefix + name.upper()] = ((name,), a.type)
            elif attrs.has(a.type):
                for key, b in _keys(table).items():
                    if _table_type(b.type) is None:
                        for sep in ("_", "__"):
                            variables[f"{prefix}{name}{sep}{key}".upper()] = ((name, key), b.type)
        types = dict(variables.values())
        variables.update({name: (path, types[path]) for name, path in aliases.items()})
        variables.update({name: (path, str) for name, (path, _) in lists.items()})
        parsers = {name: parse for name, (_, parse) in lists.items()}
        return cls(prefix, variables, MappingProxyType(parsers), frozenset(ignore))

    def closest(self, name: str, cutoff: float) -> str | None:
        """The known variable `name` is most likely a typo of, if any is this close."""
        close = difflib.get_close_matches(name, self.variables, n=1, cutoff=cutoff)
        return close[0] if close else None

    def parse(self, name: str, text: str) -> Any:
        """The value variable `name` sets; ValueError says what was expected."""
        if name in self.parsers:
            return self.parsers[name](text)
        members = _unwrap(self.variables[name][1])
        if members == [tuple[str, ...]]:
            return split(text, os.pathsep)
        return _scalar(text, members[0])

    def apply(
        self, env: Mapping[str, str], raw: dict[str, Any], origins: dict[tuple, str]
    ) -> tuple[list[str], list[str]]:
        """Set in `raw` every key `env` overrides, noting the variable in `origins`:
        (problems, names with the prefix that are not settings). Empty values count
        as unset."""
        found: dict[tuple[str, ...], tuple[str, Any]] = {}
        problems, unknown = [], []
        for name, text in sorted(env.items()):
            if not name.startswith(self.prefix) or name in self.ignore or not text.strip():
                continue
            if name not in self.variables:
                unknown.append(name)
                continue
            try:
                found[self.variables[name][0]] = (name, self.parse(name, text))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        for path, (name, value) in found.items():
            _set(raw, path, value)
            origins[path] = name
        return problems, unknown


def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    table = raw
    for key in path[:-1]:
        if not isinstance(table.get(key), dict):
            table[key] = {}
        table = table[key]
    table[path[-1]] = value
