"""What build of the neuron is running: the `/version` body (`BuildInfo`).

The package version comes from the installed distribution's metadata. The
git revision comes from the source checkout when the code runs from one
(`git rev-parse`, with a short timeout), else from `protocol/_build.json`,
which the build writes into the package when it builds from a checkout
(`pip install .`, `pip wheel .`, `python -m build`: `protocol._build_hook`),
or which a packaging step writes into a tree that is not a checkout:

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
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs

from protocol import _revision
from protocol._revision import git_revision, read_build_file
from protocol.node import BuildInfo

__all__ = ["BUILD_FILE", "build_info", "git_revision", "read_build_file", "write_build_file"]

DISTRIBUTION = "helexa"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
BUILD_FILE = Path(__file__).resolve().parent / "_build.json"
SHORT_SHA = 7  # git's and GitHub's default abbreviation


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


def write_build_file(path: Path = BUILD_FILE, root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """Record the checkout's revision and the build time for an installed copy."""
    return _revision.write_build_file(path, root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m protocol.buildinfo", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {BUILD_FILE.name}")
    args = parser.parse_args(argv)
    if args.write:
        write_build_file()
    print(json.dumps(attrs.asdict(build_info()), indent=2))


if __name__ == "__main__":
    main()
