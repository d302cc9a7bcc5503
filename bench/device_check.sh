#!/usr/bin/env bash
# GPU readiness check in one command (bench/README.md, "device_check.sh").
#
#   bench/device_check.sh              on a CUDA machine: cuda:0, the 0.5b model, 1/4/16/64
#                                      streams; report in $OUT/device-check.txt
#   bench/device_check.sh --dry-run    the same steps on cpu:0 with the tiny model and
#                                      1/4 streams, so CI can check the script
#
# Steps: (a) install the carried wheels (.whl/, see bench/prepare_device_wheels.sh) into a
# temporary target and put it on PYTHONPATH; print versions, fail fast if the worker cannot
# import; (b)-(d) bench/device_check.py: build the synthetic model (neuron.synth) and an
# fp32 twin (hardlinks), a real neuron on the device, greedy identity against
# transformers' generate, SIGKILL of the worker mid-stream, tok/s against padded generate;
# (e) on a GPU only, bench/engine.py --device for the worker/engine/generate split, and (f)
# the same for a hybrid family (DEVICE_CHECK_ARCHS), while the time budget allows.
# Bounded: DEVICE_CHECK_BUDGET seconds in all (default 360).
# DEVICE_CHECK_WHEELS: the wheel folder (default .whl); DEVICE_CHECK_SIZE: the neuron.synth
# size of a GPU run (default 0.5b); PYTHON: the interpreter.
# Exit status: 0 all checks passed, 1 a check failed, 2 set-up failed, 124 out of time.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry=0
device=cuda:0
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1; device=cpu:0 ;;
        --device) device=$2; shift ;;
        *) echo "usage: bench/device_check.sh [--dry-run] [--device cuda:N|cpu:N]" >&2; exit 2 ;;
    esac
    shift
done

out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/device-check-out.XXXXXX")}
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
report=$out/device-check.txt
deadline=$((SECONDS + ${DEVICE_CHECK_BUDGET:-360}))
py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
say() { echo "[device_check +${SECONDS}s] $*"; }
left() { echo $((deadline - SECONDS)); }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# (a) carried wheels: packages missing on the device image, at this project's versions.
wheels=${DEVICE_CHECK_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
    say "installing $(ls "$wheels"/*.whl | wc -l) carried wheels into $work/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$work/site" "$wheels"/*.whl || { say "wheel install failed"; exit 2; }
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
else
    say "no wheels in $wheels/: using the installed packages"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c "import trio, hypercorn, quart, quart_trio, cattrs, httpx, psutil, prometheus_client"
then
    say "a package is missing: run bench/prepare_device_wheels.sh where pip works; carry .whl"
    exit 2
fi

if [ $dry = 1 ]; then
    size=tiny
    options=(--streams 1,4 --prompt-tokens 32 --new-tokens 16 --check-prompts 4
             --check-tokens 12 --kill-streams 2 --kill-tokens 2000 --repeats 1 --threads 1)
else
    size=${DEVICE_CHECK_SIZE:-0.5b}
    options=(--streams 1,4,16,64 --prompt-tokens 128 --new-tokens 64 --check-prompts 8
             --check-tokens 32 --kill-streams 4 --kill-tokens 4000 --repeats 3)
fi
say "running bench/device_check.py on $device ($(left) s left)"
timeout --signal=INT --kill-after=20 "$(left)" "$py" bench/device_check.py \
    --device "$device" --size $size --report "$report" --workdir "$work" "${options[@]}"
status=$?
cp "$work/neuron.log" "$out/neuron.log" 2>/dev/null
[ $status = 124 ] && echo "device check: out of time (DEVICE_CHECK_BUDGET)" >>"$report"
if [ $status = 2 ] || [ $dry = 1 ]; then  # set-up failed, or (e) and (f) are GPU-only
    say "done: exit $status, report $report"
    exit $status
fi

# engine.py may default to a real model that cannot be carried here: ask for the synthetic one.
synth=()
grep -q '"--model"' bench/engine.py && synth=(--model synth)
if [ "$(left)" -gt 90 ]; then
    say "(e) bench/engine.py --device $device ($(left) s left)"
    {
        echo
        echo "(e) bench/engine.py --device $device --size $size"
        timeout --signal=INT --kill-after=15 "$(left)" "$py" bench/engine.py --device "$device" \
            "${synth[@]}" --size $size --cache "$work/models" --sections abc \
            --concurrency 1,4,16,64 --repeats 2 --retries 0 2>&1
        echo "(engine.py exit $?)"
    } | tee -a "$report"
fi
# (f) the hybrid families (DEVICE_CHECK_ARCHS, default qwen3_5: linear attention + full
# attention) through bench/engine.py: worker tokens vs a manual loop, tok/s vs generate.
for arch in ${DEVICE_CHECK_ARCHS-qwen3_5}; do
    if [ "$(left)" -le 90 ]; then
        echo "(f) bench/engine.py --arch $arch: skipped ($(left) s left)" | tee -a "$report"
        continue
    fi
    say "(f) bench/engine.py --device $device --arch $arch ($(left) s left)"
    {
        echo
        echo "(f) bench/engine.py --device $device --arch $arch --size $size"
        timeout --signal=INT --kill-after=15 "$(left)" "$py" bench/engine.py --device "$device" \
            "${synth[@]}" --arch "$arch" --size $size --cache "$work/models" --sections ab \
            --concurrency 1,16 \
            --new-tokens 32 --repeats 1 --retries 0 2>&1
        echo "(engine.py exit $?)"
    } | tee -a "$report"
done
say "done: exit $status, report $report"
exit $status
