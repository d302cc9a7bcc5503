"""What this host has: identity, GPUs, CUDA, CPU and memory — and how busy it is.

At start-up the daemon calls `probe_host()` once (a few short subprocesses —
`nvidia-smi`, `nvcc` — run through trio with a timeout, so the event loop
never waits on them), turns the configured devices into `DeviceSpec`s, and
builds the `/discovery` body with `build_discovery()`. A missing
`nvidia-smi` means "no GPUs", not an error; a driver/library version mismatch
sets `cuda_unavailable_reason`, which is logged as an error and reported on
`/discovery` (the GPUs are not listed, so `devices = "auto"` falls back to
CPU devices; configured `cuda:N` workers fail to start and are restarted
with backoff) until the host is rebooted. `HealthSampler` produces the per-device part of
`/health`: `nvidia-smi` readings for GPUs, and for CPU devices the resident
memory and CPU use of that device's worker process.

Subprocesses go through an injectable `CommandRunner`, so tests feed recorded
`nvidia-smi` output. Not for: choosing devices (`neuron.config`), starting
workers (`neuron.devices`) or polling on a schedule (the daemon owns the loop).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from neuron.devices import DeviceSpec
from protocol.node import DeviceHealth, DeviceInfo, Discovery

log = logging.getLogger(__name__)

MIB = 1024 * 1024
COMMAND_TIMEOUT = 10.0  # a wedged driver can make nvidia-smi hang for minutes
GPU_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version")
GPU_HEALTH_FIELDS = ("index", "memory.used", "memory.free", "utilization.gpu", "temperature.gpu")
_MISMATCH = "Driver/library version mismatch"


# ------------------------------------------------------------------ commands


@attrs.frozen
class CommandResult:
    returncode: int
    stdout: str
    stderr: str = ""

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}".strip()


# Runs argv and returns its result; raises OSError (e.g. FileNotFoundError) when
# the program cannot be started and trio.TooSlowError when it does not finish.
CommandRunner = Callable[[Sequence[str]], Awaitable[CommandResult]]


async def run_command(argv: Sequence[str]) -> CommandResult:
    """Run a short command without blocking the loop; past COMMAND_TIMEOUT it is
    killed and reaped, and trio.TooSlowError raised."""
    with trio.fail_after(COMMAND_TIMEOUT):
        done = await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )
    return CommandResult(
        done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


async def _try_run(runner: CommandRunner, argv: Sequence[str]) -> CommandResult | str | None:
    """The result; `None` if the program is not installed; a message if it failed."""
    try:
        return await runner(argv)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{argv[0]} could not be started: {exc}"
    except trio.TooSlowError:
        return f"{argv[0]} did not answer within {COMMAND_TIMEOUT:g} s"


# ------------------------------------------------------------------ host resources


@attrs.frozen
class HostResources:
    """What CPU devices may share: usable cores and memory (cgroup limits applied)."""

    cores: int
    memory_bytes: int


def detect_host_resources(cgroup: Path = Path("/sys/fs/cgroup")) -> HostResources:
    return HostResources(_usable_cores(cgroup), _usable_memory(cgroup))


def _usable_cores(cgroup: Path) -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset / systemd CPUAffinity
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup)
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_cpu_quota(cgroup: Path) -> int | None:
    """`cpu.max` of cgroup v2 ("200000 100000" → 2 cores); `None` when unlimited."""
    text = _read(cgroup / "cpu.max")
    parts = text.split() if text else []
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(parts[0]) / int(parts[1])))
    except (ValueError, ZeroDivisionError):
        return None


def _usable_memory(cgroup: Path) -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = (_read(cgroup / "memory.max") or "max").strip()
    return min(physical, int(limit)) if limit.isdecimal() else physical


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what platform knows."""
    text = _read(Path("/proc/cpuinfo")) if cpuinfo is None else cpuinfo
    match = re.search(r"^model name\s*:\s*(.+)$", text or "", re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "cpu")


# ------------------------------------------------------------------ GPUs


@attrs.frozen
class Gpu:
    index: int  # the CUDA ordinal
    name: str
    memory_total_mb: int
    compute_capability: str | None = None


@attrs.frozen
class GpuProbe:
    """What `nvidia-smi` said. `problem` is worth a warning but is not fatal."""

    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    cuda_unavailable_reason: str | None = None
    problem: str | None = None


def _query(fields: Sequence[str], flag: str = "--query-gpu") -> list[str]:
    return ["nvidia-smi", f"{flag}={','.join(fields)}", "--format=csv,noheader,nounits"]


def _value(text: str) -> str | None:
    """nvidia-smi writes "[N/A]" or "[Not Supported]" for what it cannot read."""
    text = text.strip()
    return None if not text or text.startswith("[") else text


def _int(text: str) -> int | None:
    value = _value(text)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def parse_gpu_list(stdout: str, fields: Sequence[str] = GPU_FIELDS) -> tuple[list[Gpu], str | None]:
    """Rows of `--query-gpu=<fields>` → GPUs and the driver version.

    The name is the only field that may contain a comma, so it is whatever
    lies between the index and the fields after it.
    """
    gpus, driver, tail = [], None, len(fields) - 2
    for line in filter(None, (raw.strip() for raw in stdout.splitlines())):
        cells = line.split(",")
        index = _int(cells[0])
        if index is None or len(cells) < len(fields):
            continue
        name = ",".join(cells[1 : len(cells) - tail]).strip()
        rest = dict(zip(fields[2:], cells[len(cells) - tail :], strict=True))
        gpus.append(Gpu(index, name, _int(rest["memory.total"]) or 0,
                        _value(rest.get("compute_cap", ""))))  # fmt: skip
        driver = driver or _value(rest["driver_version"])
    return gpus, driver


def mismatch_reason(output: str, kernel_version_file: str | None) -> str:
    """An operator's explanation of "Driver/library version mismatch"."""
    nvml = re.search(r"NVML library version:\s*(\S+)", output)
    module = re.search(r"Kernel Module(?: for \S+)?\s+([0-9][0-9.]*)", kernel_version_file or "")
    return (
        "NVIDIA driver/library version mismatch: userspace NVML "
        f"{nvml.group(1) if nvml else 'unknown'}, loaded kernel module "
        f"{module.group(1) if module else 'unknown'}. The driver was upgraded but the old "
        "kernel module is still loaded; reboot the host (or unload and reload the nvidia "
        "kernel modules) and restart neuron. Model loads are refused until then."
    )


async def probe_gpus(
    runner: CommandRunner = run_command, proc_version: Path = Path("/proc/driver/nvidia/version")
) -> GpuProbe:
    """The host's NVIDIA GPUs, or why they cannot be used."""
    fields = GPU_FIELDS
    result = await _try_run(runner, _query(fields))
    if isinstance(result, CommandResult) and "not a valid field" in result.output:
        fields = tuple(f for f in GPU_FIELDS if f != "compute_cap")  # drivers before 510
        result = await _try_run(runner, _query(fields))
    if result is None:
        return GpuProbe()
    if isinstance(result, str):
        return GpuProbe(problem=result)
    return _gpu_probe(result, fields, proc_version)


def _gpu_probe(result: CommandResult, fields: Sequence[str], proc_version: Path) -> GpuProbe:
    if _MISMATCH in result.output:
        return GpuProbe(cuda_unavailable_reason=mismatch_reason(result.output, _read(proc_version)))
    if result.returncode != 0:
        if "No devices were found" in result.output:
            return GpuProbe()
        first = result.output.splitlines()[0] if result.output else ""
        return GpuProbe(problem=f"nvidia-smi failed (exit {result.returncode}): {first}")
    gpus, driver = parse_gpu_list(result.stdout, fields)
    return GpuProbe(tuple(gpus), driver)


async def probe_cuda_version(runner: CommandRunner = run_command) -> str | None:
    """The CUDA toolkit release `nvcc --version` reports ("12.4"), if installed."""
    result = await _try_run(runner, ["nvcc", "--version"])
    if not isinstance(result, CommandResult) or result.returncode != 0:
        return None
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else None


# ------------------------------------------------------------------ discovery


@attrs.frozen
class HostProbe:
    """Everything discovery learns about the host, before devices are chosen."""

    hostname: str
    os: str
    kernel: str
    cpu_name: str
    resources: HostResources
    gpu: GpuProbe = GpuProbe()
    cuda_version: str | None = None


async def probe_host(runner: CommandRunner = run_command) -> HostProbe:
    """Probe once at start-up; the subprocesses run concurrently."""
    found: dict[str, object] = {}

    async def gpus() -> None:
        found["gpu"] = await probe_gpus(runner)

    async def cuda() -> None:
        found["cuda"] = await probe_cuda_version(runner)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gpus)
        nursery.start_soon(cuda)
    uname = platform.uname()
    probe = HostProbe(
        hostname=uname.node, os=uname.system, kernel=uname.release, cpu_name=cpu_model_name(),
        resources=detect_host_resources(), gpu=found["gpu"], cuda_version=found["cuda"],
    )  # fmt: skip
    _log_probe(probe)
    return probe


def _log_probe(probe: HostProbe) -> None:
    if probe.gpu.cuda_unavailable_reason:
        log.error("cuda unavailable reason=%r", probe.gpu.cuda_unavailable_reason)
    if probe.gpu.problem:
        log.warning("gpu probe failed problem=%r", probe.gpu.problem)
    log.info(
        "host discovered hostname=%s gpus=%d cores=%d memory_mb=%d cuda=%s",
        probe.hostname, len(probe.gpu.gpus), probe.resources.cores,
        probe.resources.memory_bytes // MIB, probe.cuda_version,
    )  # fmt: skip


def device_kind(device_id: str) -> str:
    return device_id.partition(":")[0]


def device_ordinal(device_id: str) -> int:
    return int(device_id.partition(":")[2])


def device_info(index: int, spec: DeviceSpec, probe: HostProbe) -> DeviceInfo:
    """`/discovery`'s view of one configured device; `index` is its position."""
    budget_mb = spec.memory_budget_bytes // MIB if spec.memory_budget_bytes else None
    if device_kind(spec.id) == "cuda":
        gpu = next((g for g in probe.gpu.gpus if g.index == device_ordinal(spec.id)), None)
        total = gpu.memory_total_mb if gpu else 0
        return DeviceInfo(
            index, gpu.name if gpu else "unknown GPU", min(total, budget_mb or total),
            gpu.compute_capability if gpu else None, id=spec.id, kind="cuda",
            memory_budget_mb=budget_mb,
        )  # fmt: skip
    # DeviceInfo has no threads field: the name carries them for operators.
    name = f"{probe.cpu_name} ({spec.threads} threads)"
    total = budget_mb or probe.resources.memory_bytes // MIB
    return DeviceInfo(index, name, total, None, id=spec.id, kind="cpu", memory_budget_mb=total)


def build_discovery(
    probe: HostProbe,
    specs: Sequence[DeviceSpec],
    *,
    max_prompt_tokens: int,
    harnesses: tuple[str, ...] = ("transformers",),
) -> Discovery:
    """The `/discovery` body: the host plus the devices this node will serve on."""
    return Discovery(
        hostname=probe.hostname, os=probe.os, kernel=probe.kernel,
        cuda_version=probe.cuda_version, driver_version=probe.gpu.driver_version,
        devices=tuple(device_info(i, spec, probe) for i, spec in enumerate(specs)),
        harnesses=harnesses, cuda_unavailable_reason=probe.gpu.cuda_unavailable_reason,
        max_prompt_tokens=max_prompt_tokens,
    )  # fmt: skip


# ------------------------------------------------------------------ health


@attrs.frozen
class GpuReading:
    index: int
    used_mb: int | None
    free_mb: int | None
    utilization_pct: int | None
    temp_c: int | None


def parse_gpu_health(stdout: str) -> dict[int, GpuReading]:
    """Rows of `--query-gpu=index,memory.used,memory.free,utilization.gpu,temperature.gpu`."""
    readings = {}
    for line in filter(None, (raw.strip() for raw in stdout.splitlines())):
        cells = [_int(cell) for cell in line.split(",")]
        if len(cells) == len(GPU_HEALTH_FIELDS) and cells[0] is not None:
            readings[cells[0]] = GpuReading(*cells)
    return readings


class HealthSampler:
    """Per-device readings for `/health`; call `sample()` from one task at a time.

    For a CPU device the budget is what its *models* may use (the worker's
    own interpreter and torch are a fixed cost outside it): "used" is the
    measured bytes of the models resident on it, as `sample` is told them
    (else the worker's resident memory), "free" what is left of the budget
    (capped by the host's available memory), utilisation
    the worker's CPU time over the last interval divided by its threads, and
    the temperature the hottest CPU sensor, where the platform reports one.
    Anything the platform does not report is `None`, never a guess.
    """

    def __init__(self, specs: Sequence[DeviceSpec], *, runner: CommandRunner = run_command):
        self.specs = tuple(specs)
        self._runner = runner
        self._processes: dict[int, Any] = {}  # pid → psutil.Process, for CPU deltas

    async def sample(
        self, worker_pids: Mapping[str, int | None], model_bytes: Mapping[str, int] | None = None
    ) -> tuple[DeviceHealth, ...]:
        """One reading per spec, in spec order; `worker_pids` maps device id → pid,
        `model_bytes` device id → bytes of the models resident there."""
        gpu = await self._gpu_readings() if self._has_gpus() else {}
        cpu = await trio.to_thread.run_sync(
            self._cpu_readings, dict(worker_pids), dict(model_bytes or {})
        )
        return tuple(
            cpu[spec.id] if device_kind(spec.id) == "cpu" else self._gpu_health(i, spec, gpu)
            for i, spec in enumerate(self.specs)
        )

    def _has_gpus(self) -> bool:
        return any(device_kind(spec.id) == "cuda" for spec in self.specs)

    async def _gpu_readings(self) -> dict[int, GpuReading]:
        result = await _try_run(self._runner, _query(GPU_HEALTH_FIELDS))
        if not isinstance(result, CommandResult) or result.returncode != 0:
            log.debug("gpu health unavailable result=%r", result)
            return {}
        return parse_gpu_health(result.stdout)

    @staticmethod
    def _gpu_health(index: int, spec: DeviceSpec, readings: Mapping[int, GpuReading]):
        reading = readings.get(device_ordinal(spec.id))
        if reading is None:
            return DeviceHealth(index, id=spec.id)
        return DeviceHealth(
            index, reading.used_mb, reading.free_mb, reading.utilization_pct, reading.temp_c,
            id=spec.id,
        )  # fmt: skip

    def _cpu_readings(
        self, pids: dict[str, int | None], model_bytes: dict[str, int]
    ) -> dict[str, DeviceHealth]:
        import psutil  # the neuron extra; imported here so discovery imports without it

        host = _HostNow(psutil.virtual_memory().available, _cpu_temperature(psutil))
        readings = {
            spec.id: self._cpu_health(
                index, spec, pids.get(spec.id), host, model_bytes.get(spec.id)
            )
            for index, spec in enumerate(self.specs)
            if device_kind(spec.id) == "cpu"
        }
        live = {pid for pid in pids.values() if pid is not None}
        self._processes = {pid: p for pid, p in self._processes.items() if pid in live}
        return readings

    def _cpu_health(
        self, index: int, spec: DeviceSpec, pid: int | None, host: _HostNow,
        model_bytes: int | None = None,
    ) -> DeviceHealth:  # fmt: skip
        rss, busy = self._process_reading(pid)
        used = model_bytes if model_bytes is not None else rss
        budget = spec.memory_budget_bytes
        free = host.available if budget is None else max(0, budget - (used or 0))
        utilization = round(min(100.0, busy / max(1, spec.threads))) if busy is not None else None
        return DeviceHealth(
            index, used // MIB if used is not None else None, min(free, host.available) // MIB,
            utilization, host.temp_c, id=spec.id,
        )  # fmt: skip

    def _process_reading(self, pid: int | None) -> tuple[int | None, float | None]:
        """(RSS bytes, CPU % since the last sample); CPU % is None on a first sight."""
        import psutil

        if pid is None:
            return None, None
        try:
            process = self._processes.get(pid)
            first = process is None
            if first:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                rss, busy = process.memory_info().rss, process.cpu_percent(interval=None)
        except psutil.Error:  # gone or not ours: a restart is under way
            self._processes.pop(pid, None)
            return None, None
        return rss, None if first else busy


@attrs.frozen
class _HostNow:
    available: int  # bytes of host memory available now
    temp_c: int | None


def _cpu_temperature(psutil: Any) -> int | None:
    """The hottest CPU package/core sensor; `None` where there are none (VMs)."""
    read = getattr(psutil, "sensors_temperatures", None)
    try:
        sensors = read() if read else {}
    except OSError:
        return None
    temps = [
        t.current
        for name in ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal")
        for t in sensors.get(name, ())
    ]
    return round(max(temps)) if temps else None
