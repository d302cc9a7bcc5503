"""What build of the neuron is running: the `/version` body (`BuildInfo`).

The package version comes from the installed distribution's metadata. The
git revision comes from the source checkout when the code runs from one
(`git rev-parse`, with a short timeout), else from `protocol/_build.json`,
which a packaging step writes into the tree before building a wheel:

    python -m protocol.buildinfo --write    # → protocol/_build.json

(the build timestamp honours `SOURCE_DATE_EPOCH` for reproducible builds),
else "unknown". torch and transformers versions are read from package
metadata: this module never imports them. `build_info()` is cached; its first
call may run git for up to two seconds, so make it at start-up, before the
event loop, or in a thread. Not for: the HTTP route or the metric that
carries the same facts (`NeuronMetrics.set_build_info`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs

from protocol.node import BuildInfo

__all__ = ["BUILD_FILE", "build_info", "write_build_file"]

DISTRIBUTION = "helexa"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
BUILD_FILE = Path(__file__).resolve().parent / "_build.json"
GIT_TIMEOUT = 2.0
SHORT_SHA = 7  # git's and GitHub's default abbreviation


@attrs.frozen
class Revision:
    sha: str
    dirty: bool | None = None
    build_timestamp: str | None = None


@functools.cache
def build_info() -> BuildInfo:
    revision = git_revision(SOURCE_ROOT) or read_build_file(BUILD_FILE)
    return BuildInfo(
        package_version=_version(DISTRIBUTION) or "0+unknown",
        git_sha=revision.sha[:SHORT_SHA] if revision else "unknown",
        git_sha_long=revision.sha if revision else None,
        git_dirty=revision.dirty if revision else None,
        build_timestamp=revision.build_timestamp if revision else None,
        python_version=platform.python_version(),
        torch_version=_version("torch"),
        transformers_version=_version("transformers"),
    )


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    """Output of a git command in `root`, or None if git is absent, slow or fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True,
            timeout=GIT_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # never take the index lock
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_revision(root: Path) -> Revision | None:
    """HEAD and whether tracked files differ from it, if `root` is a checkout."""
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        return None
    sha = _git(root, "rev-parse", "HEAD")
    if not sha:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return Revision(sha, None if status is None else bool(status))


def read_build_file(path: Path) -> Revision | None:
    try:
        data: Any = json.loads(path.read_text())
        return Revision(str(data["git_sha_long"]), data.get("git_dirty"),
                        data.get("build_timestamp"))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_build_file(path: Path = BUILD_FILE, root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """Record the checkout's revision and the build time for an installed copy."""
    revision = git_revision(root)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    data = {
        "git_sha_long": revision.sha if revision else "unknown",
        "git_dirty": revision.dirty if revision else None,
        "build_timestamp": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m protocol.buildinfo", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {BUILD_FILE.name}")
    args = parser.parse_args(argv)
    if args.write:
        write_build_file()
    print(json.dumps(attrs.asdict(build_info()), indent=2))


if __name__ == "__main__":
    main()
