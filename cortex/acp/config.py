"""`helexa-acp`'s settings: command-line flags over environment variables over defaults.

The API key is read from the environment only (the variable `--api-key-env`
names, `HELEXA_API_KEY` by default), never from a flag, so it appears neither
in an editor's settings file nor in `ps`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import attrs

__all__ = [
    "DEFAULT_ENDPOINT",
    "AcpConfig",
    "ToolFormat",
    "build_parser",
    "helexa_version",
    "load_config",
]

DEFAULT_ENDPOINT = "http://127.0.0.1:31313/v1"  # the local cortex
ToolFormat = Literal["auto", "openai", "hermes"]


@attrs.frozen
class AcpConfig:
    endpoint: str = DEFAULT_ENDPOINT
    api_key: str | None = None
    model: str | None = None  # None: the endpoint's first model
    max_steps: int = 25  # model requests in one prompt turn
    tool_format: ToolFormat = "auto"
    extra_body: Mapping[str, Any] = attrs.field(factory=dict)  # merged into every chat request
    command_timeout: float = 300.0
    state_dir: Path | None = None  # None: sessions are not kept (no session/load)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helexa-acp",
        description="An Agent Client Protocol agent (speaks ACP on stdin/stdout) over any "
        "OpenAI-compatible endpoint; the local cortex by default.",
    )
    parser.add_argument("--version", action="version", version=f"helexa-acp {helexa_version()}")
    env = os.environ.get
    parser.add_argument(
        "--endpoint",
        default=env("HELEXA_ACP_ENDPOINT", DEFAULT_ENDPOINT),
        help="OpenAI-compatible base URL (env HELEXA_ACP_ENDPOINT; default %(default)s)",
    )
    parser.add_argument(
        "--api-key-env",
        default="HELEXA_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (default %(default)s)",
    )
    parser.add_argument(
        "--model",
        default=env("HELEXA_ACP_MODEL"),
        help="default model (env HELEXA_ACP_MODEL; default: the endpoint's first)",
    )
    parser.add_argument(
        "--max-steps",
        type=_positive_int,
        default=env("HELEXA_ACP_MAX_STEPS", 25),
        help="model requests per prompt turn before stopping (default %(default)s)",
    )
    parser.add_argument(
        "--tool-format",
        choices=("auto", "openai", "hermes"),
        default=env("HELEXA_ACP_TOOL_FORMAT", "auto"),
        help="how tools reach the model: OpenAI `tools`, Hermes `<tool_call>` "
        "text in the prompt, or auto (OpenAI, switching to Hermes when the "
        "endpoint answers with `<tool_call>` text; default %(default)s)",
    )
    parser.add_argument(
        "--extra-body",
        type=_json_object,
        default=env("HELEXA_ACP_EXTRA_BODY", "{}"),
        help="JSON object merged into every chat request, e.g. "
        "'{\"temperature\": 0.6}' (env HELEXA_ACP_EXTRA_BODY)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        default=300.0,
        help="seconds a run_command tool may run before it is killed",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=_default_state_dir(),
        help="where sessions are kept for session/load (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env("HELEXA_ACP_LOG_LEVEL", "WARNING"),
        help="stderr log level (stdout carries the protocol)",
    )
    return parser


def load_config(argv: Sequence[str] | None = None) -> tuple[AcpConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    config = AcpConfig(
        endpoint=args.endpoint,
        api_key=os.environ.get(args.api_key_env) or None,
        model=args.model or None,
        max_steps=int(args.max_steps),
        tool_format=args.tool_format,
        extra_body=_json_object(args.extra_body)
        if isinstance(args.extra_body, str)
        else args.extra_body,
        command_timeout=args.command_timeout,
        state_dir=args.state_dir,
    )
    return config, args


def helexa_version() -> str:
    try:
        return version("helexa")
    except PackageNotFoundError:
        return "0"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "helexa-acp"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value
