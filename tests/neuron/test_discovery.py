"""neuron.discovery against recorded nvidia-smi/nvcc output, and on this CPU-only host."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import pytest
import trio

from neuron.devices import DeviceSpec
from neuron.discovery import (
    CommandResult,
    Gpu,
    GpuProbe,
    HealthSampler,
    HostProbe,
    HostResources,
    build_discovery,
    cpu_model_name,
    detect_host_resources,
    parse_gpu_list,
    probe_cuda_version,
    probe_gpus,
    probe_host,
    run_command,
)
from protocol import encode_json
from protocol.node import DeviceHealth, DeviceInfo, Discovery, parse_response

MIB = 1024 * 1024
GPU_QUERY = (
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,compute_cap,driver_version",
    "--format=csv,noheader,nounits",
)
GPU_QUERY_OLD = (
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,driver_version",
    "--format=csv,noheader,nounits",
)
HEALTH_QUERY = (
    "nvidia-smi",
    "--query-gpu=index,memory.used,memory.free,utilization.gpu,temperature.gpu",
    "--format=csv,noheader,nounits",
)
NVCC = ("nvcc", "--version")

# Recorded outputs (stdout, stderr, exit status as nvidia-smi gives them).
TWO_4090 = CommandResult(
    0,
    "0, NVIDIA GeForce RTX 4090, 24564, 8.9, 550.54.14\n"
    "1, NVIDIA GeForce RTX 4090, 24564, 8.9, 550.54.14\n",
)
MIXED = CommandResult(
    0,
    "0, NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.183.01\n"
    "1, NVIDIA RTX 6000 Ada Generation, 49140, 8.9, 535.183.01\n"
    "2, Tesla K80, 11441, [N/A], 535.183.01\n",
)
MISMATCH = CommandResult(
    18,
    "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.120\n",
)
PROC_DRIVER_VERSION = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.107.02  Wed Jul 24 23:53:00 UTC 2024\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
NO_DRIVER = CommandResult(
    9,
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
    "that the latest NVIDIA driver is installed and running.\n\n",
)
NO_DEVICES = CommandResult(6, "No devices were found\n")
OLD_DRIVER = CommandResult(2, 'Field "compute_cap" is not a valid field to query.\n\n')
OLD_DRIVER_LIST = CommandResult(0, "0, Tesla P100-PCIE-16GB, 16280, 470.223.02\n")
HEALTH = CommandResult(0, "0, 20150, 3940, 97, 71\n1, 812, 23278, 0, [N/A]\n")
NVCC_OUTPUT = CommandResult(
    0,
    "nvcc: NVIDIA (R) Cuda compiler driver\n"
    "Copyright (c) 2005-2025 NVIDIA Corporation\n"
    "Built on Wed_Aug_20_01:58:59_PM_PDT_2025\n"
    "Cuda compilation tools, release 13.0, V13.0.88\n"
    "Build cuda_13.0.r13.0/compiler.36424714_0\n",
)


class FakeRunner:
    """Answers from a table of argv → result (or exception); absent programs raise."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult | BaseException]):
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(tuple(argv))
        await trio.lowlevel.checkpoint()
        answer = self.answers.get(tuple(argv), FileNotFoundError(argv[0]))
        if isinstance(answer, BaseException):
            raise answer
        return answer


def host(gpu: GpuProbe = GpuProbe(), cuda: str | None = None) -> HostProbe:
    return HostProbe(
        "beast", "Linux", "6.8.0-45-generic", "AMD EPYC 7763 64-Core Processor",
        HostResources(cores=16, memory_bytes=64 * 1024 * MIB), gpu, cuda,
    )  # fmt: skip


# ------------------------------------------------------------------ GPUs


async def test_two_gpus_are_listed_with_the_driver_version():
    probe = await probe_gpus(FakeRunner({GPU_QUERY: TWO_4090}))
    assert probe.gpus == (
        Gpu(0, "NVIDIA GeForce RTX 4090", 24564, "8.9"),
        Gpu(1, "NVIDIA GeForce RTX 4090", 24564, "8.9"),
    )
    assert probe.driver_version == "550.54.14"
    assert probe.cuda_unavailable_reason is None and probe.problem is None


def test_names_with_spaces_and_unreadable_fields():
    gpus, driver = parse_gpu_list(MIXED.stdout)
    assert [g.name for g in gpus] == [
        "NVIDIA A100-SXM4-80GB", "NVIDIA RTX 6000 Ada Generation", "Tesla K80",
    ]  # fmt: skip
    assert [g.compute_capability for g in gpus] == ["8.0", "8.9", None]
    assert [g.memory_total_mb for g in gpus] == [81920, 49140, 11441]
    assert driver == "535.183.01"


def test_a_name_with_a_comma_survives():
    gpus, _ = parse_gpu_list("0, Vendor GPU, rev 2, 8192, 7.5, 470.1\n")
    assert gpus == [Gpu(0, "Vendor GPU, rev 2", 8192, "7.5")]


async def test_no_nvidia_smi_means_no_gpus_and_no_error():
    assert await probe_gpus(FakeRunner({})) == GpuProbe()


async def test_driver_library_mismatch_makes_cuda_unavailable(tmp_path):
    proc_version = tmp_path / "version"
    proc_version.write_text(PROC_DRIVER_VERSION)
    probe = await probe_gpus(FakeRunner({GPU_QUERY: MISMATCH}), proc_version)
    assert probe.gpus == ()
    reason = probe.cuda_unavailable_reason
    assert reason.startswith("NVIDIA driver/library version mismatch")
    assert "userspace NVML 550.120" in reason and "kernel module 550.107.02" in reason
    assert "reboot the host" in reason


async def test_mismatch_without_a_readable_kernel_version_still_explains(tmp_path):
    probe = await probe_gpus(FakeRunner({GPU_QUERY: MISMATCH}), tmp_path / "absent")
    assert "kernel module unknown" in probe.cuda_unavailable_reason


async def test_a_driver_that_is_not_running_is_a_problem_not_a_reason():
    probe = await probe_gpus(FakeRunner({GPU_QUERY: NO_DRIVER}))
    assert probe.gpus == () and probe.cuda_unavailable_reason is None
    assert probe.problem.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")


async def test_no_devices_found_is_quietly_empty():
    assert await probe_gpus(FakeRunner({GPU_QUERY: NO_DEVICES})) == GpuProbe()


async def test_old_drivers_are_asked_again_without_compute_cap():
    runner = FakeRunner({GPU_QUERY: OLD_DRIVER, GPU_QUERY_OLD: OLD_DRIVER_LIST})
    probe = await probe_gpus(runner)
    assert probe.gpus == (Gpu(0, "Tesla P100-PCIE-16GB", 16280, None),)
    assert probe.driver_version == "470.223.02"
    assert runner.calls == [GPU_QUERY, GPU_QUERY_OLD]


async def test_a_hung_nvidia_smi_is_a_problem():
    probe = await probe_gpus(FakeRunner({GPU_QUERY: trio.TooSlowError()}))
    assert probe.gpus == () and "did not answer" in probe.problem


async def test_cuda_version_from_nvcc():
    assert await probe_cuda_version(FakeRunner({NVCC: NVCC_OUTPUT})) == "13.0"
    assert await probe_cuda_version(FakeRunner({})) is None


# ------------------------------------------------------------------ /discovery


def test_a_cpu_only_host_reports_its_cpu_devices():
    specs = [DeviceSpec("cpu:0", 8, 16 * 1024 * MIB), DeviceSpec("cpu:1", 8, 16 * 1024 * MIB)]
    discovery = build_discovery(host(), specs, max_prompt_tokens=16384)
    assert (discovery.hostname, discovery.os, discovery.kernel) == (
        "beast", "Linux", "6.8.0-45-generic",
    )  # fmt: skip
    assert discovery.devices == (
        DeviceInfo(0, "AMD EPYC 7763 64-Core Processor (8 threads)", 16384, None,
                   id="cpu:0", kind="cpu", memory_budget_mb=16384),
        DeviceInfo(1, "AMD EPYC 7763 64-Core Processor (8 threads)", 16384, None,
                   id="cpu:1", kind="cpu", memory_budget_mb=16384),
    )  # fmt: skip
    assert discovery.cuda_version is None and discovery.driver_version is None
    assert discovery.cuda_unavailable_reason is None
    assert discovery.max_prompt_tokens == 16384
    assert discovery.harnesses == ("transformers",)


def test_gpu_devices_keep_their_ordinal_and_report_the_card():
    gpu = GpuProbe((Gpu(0, "NVIDIA GeForce RTX 4090", 24564, "8.9"),
                    Gpu(1, "NVIDIA GeForce RTX 4090", 24564, "8.9")), "550.54.14")  # fmt: skip
    specs = [DeviceSpec("cuda:0"), DeviceSpec("cuda:1", memory_budget_bytes=20000 * MIB)]
    discovery = build_discovery(host(gpu, "12.4"), specs, max_prompt_tokens=8192)
    first, second = discovery.devices
    assert (first.index, first.id, first.kind, first.name) == (
        0, "cuda:0", "cuda", "NVIDIA GeForce RTX 4090",
    )  # fmt: skip
    assert (first.vram_total_mb, first.compute_capability, first.memory_budget_mb) == (
        24564, "8.9", None,
    )  # fmt: skip
    assert (second.vram_total_mb, second.memory_budget_mb) == (20000, 20000)
    assert (discovery.cuda_version, discovery.driver_version) == ("12.4", "550.54.14")


def test_the_mismatch_reaches_discovery():
    gpu = GpuProbe(cuda_unavailable_reason="NVIDIA driver/library version mismatch: …")
    discovery = build_discovery(host(gpu), [DeviceSpec("cpu:0")], max_prompt_tokens=1)
    assert discovery.cuda_unavailable_reason.startswith("NVIDIA driver/library")


def test_discovery_round_trips_through_the_wire():
    specs = [DeviceSpec("cpu:0", 2, 1024 * MIB)]
    discovery = build_discovery(host(), specs, max_prompt_tokens=16384)
    assert parse_response(encode_json(discovery), Discovery) == discovery


def test_cpu_model_name():
    assert cpu_model_name("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n") == (
        "Intel(R) Xeon(R) CPU @ 2.20GHz"
    )
    assert cpu_model_name("")  # falls back to something


# ------------------------------------------------------------------ this host


async def test_probing_this_host_does_not_fail():
    probe = await probe_host()
    assert probe.hostname and probe.os and probe.kernel
    assert probe.resources.cores >= 1 and probe.resources.memory_bytes > 0
    if not any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep)):  # fmt: skip
        assert probe.gpu.gpus == () and probe.gpu.cuda_unavailable_reason is None


async def test_run_command_runs_and_reports_absent_programs():
    result = await run_command([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"])
    assert (result.returncode, result.stdout) == (3, "hi\n")
    with pytest.raises(FileNotFoundError):
        await run_command(["/nonexistent/nvidia-smi"])


def test_cgroup_limits_bound_the_host_resources(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(f"{512 * MIB}\n")
    limited = detect_host_resources(tmp_path)
    assert limited.cores == min(2, len(os.sched_getaffinity(0)))
    assert limited.memory_bytes == 512 * MIB
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    unlimited = detect_host_resources(tmp_path)
    assert unlimited.cores == len(os.sched_getaffinity(0))
    assert unlimited.memory_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ------------------------------------------------------------------ /health


async def test_gpu_health_from_nvidia_smi():
    specs = [DeviceSpec("cuda:0"), DeviceSpec("cuda:1"), DeviceSpec("cuda:2")]
    sampler = HealthSampler(specs, runner=FakeRunner({HEALTH_QUERY: HEALTH}))
    assert await sampler.sample({}) == (
        DeviceHealth(0, 20150, 3940, 97, 71, id="cuda:0"),
        DeviceHealth(1, 812, 23278, 0, None, id="cuda:1"),
        DeviceHealth(2, id="cuda:2"),  # not in the output: nothing known, nothing guessed
    )


async def test_gpu_health_when_nvidia_smi_fails():
    sampler = HealthSampler([DeviceSpec("cuda:0")], runner=FakeRunner({HEALTH_QUERY: MISMATCH}))
    assert await sampler.sample({}) == (DeviceHealth(0, id="cuda:0"),)


async def test_cpu_health_reads_the_worker_process():
    runner = FakeRunner({})
    spec = DeviceSpec("cpu:0", threads=1, memory_budget_bytes=1 << 40)
    sampler = HealthSampler([spec], runner=runner)
    (first,) = await sampler.sample({"cpu:0": os.getpid()})  # this process stands in
    assert first.id == "cpu:0" and first.index == 0
    assert first.vram_used_mb > 0 and first.vram_free_mb > 0
    assert first.utilization_pct is None  # no interval yet
    sum(range(200_000))  # some CPU time to see
    (second,) = await sampler.sample({"cpu:0": os.getpid()})
    assert 0 <= second.utilization_pct <= 100
    assert runner.calls == []  # no GPU → nvidia-smi is not asked


async def test_cpu_health_without_a_worker():
    psutil = pytest.importorskip("psutil")
    spec = DeviceSpec("cpu:0", memory_budget_bytes=2048 * MIB)
    (health,) = await HealthSampler([spec]).sample({"cpu:0": None})
    assert (health.vram_used_mb, health.utilization_pct) == (None, None)
    assert health.vram_free_mb <= 2048  # the budget, capped by what the host has free
    assert health.vram_free_mb <= psutil.virtual_memory().available // MIB + 1


async def test_cpu_health_of_a_worker_that_is_gone():
    done = await trio.run_process(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True
    )
    sampler = HealthSampler([DeviceSpec("cpu:0")])
    (health,) = await sampler.sample({"cpu:0": int(done.stdout)})
    assert (health.vram_used_mb, health.utilization_pct) == (None, None)
