"""Build step: the checkout's git revision goes into the built package.

setuptools runs `BuildPy` (named in pyproject.toml's `[tool.setuptools.cmdclass]`)
whenever it builds the package from a source tree — `pip install .`, `pip wheel .`,
`python -m build` — and it writes `protocol/_build.json` into the build, so that an
installed copy reports the revision it was built from (`--version`, `/version`)
instead of "unknown". Outside a checkout (building from an sdist) it leaves alone
the `_build.json` the tree carries, if any (`python -m protocol.buildinfo --write`).
An editable install needs none: it runs from the checkout and reads git there.

Only the standard library and setuptools: this runs in pip's isolated build
environment, where the project's dependencies, and the `protocol` package itself,
cannot be imported; `_revision.py` is loaded by its path. Never imported at run time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools.command.build_py import build_py

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _revision_module():
    spec = importlib.util.spec_from_file_location(
        "_helexa_revision", Path(__file__).with_name("_revision.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def record_revision(build_lib: Path, root: Path = SOURCE_ROOT) -> bool:
    """Write `build_lib/protocol/_build.json` if `root` is a git checkout."""
    revision = _revision_module()
    if revision.git_revision(root) is None:
        return False
    target = build_lib / "protocol" / "_build.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    revision.write_build_file(target, root)
    return True


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if not self.dry_run and not getattr(self, "editable_mode", False):
            record_revision(Path(self.build_lib))
