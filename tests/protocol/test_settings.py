"""protocol.settings: the schema walking, checks, wording and environment both
daemons' config modules share (their own tests hold the daemons' messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import pytest

from protocol.settings import (
    ConfigError,
    Environment,
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


@attrs.frozen
class Item:
    name: str = setting(check=lambda v: None if v else "must not be empty")
    size: int | None = setting(None, at_least(1))


@attrs.frozen
class Section:
    level: Literal["low", "high"] = "low"
    rate: float = setting(1.0, positive)
    on: bool = False
    items: tuple[Item, ...] = ()


@attrs.frozen
class Root:
    roots: tuple[str, ...] | None = None
    section: Section = attrs.field(factory=Section)
    items: tuple[Item, ...] = ()
    notes: tuple[str, ...] = not_a_key(default=())


def _items(text: str) -> list[dict[str, str]]:
    return [{"name": n} for n in split(text, ",")]


ENV = Environment.of(
    Root,
    "APP_",
    aliases={"APP_RATE": ("section", "rate")},
    lists={"APP_ITEMS": (("items",), _items)},
    ignore=["APP_CONFIG"],
)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("section", "rate"), "[section] rate"),
        (("items", 1, "name"), "[[items]] #2 name"),
        (("section", "items", 0, "size"), "[[section.items]] #1 size"),
        (("items", 0, "limit", "context"), "[[items]] #1 limit.context"),
        (("roots", 1), "roots[1]"),
        ((), "(top level)"),
    ],
)
def test_paths_are_shown_in_toml_terms(path, shown):
    assert render_path(path) == shown


def test_unknown_keys_are_found_at_every_depth_with_a_suggestion():
    raw = {"sectoin": {}, "section": {"rat": 1, "items": [{"nme": "x"}]}, "gone": 1}
    found = list(unknown_keys(raw, Root, ignored=True, explained={"gone": "removed"}))
    assert found == [
        (("sectoin",), "unknown key, ignored (did you mean 'section'?)"),
        (("section", "rat"), "unknown key, ignored (did you mean 'rate'?)"),
        (("section", "items", 0, "nme"), "unknown key, ignored (did you mean 'name'?)"),
        (("gone",), "removed"),
    ]
    assert list(unknown_keys({"notes": []}, Root)) == [
        (("notes",), "unknown key (did you mean 'roots'?)")  # not a key
    ]


def test_structure_checked_words_problems_in_toml_terms():
    value, found = structure_checked({"section": {"on": "yes"}}, Root)
    assert value is None
    assert found == [(("section", "on"), "expected bool, got string")]


def test_checks_then_cross_checks():
    raw = {"section": {"rate": 0}, "items": [{"name": ""}, {"name": "a", "size": 0}]}
    value, found = structure_checked(raw, Root, lambda v: [(("items",), "cross")])
    assert isinstance(value, Root)
    assert found == [
        (("section", "rate"), "must be greater than 0, got 0.0"),
        (("items", 0, "name"), "must not be empty"),
        (("items", 1, "size"), "must be at least 1, got 0"),
        (("items",), "cross"),
    ]


def test_located_names_the_origin_of_the_nearest_ancestor():
    problems = [(("items", 1, "name"), "bad"), (("section", "rate"), "low")]
    origins = {("items",): "APP_ITEMS"}
    assert located(problems, "app.toml", origins) == [
        "APP_ITEMS #2 name: bad",
        "app.toml: [section] rate: low",
    ]
    assert located(problems, "app.toml", origins, lambda origin, rest: "") == [
        "APP_ITEMS: bad",
        "app.toml: [section] rate: low",
    ]


def test_environment_names_every_key():
    assert ENV.variables == {
        "APP_ROOTS": (("roots",), tuple[str, ...] | None),
        "APP_SECTION_LEVEL": (("section", "level"), Literal["low", "high"]),
        "APP_SECTION__LEVEL": (("section", "level"), Literal["low", "high"]),
        "APP_SECTION_RATE": (("section", "rate"), float),
        "APP_SECTION__RATE": (("section", "rate"), float),
        "APP_SECTION_ON": (("section", "on"), bool),
        "APP_SECTION__ON": (("section", "on"), bool),
        "APP_RATE": (("section", "rate"), float),
        "APP_ITEMS": (("items",), str),
    }
    assert ENV.closest("APP_SECTON_RATE", cutoff=0.8) == "APP_SECTION_RATE"
    assert ENV.closest("APP_ZZZ", cutoff=0.8) is None


def test_environment_overrides_the_file_and_notes_where():
    raw = {"section": {"rate": 2.0}, "items": [{"name": "file"}]}
    origins: dict[tuple, str] = {}
    env = {
        "APP_SECTION_RATE": "3",
        "APP_SECTION_ON": "yes",
        "APP_ITEMS": "a, b,",
        "APP_ROOTS": "x::y",
        "APP_CONFIG": "app.toml",
        "APP_SECTION_LEVEL": " ",
        "APP_NOPE": "1",
        "OTHER": "1",
    }
    problems, unknown = ENV.apply(env, raw, origins)
    assert (problems, unknown) == ([], ["APP_NOPE"])
    assert raw == {
        "section": {"rate": 3.0, "on": True},
        "items": [{"name": "a"}, {"name": "b"}],
        "roots": ["x", "y"],
    }
    assert origins[("section", "rate")] == "APP_SECTION_RATE"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"APP_SECTION_ON": "maybe"}, "expected true/false (1/0, yes/no, on/off), got 'maybe'"),
        ({"APP_SECTION_RATE": "nan"}, "expected number, got 'nan'"),
    ],
)
def test_environment_values_that_do_not_parse_are_problems(env, problem):
    raw: dict = {}
    problems, _ = ENV.apply(env, raw, {})
    assert problems == [f"{next(iter(env))}: {problem}"] and raw == {}


def test_config_error_lists_every_problem(tmp_path: Path):
    assert str(ConfigError(["one"])) == "one"
    assert str(ConfigError(["one", "two"])) == "2 configuration problems:\n  one\n  two"
    (tmp_path / "bad.toml").write_text("x = ")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        read_toml(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match=r"missing\.toml: no such file"):
        read_toml(tmp_path / "missing.toml")
