#!/usr/bin/env bash
# The one prepared GPU check for gpunn's CUDA backend: stages in order of the truth they give per
# second, each with its own time limit, all under one deadline (540 s: a device command may run 600 s).
#
#   bash kernels/gpu_check.sh [RESULTS_DIR]   # default: $OUT when set, else kernels/results/
#   bash kernels/gpu_check.sh --dry-run       # the plan: "stage seconds" per line, then the total; no GPU needed
#   PYTHON=/path/to/python bash kernels/gpu_check.sh   # default python3 (GPU images often have no `python`)
#
#   probe     versions (driver, CUDA runtime, CuPy, numba, numba-cuda, cuda-core), where NVVM was found,
#             the probe kernel compiled and launched on CuPy's default and on a non-default stream
#   parity    tests/test_cuda_*.py but the offline compile test, on the GPU (every CUDA kernel vs the
#             CPU path), each test phase limited by gpu_check_pytest.py (no pytest-timeout needed)
#   bench     one process (gpu_check.py bench): launch overhead, fused dense vs cuBLAS+epilogue,
#             training steps vs PyTorch eager (bench_train.py's 3 shapes + 4096-4096-4096-10 at 4096)
#   autotune  dense_dispatch's autotune, shape by shape until its deadline
#   profile   gpunn profile --device gpu --compare, only with time left
#
# Files, all in RESULTS_DIR and named after the card and the time (<stem> = nvidia-h200-2026-11-29-1412):
# <stem>.log (every stage's output, appended as it runs), <stem>-summary.json (every stage's status,
# exit, seconds; rewritten after each stage and by the EXIT/TERM/INT trap when the script is
# killed), <stem>-probe.json, -parity.xml (JUnit), -bench.json, -autotune.json, -profile-trace.json:
# at most 7 files, no folders. A stage's files are complete the moment it ends; the JSON stages
# rewrite theirs after every measurement, so a stage killed by its limit leaves what it measured.
#
# GPUNN_CHECK_STANDIN="name:limit:sleep,..." replaces the plan by stand-in stages that write
# <stem>-<name>.json and sleep (the CI tests of the limits and the trap use it; no GPU, no Python).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DEADLINE_S=540      # the whole run, trap and summary included
RESERVE_S=5         # kept back at the end for the summary
KILL_AFTER_S=5      # a stage that ignores its limit's SIGINT gets SIGKILL this much later
TEST_LIMIT_S=45     # parity: one test phase

STAGES=(probe parity bench autotune profile)
LIMITS=(20 170 120 90 60)
SLEEPS=()
MIN_STAGE_S=10      # a stage with less time than this left is skipped
if [ -n "${GPUNN_CHECK_STANDIN:-}" ]; then
    STAGES=(); LIMITS=(); SLEEPS=(); MIN_STAGE_S=1
    IFS=',' read -r -a _items <<< "$GPUNN_CHECK_STANDIN"
    for _item in "${_items[@]}"; do
        IFS=':' read -r _n _l _s <<< "$_item"
        STAGES+=("$_n"); LIMITS+=("$_l"); SLEEPS+=("${_s:-0}")
    done
fi

stage_cmd() {  # run stage $1 (plan index $2): in a child of this script, under timeout (run_stage)
    case "$1" in
        probe) "$PY" kernels/gpu_check.py probe --json "$RES/$STEM-probe.json" ;;
        parity)
            local tests=() f
            for f in tests/test_cuda_gpu.py tests/test_cuda_kernels.py tests/test_cuda_autograd.py tests/test_cuda_*.py; do
                [ "$f" = tests/test_cuda_compile.py ] && continue   # offline sm_90 compile: CI's, needs no GPU
                case " ${tests[*]-} " in *" $f "*) continue ;; esac
                tests+=("$f")
            done
            PYTHONPATH="$ROOT/kernels:$PYTHONPATH" GPUNN_TEST_TIMEOUT=$TEST_LIMIT_S \
                "$PY" -m pytest "${tests[@]}" -p gpu_check_pytest -p no:cacheprovider -q -rfEs --durations=10 \
                -o faulthandler_timeout=$(( TEST_LIMIT_S + 10 )) --junitxml="$RES/$STEM-parity.xml" ;;
        bench) "$PY" kernels/gpu_check.py bench --json "$RES/$STEM-bench.json" ;;
        autotune) "$PY" kernels/gpu_check.py autotune --json "$RES/$STEM-autotune.json" ;;
        profile) "$PY" -m gpunn profile --layers 784,512,512,10 --batch 256 --steps 20 --device gpu --compare \
                     --trace "$RES/$STEM-profile-trace.json" ;;
        *)  # a stand-in stage: its file first, then its sleep
            echo "{\"stage\": \"$1\", \"written\": \"before its sleep\"}" > "$RES/$STEM-$1.json"
            echo "stand-in stage $1: sleeping ${SLEEPS[$2]} s"
            sleep "${SLEEPS[$2]}" ;;
    esac
}

if [ "${1:-}" = "--dry-run" ]; then
    total=0
    for i in "${!STAGES[@]}"; do
        echo "${STAGES[$i]} ${LIMITS[$i]}"
        total=$(( total + LIMITS[i] ))
    done
    echo "total $total"
    exit 0
fi
if [ "${1:-}" = "--stage" ]; then  # internal: one stage, with RES and STEM from run_stage
    RES=$GPUNN_CHECK_RES STEM=$GPUNN_CHECK_STEM
    stage_cmd "$2" "$3"
    exit
fi

START=$(date +%s)
DEADLINE=$(( START + DEADLINE_S ))
RES=${1:-${OUT:-kernels/results}}
mkdir -p "$RES" || { echo "gpu_check: cannot create $RES" >&2; exit 2; }
RES=$(cd "$RES" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0          # the real GPU, never the simulator (tests/conftest.py respects it)
unset CUPY_TF32                        # full float32 in cuBLAS

if [ -n "${GPUNN_CHECK_STANDIN:-}" ]; then
    CARD="standin"
    STEM="standin-$(date -u +%Y-%m-%d-%H%M)"
else
    CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    [ -n "$CARD" ] || CARD=$("$PY" -c 'import cupy; n = cupy.cuda.runtime.getDeviceProperties(0)["name"]
print(n.decode() if isinstance(n, bytes) else n)' 2>/dev/null)
    CARD=${CARD:-no-gpu}
    STEM=$("$PY" -c 'import os, sys; sys.path.insert(0, "kernels"); from bench_dense_gpu import results_stem
print(os.path.basename(results_stem(sys.argv[1], sys.argv[2])))' "$CARD" "$(date -u +%Y-%m-%d-%H%M)" 2>/dev/null) \
        || STEM="unknown-$(date -u +%Y-%m-%d-%H%M)"
fi
CARD=${CARD//[\"\\]/}
LOG="$RES/$STEM.log"
SUMMARY="$RES/$STEM-summary.json"
: > "$LOG"

RECORDS=()          # one JSON object per stage that ran or was skipped
CUR_NAME=""; CUR_LIMIT=0; CUR_T0=0; CUR_PID=""
STATE="running"

say() { echo "$*" | tee -a "$LOG"; }

record() {  # name limit seconds exit status
    RECORDS+=("{\"name\": \"$1\", \"limit_s\": $2, \"seconds\": $3, \"exit\": $4, \"status\": \"$5\"}")
}

write_summary() {
    local files="" f sep=""
    for f in "$RES/$STEM"*; do
        [ -e "$f" ] || continue
        case "$f" in *.tmp) continue ;; esac
        files+="$sep\"$(basename "$f")\""; sep=", "
    done
    local stages="" s sep2=""
    for s in ${RECORDS[@]+"${RECORDS[@]}"}; do stages+="$sep2    $s"; sep2=$',\n'; done
    {
        printf '{\n  "stem": "%s",\n  "card": "%s",\n  "state": "%s",\n' "$STEM" "$CARD" "$STATE"
        printf '  "deadline_s": %d,\n  "elapsed_s": %d,\n' "$DEADLINE_S" "$(( $(date +%s) - START ))"
        printf '  "stages": [\n%s\n  ],\n  "files": [%s]\n}\n' "$stages" "$files"
    } > "$SUMMARY.tmp" && mv -f "$SUMMARY.tmp" "$SUMMARY"
}

stop_stage() {  # stop the running stage's process group (timeout leads it), give it a moment to flush
    [ -n "$CUR_PID" ] || return 0
    kill -INT -- "-$CUR_PID" 2>/dev/null || kill -INT "$CUR_PID" 2>/dev/null
    local i
    for i in 1 2 3 4 5 6; do kill -0 "$CUR_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$CUR_PID" 2>/dev/null || kill -KILL "$CUR_PID" 2>/dev/null
    CUR_PID=""
}

on_signal() {
    trap - TERM INT HUP
    if [ -n "$CUR_PID" ]; then
        say "==== $CUR_NAME: killed, the script was terminated by SIG$1"
        stop_stage
        record "$CUR_NAME" "$CUR_LIMIT" "$(( $(date +%s) - CUR_T0 ))" -1 "killed: script terminated by SIG$1"
    fi
    STATE="terminated by SIG$1"
    exit 143
}

on_exit() {
    [ "$STATE" = "running" ] && STATE="done"
    write_summary
    echo "summary: $SUMMARY"
    cat "$SUMMARY"
}

trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP
trap on_exit EXIT

run_stage() {  # index
    local i=$1 name=${STAGES[$1]} limit=${LIMITS[$1]}
    local now left rc status seconds offset
    now=$(date +%s)
    left=$(( DEADLINE - now - RESERVE_S - KILL_AFTER_S ))
    if (( left < MIN_STAGE_S )); then
        say "==== $name: skipped, ${left}s left before the deadline"
        record "$name" "$limit" 0 -1 "skipped: ${left}s left"
        write_summary
        return
    fi
    (( limit > left )) && limit=$left
    say "==== $name (limit ${limit}s, $(date -u +%H:%M:%S))"
    offset=$(stat -c %s "$LOG")
    CUR_NAME=$name; CUR_LIMIT=$limit; CUR_T0=$now
    # Python stages stop starting new work a little before their limit, so they end on their own
    export GPUNN_STAGE_DEADLINE=$(( now + limit * 85 / 100 ))
    GPUNN_CHECK_RES=$RES GPUNN_CHECK_STEM=$STEM \
        timeout -s INT -k "$KILL_AFTER_S" "$limit" bash "$ROOT/kernels/gpu_check.sh" --stage "$name" "$i" >> "$LOG" 2>&1 &
    CUR_PID=$!
    wait "$CUR_PID"
    rc=$?
    CUR_PID=""
    seconds=$(( $(date +%s) - now ))
    case $rc in
        0) status="ok" ;;
        124) status="killed: time limit ${limit}s" ;;
        137) status="killed: SIGKILL after the time limit ${limit}s" ;;
        *) status="failed: exit $rc" ;;
    esac
    local lines=8
    [ "$status" = "ok" ] || lines=25
    tail -c +"$(( offset + 1 ))" "$LOG" | tail -n "$lines" | cut -c1-240  # the stage's last lines, to stdout
    say "==== $name: $status after ${seconds}s"
    record "$name" "$limit" "$seconds" "$rc" "$status"
    write_summary
}

{
    echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) card=$CARD results=$RES python=$PY"
    git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
} >> "$LOG"
write_summary
for i in "${!STAGES[@]}"; do
    run_stage "$i"
done
