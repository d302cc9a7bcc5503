"""Read the tokenizer-side files of a model snapshot: tokenizer.json, special tokens,
EOS ids from the model configs, and the chat template sources.

Chat template priority is upstream's: `chat_template.jinja`, then
`chat_template.json`, then `tokenizer_config.json`'s `chat_template` (a string, or a
list of named templates such as `default` and `tool_use`). A template that does not
compile is logged and left out, so the model renders with the ChatML fallback.

Not for: using any of it (`neuron.text.tokenizer`). Failures to read are
`TokenizerLoadFailed`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer

from neuron.text.chat_template import compile_template
from neuron.text.errors import TokenizerLoadFailed

__all__ = ["config_eos_ids", "load_templates", "load_tokenizer", "read_json", "special_tokens"]

log = logging.getLogger(__name__)

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises bare Exception for every failure
        raise TokenizerLoadFailed(f"cannot load {path}: {exc}") from exc


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TokenizerLoadFailed(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerLoadFailed(f"{path} does not hold a JSON object")
    return data


def special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    """Special-token texts; old configs store an AddedToken dict with `content`."""
    found = {}
    for key in _SPECIAL_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            found[key] = value
    return found


def config_eos_ids(path: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        config = read_json(path / name)
        for value in (
            config.get("eos_token_id"),
            (config.get("text_config") or {}).get("eos_token_id"),
        ):
            ids |= _int_set(value)
    return ids


def _int_set(value: object) -> set[int]:
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool)}


def load_templates(path: Path, config: Mapping[str, Any]) -> dict[str, jinja2.Template]:
    sources = _template_sources(path, config)
    compiled = {}
    for name, source in sources.items():
        try:
            compiled[name] = compile_template(source)
        except jinja2.TemplateSyntaxError as exc:
            log.warning("chat template does not compile path=%s name=%s error=%s", path, name, exc)
    if not compiled:
        log.warning("no usable chat template, prompts use the ChatML fallback path=%s", path)
    return compiled


def _template_sources(path: Path, config: Mapping[str, Any]) -> dict[str, str]:
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return {"default": jinja_file.read_text(encoding="utf-8")}
    json_template = read_json(path / "chat_template.json").get("chat_template")
    if isinstance(json_template, str):
        return {"default": json_template}
    return _named_templates(config.get("chat_template"))


def _named_templates(value: object) -> dict[str, str]:
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {
            t["name"]: t["template"]
            for t in value
            if isinstance(t, Mapping)
            and isinstance(t.get("name"), str)
            and isinstance(t.get("template"), str)
        }
    return {}
