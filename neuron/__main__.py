"""`neuron` / `python -m neuron`: the node daemon's command line.

    neuron serve [--config neuron.toml] [--host H] [--port N] [--log-format plain|json]

`--port`/`--host` override the file and the environment. A bad configuration
exits with status 2 and one line per problem, naming the key; so does a
gateway-only install (`pip install .`), naming the extra the node needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path

import attrs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron", description="helexa node daemon: serves the models of one host."
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="neuron.toml (default: $NEURON_CONFIG, "
                       "else /etc/neuron/neuron.toml if present)")  # fmt: skip
    serve.add_argument("--host", help="listen address (overrides [listen] host)")
    serve.add_argument("--port", type=int, help="listen port (overrides [listen] port)")
    serve.add_argument("--log-format", choices=("plain", "json"))
    return parser


def _version() -> str:
    from protocol.buildinfo import build_info

    info = build_info()
    return f"neuron {version('helexa')} ({info.git_sha})"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        sys.exit(_serve(args))


# What `pip install 'helexa[neuron]'` adds to a gateway install (import names).
NODE_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "psutil")


def _missing_node_packages() -> list[str]:
    """The node's packages this environment lacks (found without importing them:
    torch is only imported by the device workers)."""
    missing = []
    for name in NODE_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: blocked by None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def _serve(args: argparse.Namespace) -> int:
    if missing := _missing_node_packages():
        print(f"neuron: the node daemon needs the neuron extra (missing: {', '.join(missing)}): "
              "pip install 'helexa[neuron]'", file=sys.stderr)  # fmt: skip
        return 2
    import trio

    from neuron.config import ConfigError, find_config_path, load_config
    from neuron.daemon import serve_forever
    from protocol.logs import configure_logging

    try:
        config = load_config(args.config or find_config_path(os.environ))
    except ConfigError as exc:
        print(f"neuron: {exc}", file=sys.stderr)
        return 2
    listen = attrs.evolve(config.listen, **{k: v for k, v in
                          (("host", args.host), ("port", args.port)) if v is not None})  # fmt: skip
    log = attrs.evolve(config.log, format=args.log_format or config.log.format)
    config = attrs.evolve(config, listen=listen, log=log)
    configure_logging(config.log.format, config.log.level)
    for note in config.notes:
        logging.getLogger("neuron").warning("%s", note)
    trio.run(serve_forever, config)
    return 0


if __name__ == "__main__":
    main()
