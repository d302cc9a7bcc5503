"""`cortex` / `python -m cortex`: the gateway's command line.

cortex serve  [--config cortex.toml] [--log-format plain|json]
cortex status [--url http://localhost:31313] [--json]
cortex up     [--model ID_OR_PATH …] [--devices cpu:0,cpu:1] [--port 31313]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortex", description="helexa gateway: one OpenAI + Anthropic API over a fleet."
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="cortex.toml (default: $CORTEX_CONFIG, "
                       "./cortex.toml, /etc/cortex/cortex.toml)")  # fmt: skip
    serve.add_argument("--log-format", choices=("plain", "json"),
                       help="overrides [log] format (default plain)")  # fmt: skip
    status = commands.add_parser("status", help="show the fleet")
    status.add_argument("--url", default=os.environ.get("CORTEX_URL", "http://localhost:31313"))
    status.add_argument("--json", action="store_true", help="print the raw fleet view")
    commands.add_parser("inspect", help="the live actor tree (= python -m cortex.inspect)")
    up = commands.add_parser("up", help="run a local fleet: a neuron and the gateway")
    up.add_argument("--model", action="append", default=[], help="model id, snapshot path or "
                    ".gguf file (repeatable; default: SmolLM2-135M-Instruct, else a "
                    "synthesized demo model)")  # fmt: skip
    up.add_argument("--devices", default="", help="e.g. cpu:0,cpu:1 (default: auto)")
    up.add_argument("--port", type=int, default=31313)
    up.add_argument("--neuron-port", type=int, default=13131)
    up.add_argument("--max-prompt-tokens", type=int, help="the neuron's longest prompt "
                    "(its [limits] max_prompt_tokens; default 16384)")  # fmt: skip
    return parser


def _version() -> str:
    from protocol.buildinfo import build_info

    return f"cortex {version('helexa')} ({build_info().git_sha})"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"]:  # its own parser: every option passes through
        from cortex.inspect.__main__ import main as inspect_main

        sys.exit(inspect_main(argv[1:]))
    args = build_parser().parse_args(argv)
    match args.command:
        case "serve":
            sys.exit(_serve(args))
        case "status":
            from cortex.status import run as status_run

            sys.exit(status_run(args.url, as_json=args.json,
                                api_key=os.environ.get("CORTEX_API_KEY")))  # fmt: skip
        case "up":
            sys.exit(_up(args))


def _serve(args: argparse.Namespace) -> int:
    import trio

    from cortex.config import ConfigError, find_config_path, load_config
    from protocol.logs import configure_logging

    configure_logging(args.log_format or "plain")  # until the config says otherwise
    try:
        config = load_config(args.config or find_config_path(os.environ))
    except ConfigError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format or config.log.format, config.log.level)
    for note in config.notes:
        logging.getLogger("cortex").warning("%s", note)
    _settle_gc()
    trio.run(_serve_until_signal, config)
    return 0


# Young-generation collections: one per this many container allocations (Python: 700).
GC_THRESHOLD = 10_000


def _settle_gc() -> None:
    """The daemon's modules are loaded: they live as long as the process. Freeze them out
    of the collector's way (a full collection no longer walks every module, class and
    function), and collect the young generation less often: a relayed request allocates
    thousands of objects that die by reference count, and at 700 the collections ran
    while 32 concurrent requests held theirs, promoting them to be walked again (GC was
    ~0.35 ms of a request's CPU at c=32 in `bench/gateway.py`, ~0.05 ms after)."""
    import gc

    import cortex.gateway
    import cortex.http  # noqa: F401  (the gateway imports it when it starts)

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


async def _serve_until_signal(config) -> None:
    import trio

    from cortex.gateway import Gateway
    from protocol import sdnotify

    gateway = Gateway(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, signals, gateway)
            nursery.start_soon(sdnotify.run_watchdog)  # no-op unless WatchdogSec= is set
            await gateway.run()
            nursery.cancel_scope.cancel()


async def _stop_on_signals(signals, gateway) -> None:
    async for _ in signals:
        gateway.stop()  # idempotent; a second signal changes nothing


def _up(args: argparse.Namespace) -> int:
    import trio

    from cortex.up import UpOptions, run_up
    from protocol.logs import configure_logging

    configure_logging("plain", "warning")
    devices = tuple(d for d in args.devices.split(",") if d)
    options = UpOptions(models=tuple(args.model), devices=devices, port=args.port,
                        metrics_port=args.port + 1, neuron_port=args.neuron_port,
                        max_prompt_tokens=args.max_prompt_tokens)  # fmt: skip
    return trio.run(run_up, options)


if __name__ == "__main__":
    main()
