#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the device machine lacks, for the `device` tool's
# `carry: [".whl"]`; bench/device_check.sh installs them there into a temporary target.
#
#   bench/prepare_device_wheels.sh                  the gateway/daemon packages missing on
#                                                   the device image (trio, hypercorn, quart,
#                                                   quart-trio, cattrs and their needs)
#   bench/prepare_device_wheels.sh --transformers   also transformers, tokenizers and
#                                                   huggingface_hub at this project's pins
#                                                   (the image has transformers 5.17)
#
# Versions: the exact pins of pyproject.toml where it pins a package, else the version
# installed in this project's venv (what CI tests). The image (Python 3.12, x86-64) already
# has torch, numpy, safetensors, tokenizers 0.23.2, httpx, attrs, psutil, prometheus-client,
# jinja2, werkzeug, click, h11, anyio, idna, sortedcontainers, typing-extensions, aiofiles
# (the tool's KINDS.md lists them); attrs is carried anyway, at its pin, because cattrs and
# protocol need a recent one. Needs the package index (pip download), not the device.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-.venv/bin/python}
packages=(trio outcome sniffio hypercorn h2 hpack hyperframe priority wsproto quart flask
          blinker itsdangerous quart-trio cattrs attrs)
if [ "${1:-}" = --transformers ]; then
    packages+=(transformers tokenizers huggingface-hub httpx2 httpcore2 truststore)
elif [ $# -gt 0 ]; then
    echo "usage: bench/prepare_device_wheels.sh [--transformers]" >&2
    exit 2
fi

# name==version for each: pyproject's exact pin, else the venv's installed version.
mapfile -t pins < <("$py" - "${packages[@]}" <<'EOF'
import importlib.metadata, re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pinned = {}
for spec in wanted:
    name, _, version = spec.split(";")[0].split("#")[0].strip().partition("==")
    if version:
        pinned[norm(name)] = version.strip()
for name in sys.argv[1:]:
    print(f"{name}=={pinned.get(norm(name)) or importlib.metadata.version(name)}")
EOF
)

rm -rf .whl
mkdir -p .whl
echo "downloading ${#pins[@]} wheels for CPython 3.12 manylinux x86-64: ${pins[*]}"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${pins[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

count=$(ls .whl/*.whl | wc -l)
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$count wheels, $((bytes / 1024)) KiB in .whl/ (the device tool carries at most 64 MiB)"
if [ "$count" -ne "${#pins[@]}" ]; then
    echo "expected ${#pins[@]} wheels" >&2
    exit 1
fi
if [ "$bytes" -gt $((48 * 1024 * 1024)) ]; then
    echo "over 48 MiB: leaves too little of the 64 MiB carry for the working tree" >&2
    exit 1
fi
