"""The systemd units, their example configurations, and each daemon run the way its unit runs it.

The static tests read `systemd/*.service` and check what the daemons rely
on (Type=notify, the stop budget, KillMode=mixed for the neuron); the
example configurations under `systemd/etc` must load with our loaders. The
process tests start each daemon with the unit's own ExecStart command line
and Environment= lines — a clean environment like systemd's, the config path
pointed at a temporary config derived from the example (loopback, a free
port, a tiny synthesized model for the neuron), state and cache directories
in a temp dir — and `NOTIFY_SOCKET` pointing at a datagram socket the test
binds. They assert READY=1 (and the neuron's model STATUS), keepalives
under WatchdogSec=, that every message comes from the main process
(NotifyAccess=main), and after SIGTERM: STOPPING=1, exit status 0, no child
left. `.ci/systemd-check` runs `systemd-analyze verify` and `security`.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
EXAMPLES = UNITS / "etc"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 120.0  # the neuron's READY needs its probe; ready: a worker importing torch
TINY_MODEL = "helexa/qwen3-tiny"


# ------------------------------------------------------------------ reading a unit


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values, in order]}}; systemd allows repeated keys."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= appears {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


# ------------------------------------------------------------------ static checks


@pytest.mark.parametrize("program", ["cortex", "neuron"])
def test_unit_runs_the_daemon_as_a_notify_service(program):
    unit = read_unit(f"{program}.service")
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv == [f"/usr/bin/{program}", "serve", "--config", f"/etc/{program}/{program}.toml"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "WatchdogSec")) > 0
    assert int(one(unit, "Unit", "StartLimitBurst")) > 1
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert one(unit, "Service", "User") == program


@pytest.mark.parametrize("program", ["cortex", "neuron", "helexa-bench"])
def test_unit_is_hardened(program):
    service = read_unit(f"{program}.service")["Service"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    families = set(service["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}  # AF_UNIX: the notify socket
    assert service["SystemCallFilter"][0] == "@system-service"


def test_bench_unit_runs_the_sweep_as_a_notify_service_that_always_restarts():
    unit = read_unit("helexa-bench.service")
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv == ["/usr/bin/helexa-bench", "run", "--config",
                    "/etc/helexa-bench/helexa-bench.toml"]  # fmt: skip
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "Restart") == "always"  # upstream's choice: a loop, no drain
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"
    assert one(unit, "Service", "User") == "helexa-bench"
    assert one(unit, "Service", "StateDirectory") == "helexa-bench"  # the database's home
    assert seconds(one(unit, "Service", "WatchdogSec")) > 0


def test_cortex_stop_budget_covers_the_drain():
    from cortex.config import Http

    unit = read_unit("cortex.service")
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= Http().drain_timeout + 15


def test_neuron_stop_budget_covers_drain_unload_and_workers():
    from neuron.config import Timeouts

    t = Timeouts()
    unit = read_unit("neuron.service")
    # drain, 5 s flush, unload_drain + 10 s, each worker's stop ladder: see the unit.
    worst = t.drain + 5 + t.unload_drain + 10 + t.worker_shutdown + t.worker_terminate
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > worst


def test_neuron_unit_stops_its_own_workers_and_opens_only_gpu_devices():
    service = read_unit("neuron.service")["Service"]
    assert service["KillMode"] == ["mixed"]
    assert service["OOMPolicy"] == ["continue"]
    assert service["DevicePolicy"] == ["closed"]
    groups = {value.split()[0] for value in service["DeviceAllow"]}
    assert groups == {"char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps",
                      "char-kfd", "char-drm"}  # fmt: skip


# ------------------------------------------------------------------ example configurations


def test_example_cortex_config_loads():
    from cortex.config import load_config

    models = EXAMPLES / "cortex" / "models.toml"
    config = load_config(EXAMPLES / "cortex" / "cortex.toml", {"CORTEX_MODELS_CONFIG": str(models)})
    assert config.gateway.listen == "0.0.0.0:31313"
    assert config.gateway.metrics_listen == "0.0.0.0:31314"
    assert [n.name for n in config.neurons] == ["node1"]
    assert "Qwen/Qwen3-8B" in config.catalogue.profiles
    assert config.catalogue.aliases["qwen"] == "Qwen/Qwen3-8B"
    assert config.notes == ()
    # As installed, the file names the catalogue beside it.
    installed = load_config(EXAMPLES / "cortex" / "cortex.toml", {}, catalogue=False)
    assert installed.models_config == "/etc/cortex/models.toml"


def test_example_neuron_config_loads():
    from neuron.config import load_config

    config = load_config(EXAMPLES / "neuron" / "neuron.toml", {})
    assert config.listen.port == 13131
    assert config.model_roots is not None
    assert config.model_roots[0] == "/var/lib/neuron/models"
    assert config.timeouts.drain == 30
    assert all("unknown key" not in note for note in config.notes)


def test_example_bench_config_loads():
    from cortex.benchd.config import load_config

    config = load_config(EXAMPLES / "helexa-bench" / "helexa-bench.toml", {})
    assert config.bench.db_path == "/var/lib/helexa-bench/bench.sqlite"
    assert config.api.address == ("0.0.0.0", 13132)
    assert [t.name for t in config.targets] == ["node1"]
    assert config.notes == ()


# ------------------------------------------------------------------ the notify socket


@attrs.frozen
class Notification:
    fields: dict[str, str]
    pid: int  # the sender, from SCM_CREDENTIALS


class NotifySocket:
    """The datagram socket systemd would provide, with the sender's credentials."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.received: list[Notification] = []

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, want: Callable[[dict[str, str]], bool], timeout: float, what: str,
                 process: subprocess.Popen, log: Path) -> Notification:  # fmt: skip
        for seen in self.received:
            if want(seen.fields):
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, 0.5))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                if process.poll() is not None:
                    break
                continue
            note = Notification(_fields(data), _sender(ancillary))
            self.received.append(note)
            if want(note.fields):
                return note
        raise AssertionError(
            f"no {what} within {timeout}s (exit status {process.poll()}); got "
            f"{[n.fields for n in self.received]}\n{log.read_text(errors='replace')[-4000:]}"
        )


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


def _sender(ancillary: list) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return struct.unpack("iII", data[:12])[0]
    return -1


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to 107 bytes: a short temp dir, not tmp_path.
    with tempfile.TemporaryDirectory(prefix="helexa-sd-") as tmp:
        sock = NotifySocket(Path(tmp))
        try:
            yield sock
        finally:
            sock.close()


# ------------------------------------------------------------------ running a unit's command


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the example no longer has exactly one {old!r}"
    return text.replace(old, new)


def _program(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"no '{name}' script installed (pip install -e .)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@attrs.define
class UnitRun:
    """One daemon started the way its unit starts it."""

    process: subprocess.Popen
    log: Path
    stop_timeout: float

    def children(self):
        psutil = pytest.importorskip("psutil")
        return psutil.Process(self.process.pid).children(recursive=True)

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.children():
                child.kill()
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def run_unit(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Callable[..., UnitRun]]:
    started: list[UnitRun] = []

    def run(program: str, config_text: str) -> UnitRun:
        unit = read_unit(f"{program}.service")
        service = unit["Service"]
        config = tmp_path / f"{program}.toml"
        config.write_text(config_text)
        argv = shlex.split(one(unit, "Service", "ExecStart"))
        assert argv[0] == f"/usr/bin/{program}"
        argv = [_program(program), *(str(config) if a.startswith("/etc/") else a for a in argv[1:])]
        env = _unit_environment(program, service, tmp_path)
        env["NOTIFY_SOCKET"] = notify_socket.path
        env["WATCHDOG_USEC"] = str(int(seconds(one(unit, "Service", "WatchdogSec")) * 1_000_000))
        log = tmp_path / f"{program}.log"
        with log.open("wb") as out:
            # systemd sets WATCHDOG_PID to the pid it forks, then execs the command.
            process = subprocess.Popen(
                ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv],
                env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append(UnitRun(process, log, seconds(one(unit, "Service", "TimeoutStopSec"))))
        return started[-1]

    try:
        yield run
    finally:
        for unit_run in started:
            unit_run.kill()


def _unit_environment(program: str, service: dict[str, list[str]], tmp: Path) -> dict[str, str]:
    """systemd's clean environment plus the unit's Environment= lines, with the
    state, cache and configuration directories moved into `tmp`."""
    moved = {
        f"/var/lib/{program}": tmp / "state" / program,
        f"/var/cache/{program}": tmp / "cache" / program,
        f"/etc/{program}": tmp / "config" / program,
    }
    for directory in moved.values():
        directory.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    env = {
        "PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "USER": user, "LOGNAME": user,
        "HOME": str(moved[f"/var/lib/{program}"]),
        "STATE_DIRECTORY": str(moved[f"/var/lib/{program}"]),
        "CACHE_DIRECTORY": str(moved[f"/var/cache/{program}"]),
        "CONFIGURATION_DIRECTORY": str(moved[f"/etc/{program}"]),
    }  # fmt: skip
    for line in service.get("Environment", []):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            for old, new in moved.items():
                if value == old or value.startswith(old + "/"):
                    value = str(new) + value[len(old) :]
            env[key] = value
    return env


def _stop_and_check(run: UnitRun, notify_socket: NotifySocket) -> None:
    psutil = pytest.importorskip("psutil")
    children = run.children()
    run.process.send_signal(signal.SIGTERM)
    stopping = notify_socket.wait_for(lambda f: f.get("STOPPING") == "1", 15, "STOPPING=1",
                                      run.process, run.log)  # fmt: skip
    assert stopping.pid == run.process.pid
    try:
        code = run.process.wait(timeout=run.stop_timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {run.stop_timeout}s after SIGTERM "
                             f"(TimeoutStopSec):\n{run.log.read_text()}") from None  # fmt: skip
    assert code == 0, run.log.read_text()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running after exit: {alive}"
    senders = {n.pid for n in notify_socket.received}
    assert senders == {run.process.pid}, "only the main process may notify (NotifyAccess=main)"


def _get(url: str) -> int:
    import httpx

    return httpx.get(url, timeout=10).status_code


# ------------------------------------------------------------------ the daemons


@pytest.fixture(scope="module")
def tiny_model_root(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from neuron.synth import synthesize

    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("helexa-demo-models")) if cache else tmp_path_factory.mktemp("m")
    root = base / "systemd-units"
    synthesize(root, arch="qwen3", size="tiny", name=TINY_MODEL)
    return root


@pytest.mark.slow
@pytest.mark.integration
def test_neuron_under_its_unit_notifies_ready_status_and_stopping(
    run_unit, notify_socket, tiny_model_root
):
    text = (EXAMPLES / "neuron" / "neuron.toml").read_text()
    text = _edit(text, 'host = "0.0.0.0"', 'host = "127.0.0.1"')
    text = _edit(text, "port = 13131", "port = 0")
    text = re.sub(r"(?m)^model_roots = .*$", f"model_roots = [{json.dumps(str(tiny_model_root))}]",
                  text, count=1)  # fmt: skip
    text = _edit(text, 'devices = "auto"', "")
    text += (
        '\n[[devices]]\nid = "cpu:0"\nthreads = 1\nmemory_mb = 2048\n'
        f"\n[[models]]\nid = {json.dumps(TINY_MODEL)}\n"
    )
    run = run_unit("neuron", text)
    wait = notify_socket.wait_for

    ready = wait(lambda f: f.get("READY") == "1", START_TIMEOUT, "READY=1", run.process, run.log)
    assert ready.pid == run.process.pid
    assert "1 default model" in ready.fields["STATUS"], ready.fields
    url = re.search(r"listening on (\S+);", ready.fields["STATUS"]).group(1)
    assert _get(f"{url}/health") == 200
    loaded = wait(lambda f: f.get("STATUS", "").startswith("ready:"), START_TIMEOUT,
                  "STATUS=ready: …", run.process, run.log)  # fmt: skip
    assert loaded.fields["STATUS"] == "ready: 1 model(s) loaded, 0 failed"
    assert any(n.fields.get("STATUS", "").startswith(f"loading {TINY_MODEL}")
               for n in notify_socket.received)  # fmt: skip
    assert any(n.fields.get("WATCHDOG") == "1" for n in notify_socket.received)
    assert run.children(), "the neuron should have started a device worker"
    _stop_and_check(run, notify_socket)


@pytest.mark.slow
@pytest.mark.integration
def test_cortex_under_its_unit_notifies_ready_and_stopping(run_unit, notify_socket):
    text = (EXAMPLES / "cortex" / "cortex.toml").read_text()
    metrics_port = _free_port()
    text = _edit(text, 'listen = "0.0.0.0:31313"', 'listen = "127.0.0.1:0"')
    text = _edit(text, 'metrics_listen = "0.0.0.0:31314"',
                 f'metrics_listen = "127.0.0.1:{metrics_port}"')  # fmt: skip
    text = _edit(text, '[[neurons]]\nname = "node1"\nendpoint = "http://node1.lan:13131"\n', "")
    models = json.dumps(str(EXAMPLES / "cortex" / "models.toml"))
    text = _edit(text, 'models_config = "/etc/cortex/models.toml"', f"models_config = {models}")
    run = run_unit("cortex", text)
    wait = notify_socket.wait_for

    ready = wait(lambda f: f.get("READY") == "1", START_TIMEOUT, "READY=1", run.process, run.log)
    assert ready.pid == run.process.pid
    status = ready.fields["STATUS"]
    url = re.search(r"listening on (\S+);", status).group(1)
    assert f"metrics on http://127.0.0.1:{metrics_port}" in status
    assert _get(f"{url}/health") == 200
    assert _get(f"http://127.0.0.1:{metrics_port}/metrics") == 200
    wait(lambda f: f.get("WATCHDOG") == "1", 10, "WATCHDOG=1", run.process, run.log)
    _stop_and_check(run, notify_socket)


@pytest.mark.slow
def test_systemd_check_script_passes():
    """`.ci/systemd-check`: verify, security thresholds, sysusers and tmpfiles."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (.ci/systemd-check installs it)")
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    out = subprocess.run(["bash", str(ROOT / ".ci" / "systemd-check")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_bench_under_its_unit_notifies_ready_serves_and_stops(run_unit, notify_socket, tmp_path):
    text = (EXAMPLES / "helexa-bench" / "helexa-bench.toml").read_text()
    text = _edit(text, 'listen = "0.0.0.0:13132"', 'listen = "127.0.0.1:0"')
    state = tmp_path / "state" / "helexa-bench"  # the unit's StateDirectory, moved
    text = _edit(text, 'db_path = "/var/lib/helexa-bench/bench.sqlite"',
                 f"db_path = {json.dumps(str(state / 'bench.sqlite'))}")  # fmt: skip
    down = f'endpoint = "http://127.0.0.1:{_free_port()}"'  # nothing listens there
    text = _edit(text, 'endpoint = "http://node1.lan:13131"', down)
    run = run_unit("helexa-bench", text)
    wait = notify_socket.wait_for

    ready = wait(lambda f: f.get("READY") == "1", 60, "READY=1", run.process, run.log)
    assert ready.pid == run.process.pid and ready.fields["STATUS"] == "run: 1 target(s)"
    url = re.search(r"helexa-bench api listening url=(\S+)", run.log.read_text()).group(1)
    import httpx

    health = httpx.get(f"{url}/api/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    _stop_and_check(run, notify_socket)
    assert (state / "bench.sqlite").exists()
