"""The `python -m cortex.inspect` command line: parse, pick once or live, exit status.

Exit status: 0 after a printed snapshot or a quit (q, Ctrl-C); 1 when `--once`
cannot read the target (one line on stderr); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import httpx
import trio
from rich.console import Console

from cortex.inspect.feed import Board, InspectError, fetch_board
from cortex.inspect.live import run_live, stdin_keys_fd
from cortex.inspect.render import render_board

DEFAULT_URL = "http://localhost:31313"
URL_ENV = "CORTEX_URL"
API_KEY_ENV = "CORTEX_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cortex.inspect",
        description="Live view of the actor trees of a gateway and its nodes (or one neuron).",
    )
    add = parser.add_argument
    add("--url", default=None, help=f"a gateway or a neuron (default: ${URL_ENV} or {DEFAULT_URL})")
    add("--once", action="store_true", help="print one snapshot and exit")
    add("--json", action="store_true", help="print the raw snapshots (with --once: one document; "
        "else one JSON line per change)")  # fmt: skip
    add("--filter", metavar="TEXT", default=None,
        help="show only actors whose name, status or error contain TEXT")  # fmt: skip
    add("--api-key", default=None,
        help=f"bearer key, for a neuron that wants one (default: ${API_KEY_ENV})")  # fmt: skip
    add("--timeout", type=float, default=5.0, help="seconds per request")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    url = (url if "://" in url else f"http://{url}").rstrip("/")
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    console = console or Console()
    try:
        return trio.run(_run, args, url, api_key, console)
    except KeyboardInterrupt:
        return 130
    except InspectError as exc:
        print(f"cortex inspect: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, url: str, api_key: str | None, console: Console) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout) as client:
        if args.once:
            board = await fetch_board(client, url)
            if args.json:
                print(json.dumps(board.to_dict(), indent=2))
            else:
                console.print(render_board(board, needle=args.filter))
            return 0
        await run_live(client, Board(url), console, needle=args.filter, as_json=args.json,
                       keys_fd=stdin_keys_fd())  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
