"""`helexa-bench` / `python -m cortex.benchd`: the benchmark's command line.

helexa-bench run       [-c helexa-bench.toml]   sweep every sweep_interval_secs (+ the read API)
helexa-bench once      [-c …]                    one sweep, then exit
helexa-bench serve     [-c …]                    the read API only
helexa-bench swap-cost [-c …]                    one sweep of the swap scenario
helexa-bench score --id N --score X [--scorer manual] [--db PATH | -c …]
helexa-bench report [--db PATH | -c …] [--format md|json] [--html OUT]
                    [--scaling | --swap | --capability | --concurrency] [--baseline TARGET]

Exit status 2: a configuration error (or no targets for run, once, swap-cost).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("cortex.benchd")

_VIEWS = ("scaling", "swap", "capability", "concurrency")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helexa-bench", description="helexa's continuous, "
                                     "version-aware benchmark of neurons and peers.")  # fmt: skip
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {"run": "sweep forever, serving the read API", "once": "one sweep",
             "serve": "the read API only", "swap-cost": "one sweep of the swap scenario",
             "score": "store a quality score for a capability artifact",
             "report": "tables, JSON or an HTML page from the database"}  # fmt: skip
    sub = {name: commands.add_parser(name, help=text) for name, text in helps.items()}
    for command in sub.values():
        command.add_argument("-c", "--config", type=Path, help="helexa-bench.toml (default: "
                             "$BENCH_CONFIG, else ./helexa-bench.toml if present)")  # fmt: skip
        command.add_argument("--log-format", choices=("plain", "json"), default="plain")
    for name in ("score", "report"):
        sub[name].add_argument("--db", type=Path, help="the database (default: the config's)")
    sub["score"].add_argument("--id", type=int, required=True, help="the run's id")
    sub["score"].add_argument("--score", type=float, required=True)
    sub["score"].add_argument("--scorer", default="manual")
    report = sub["report"]
    report.add_argument("--format", choices=("md", "json"), default="md")
    report.add_argument("--html", type=Path, help="write a self-contained HTML page here")
    report.add_argument("--baseline", help="the target ratios are relative to")
    views = report.add_mutually_exclusive_group()
    for view in _VIEWS:
        views.add_argument(f"--{view}", action="store_true", help=f"the {view} view")
    return parser


def _version() -> str:
    from importlib.metadata import version

    return f"helexa-bench {version('helexa')}"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from protocol.logs import configure_logging

    configure_logging(args.log_format, "info" if args.command in ("run", "serve") else "warning")
    sys.exit(_command(args))


def _command(args: argparse.Namespace) -> int:
    from cortex.benchd.config import ConfigError, find_config, load_config

    try:
        config = load_config(find_config(args.config, os.environ))
    except ConfigError as exc:
        print(f"helexa-bench: {exc}", file=sys.stderr)
        return 2
    for note in config.notes:
        log.warning("%s", note)
    if args.command in ("run", "once", "swap-cost") and not config.targets:
        print(f"helexa-bench: no [[targets]] in {config.source} (or BENCH_TARGETS)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.command == "score":
        return _score(args, config)
    if args.command == "report":
        return _report(args, config)
    import trio

    return trio.run(_daemon, args.command, config)


def _store(args: argparse.Namespace, config: Any):
    from cortex.benchd.store import Store

    return Store(getattr(args, "db", None) or config.bench.db_path)


def _score(args: argparse.Namespace, config: Any) -> int:
    if not _store(args, config).set_score(args.id, args.score, args.scorer):
        print(f"helexa-bench: no run with id {args.id}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace, config: Any) -> int:
    from cortex.benchd import page, report

    store = _store(args, config)
    data = report.views(store.runs(), skips=store.skips(), probes=store.probes(latest_only=True),
                        baseline=args.baseline)  # fmt: skip
    if args.html:
        args.html.write_text(page.render(data), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
        return 0
    view = next((v for v in _VIEWS if getattr(args, v)), "summary")
    if args.format == "json":
        sys.stdout.write(report.to_json(data if view == "summary" else {view: data[view]}))
    else:
        sys.stdout.write(report.markdown(data, view))
    return 0


async def _daemon(command: str, config: Any) -> int:
    import trio

    from cortex.benchd import sweep
    from cortex.benchd.store import Store
    from protocol import sdnotify

    store = Store(config.bench.db_path)
    stamp = await trio.to_thread.run_sync(sweep.BenchStamp.current)  # may run git
    if command in ("once", "swap-cost"):
        result = await sweep.sweep(config, store, stamp, only_swap=command == "swap-cost")
        print(f"rows_added={result.rows_added} failed={result.failed} "
              f"unreachable={','.join(result.unreachable) or '-'}")  # fmt: skip
        return 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            nursery.start_soon(sdnotify.run_watchdog)
            if config.api.enabled or command == "serve":
                urls = await nursery.start(_serve_api, config, store)
                log.info("helexa-bench api listening url=%s", urls[0] if urls else "?")
            sdnotify.ready(f"{command}: {len(config.targets)} target(s)")
            if command == "run":
                nursery.start_soon(sweep.run_forever, config, store, stamp)
    return 0


async def _cancel_on_signal(signals, scope) -> None:
    from protocol import sdnotify

    async for _ in signals:
        sdnotify.stopping()
        scope.cancel()
        return


async def _serve_api(config: Any, store: Any, task_status: Any = None) -> None:
    import trio

    from cortex.benchd.api import create_app
    from protocol.http import make_config, serve

    host, port = config.api.address
    await serve(create_app(store), make_config(host, port, graceful_timeout=5.0),
                task_status=task_status or trio.TASK_STATUS_IGNORED)  # fmt: skip


if __name__ == "__main__":
    main()
