"""Packaging: the gateway installs without torch, the CLIs answer --version, a wheel builds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

# `cortex serve`, then `helexa-bench`
GATEWAY_SIDE = ["protocol", "actors", "cortex", "cortex.gateway", "cortex.http",
                "cortex.benchd.__main__", "cortex.benchd.sweep", "cortex.benchd.api"]  # fmt: skip


@pytest.mark.parametrize("package", [*GATEWAY_SIDE, "neuron"])
def test_imports_without_torch(package):
    code = (
        f"import sys, {package}; "
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {package} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("program", ["cortex", "neuron"])
def test_version_flag(program):
    out = subprocess.run(
        [sys.executable, "-m", program, "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(f"{program} 0.")


def test_a_gateway_install_s_neuron_names_the_extra_it_needs():
    """`pip install .` brings the `neuron` script but not the node's packages."""
    code = (
        "import sys; sys.modules['tokenizers'] = sys.modules['torch'] = None; "  # not installed
        "from neuron.__main__ import main; sys.argv = ['neuron', 'serve']; main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr == (
        "neuron: the node daemon needs the neuron extra (missing: torch, tokenizers): "
        "pip install 'helexa[neuron]'\n"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_every_declared_make_target_runs_something():
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert phony and "bench" in phony.group(1).split()
    for target in phony.group(1).split():
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        assert dry.returncode == 0 and dry.stdout.strip(), (target, dry.stderr)
    bench = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert "bench/engine.py --size tiny" in bench.stdout  # bench/README.md's short runs
    assert "bench/gateway.py" in bench.stdout


# ------------------------------------------------------------------ the distribution

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "cortex", "neuron", "protocol")
NODE_ONLY = {"torch", "transformers", "tokenizers", "safetensors", "huggingface-hub"}


def _name(requirement: str) -> str:
    """`"huggingface_hub==2.4.0; extra == 'x'"` → `"huggingface-hub"`."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_gateway_install_brings_no_torch():
    """`pip install .` (a gateway host) installs the base dependencies only."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert not base & NODE_ONLY, f"the gateway would install {sorted(base & NODE_ONLY)}"
    node = {_name(r) for r in project["optional-dependencies"]["neuron"]}
    assert {"torch", "transformers"} <= node  # `pip install '.[neuron]'` brings the node


def _checkout(src: Path) -> str:
    """`src` as a git checkout of one commit; its sha."""
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return head.stdout.strip()


@pytest.mark.slow
def test_wheel_built_from_a_checkout_reports_its_revision_when_installed(tmp_path):
    """What `pip install .` in a clone does: the build records the clone's HEAD."""
    src = tmp_path / "src"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "_build.json"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    written = {"git_sha_long": _checkout(src)}
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(tmp_path)]
    if int(version("setuptools").split(".")[0]) >= 77:  # what [build-system] requires
        command.append("--no-build-isolation")  # offline: build with the installed setuptools
    subprocess.run(command, check=True, capture_output=True, timeout=600)

    (wheel,) = tmp_path.glob("helexa-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
        archive.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names if "/" in n} >= set(PACKAGES)
    assert not [n for n in names if n.startswith("tests/")]
    assert "protocol/_build.json" in names
    assert {f"cortex/ui/static/{n}" for n in ("index.html", "app.js", "app.css")} <= set(names)
    requires = [line.split(":", 1)[1] for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
    base = {_name(r) for r in requires if "extra ==" not in r}
    assert base and not base & NODE_ONLY
    assert "cortex = cortex.__main__:main" in entry_points
    assert "neuron = neuron.__main__:main" in entry_points

    # The unpacked wheel (no checkout around it) reports the revision it was built from.
    code = "from protocol import buildinfo as b; print(b.SOURCE_ROOT, b.build_info().git_sha_long)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)  # fmt: skip
    assert out.stdout.split() == [str(tmp_path / "site"), written["git_sha_long"]]
