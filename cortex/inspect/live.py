"""The live view in a terminal: redraw on change, quit on q or Ctrl-C, redraw on resize.

`run_live` follows the target's actor trees (`cortex.inspect.feed.follow`)
and redraws a rich `Live` display whenever a snapshot changes — at most
`MAX_FPS` times a second, and once a second anyway so that ages move on
(that tick is local; nothing is fetched for it). With `as_json` it prints
one JSON line per change instead. Keys are read from stdin in cbreak mode
only when stdin is a terminal, straight from the event loop (the fd is
waited on, never polled); the terminal mode is restored on the way out.
SIGINT and SIGTERM quit cleanly; SIGWINCH (a resize) redraws at once.

Not for: what the frame shows (`cortex.inspect.render`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import httpx
import trio
from rich.console import Console
from rich.live import Live

from cortex.inspect.feed import Board, follow
from cortex.inspect.render import render_board

__all__ = ["MAX_FPS", "TICK", "run_live"]

MAX_FPS = 10
TICK = 1.0  # redraw at least this often (seconds) so that ages advance
QUIT_KEYS = frozenset(b"qQ\x04")  # q, Q, Ctrl-D


async def run_live(client: httpx.AsyncClient, board: Board, console: Console, *,
                   needle: str | None = None, as_json: bool = False,
                   keys_fd: int | None = None) -> None:  # fmt: skip
    """Show `board` until q, Ctrl-C or SIGTERM; unreachable trees are shown, not raised."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow, client, board)
        nursery.start_soon(_handle_signals, board, nursery.cancel_scope)
        if keys_fd is not None:
            nursery.start_soon(_read_keys, keys_fd, nursery.cancel_scope)
        if as_json:
            await _print_json_lines(board)
        else:
            await _draw(board, console, needle)
        nursery.cancel_scope.cancel()


async def _draw(board: Board, console: Console, needle: str | None) -> None:
    live = Live(console=console, auto_refresh=False, screen=console.is_terminal,
                redirect_stdout=False, redirect_stderr=False)  # fmt: skip
    with live:
        seen = -1
        while True:
            with trio.move_on_after(TICK):
                await board.wait_changed(seen)
            seen = board.version
            live.update(render_board(board, now=time.time(), needle=needle, live=True),
                        refresh=True)  # fmt: skip
            await trio.sleep(1 / MAX_FPS)


async def _print_json_lines(board: Board) -> None:
    """One line per change; returns when the reader goes away (`| head`)."""
    seen = 0  # nothing to print before the first answer
    while True:
        await board.wait_changed(seen)
        seen = board.version
        try:
            print(json.dumps(board.to_dict()), flush=True)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
            return
        await trio.sleep(1 / MAX_FPS)


async def _handle_signals(board: Board, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGWINCH) as signals:
        async for signum in signals:
            if signum == signal.SIGWINCH:
                board.poke()  # the next frame is measured for the new size
            else:
                scope.cancel()
                return


async def _read_keys(fd: int, scope: trio.CancelScope) -> None:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still sends SIGINT
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            data = os.read(fd, 64)
            if not data or QUIT_KEYS & set(data):
                scope.cancel()
                return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def stdin_keys_fd() -> int | None:
    """stdin's fd when it is a terminal (keys can be read), else None."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if sys.stdin is not None and sys.stdin.isatty():
            return sys.stdin.fileno()
    return None
