"""`neuron` / `python -m neuron`: the node daemon's command line."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron", description="helexa node daemon: serves the models of one host."
    )
    parser.add_argument("--version", action="version", version=f"neuron {version('helexa')}")
    return parser


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)


if __name__ == "__main__":
    main()
