"""`cortex` / `python -m cortex`: the gateway's command line."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortex", description="helexa gateway: one OpenAI + Anthropic API over a fleet."
    )
    parser.add_argument("--version", action="version", version=f"cortex {version('helexa')}")
    return parser


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)


if __name__ == "__main__":
    main()
