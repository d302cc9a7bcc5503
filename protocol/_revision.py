"""The git revision of a source tree, and the `_build.json` file that carries it into
an installed copy.

Standard library only, on purpose: besides `protocol.buildinfo` (run time), the
build step `protocol._build_hook` loads this file by its path while setuptools
builds the package, in pip's isolated build environment, where neither the
project's dependencies nor the `protocol` package itself can be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GIT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Revision:
    sha: str
    dirty: bool | None = None
    build_timestamp: str | None = None


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


def write_build_file(path: Path, root: Path) -> dict[str, Any]:
    """Record `root`'s revision ("unknown" outside a checkout) and the build time
    (`SOURCE_DATE_EPOCH` if set, for reproducible builds) in `path`."""
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
