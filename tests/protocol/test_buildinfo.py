"""protocol.buildinfo: versions from metadata, the revision from git or _build.json."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

from protocol import encode_json
from protocol.buildinfo import (
    SOURCE_ROOT,
    build_info,
    git_revision,
    read_build_file,
    write_build_file,
)
from protocol.node import BuildInfo, parse_response

in_checkout = pytest.mark.skipif(
    shutil.which("git") is None or not (SOURCE_ROOT / ".git").exists(),
    reason="not running from a git checkout",
)


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def test_fields_are_present():
    info = build_info()
    assert info.package_version == version("helexa")
    assert info.python_version == platform.python_version()
    assert info.git_sha and (info.git_sha == "unknown" or len(info.git_sha) == 7)
    assert info.rustc_version is None and info.candle_version is None


def test_library_versions_come_from_metadata():
    info = build_info()
    for name, found in (("torch", info.torch_version), ("transformers", info.transformers_version)):
        try:
            expected = version(name)
        except PackageNotFoundError:  # not installed here
            expected = None
        assert found == expected


def test_it_is_cached():
    assert build_info() is build_info()


def test_it_round_trips_as_the_version_body():
    info = build_info()
    assert parse_response(encode_json(info), BuildInfo) == info


@in_checkout
def test_the_sha_is_the_checkouts_head():
    info = build_info()
    head = git("rev-parse", "HEAD")
    assert info.git_sha_long == head
    assert info.git_sha == head[:7]
    assert isinstance(info.git_dirty, bool)


@in_checkout
def test_dirty_means_tracked_files_differ_from_head():
    revision = git_revision(SOURCE_ROOT)
    status = git("status", "--porcelain", "--untracked-files=no")
    assert revision.dirty == bool(status)


def test_not_a_checkout_has_no_revision(tmp_path):
    assert git_revision(tmp_path) is None


def test_build_file_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    written = write_build_file(tmp_path / "_build.json", root=SOURCE_ROOT)
    assert written["build_timestamp"] == "2023-11-14T22:13:20Z"
    revision = read_build_file(tmp_path / "_build.json")
    assert revision.sha == written["git_sha_long"]
    assert revision.build_timestamp == "2023-11-14T22:13:20Z"


def test_build_file_outside_a_checkout_says_unknown(tmp_path):
    written = write_build_file(tmp_path / "_build.json", root=tmp_path)
    assert written["git_sha_long"] == "unknown" and written["git_dirty"] is None


def test_the_build_step_records_a_checkouts_revision_only(tmp_path):
    """`pip install .` from a checkout: protocol/_build.json in the build (wheel tested
    in tests/test_packaging.py); built outside one, the tree's own file is kept."""
    from protocol._build_hook import record_revision

    assert not record_revision(tmp_path / "build", root=tmp_path)
    assert not (tmp_path / "build").exists()
    if git_revision(SOURCE_ROOT) is not None:
        assert record_revision(tmp_path / "build", root=SOURCE_ROOT)
        written = read_build_file(tmp_path / "build" / "protocol" / "_build.json")
        assert written.sha == git_revision(SOURCE_ROOT).sha


@pytest.mark.parametrize("text", ["", "{", "[]", '{"git_dirty": true}'])
def test_a_broken_build_file_is_ignored(tmp_path, text):
    (tmp_path / "_build.json").write_text(text)
    assert read_build_file(tmp_path / "_build.json") is None
    assert read_build_file(tmp_path / "absent.json") is None


def test_torch_is_not_imported():
    code = (
        "import sys; from protocol.buildinfo import build_info; build_info(); "
        "import json; print(json.dumps([m for m in ('torch', 'transformers') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=SOURCE_ROOT)  # fmt: skip
    assert json.loads(done.stdout) == []
