#!/usr/bin/env bash
# The one prepared GPU check for gpunn's CUDA backend. Run it from anywhere on a machine with CuPy,
# Numba CUDA and a CUDA GPU (PyTorch with CUDA for the comparisons); sized to finish within about
# 8 minutes on an H100 (every step has a time limit, so it always ends and always writes its results):
#
#   bash kernels/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
#   1. gpunn info --gpu                 why the GPU kernels run, settings, compile time of each kernel
#   2. pytest: tests/test_cuda_*.py first (every CUDA kernel on CuPy arrays, for real: simulator off),
#      then the whole suite (every backend test also runs on the "gpu" backends, i.e. CudaOps)
#   3. kernels/bench_dense_gpu.py       fused vs cuBLAS+epilogue vs cuBLAS+separate vs torch (--quick)
#   4. kernels/bench_train_gpu.py       training throughput vs PyTorch eager (--quick)
#   5. dense_dispatch autotune          measures fused vs cuBLAS per shape, rewrites the dispatch table
#   6. gpunn profile --device gpu       the profiler's GPU path: CUDA events, NVTX, --compare, a trace
#
# Results: kernels/results/<card>-<date>.txt (the whole log) and .json (summary: exit status and
# time of every step, pytest's summary lines, the benchmark and autotune results), plus
# <card>-<date>-bench-dense.json, -bench-train.json, -autotune.json and -dense_table.py (the
# measured table: commit it as gpunn/kernels/dense_table.py). When $OUT is set, all of them are
# also copied there.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0          # the real GPU, never the simulator (tests/conftest.py respects it)
unset CUPY_TF32                        # full float32 in cuBLAS
PY=${PYTHON:-python}

STEM=$("$PY" - <<'EOF'
import importlib.util
spec = importlib.util.spec_from_file_location("bench_dense_gpu", "kernels/bench_dense_gpu.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
except Exception:
    name = "no-gpu"
print(mod.results_stem(name))
EOF
) || STEM="kernels/results/unknown-$(date -u +%Y-%m-%d)"
mkdir -p "$(dirname "$STEM")"
TXT="$STEM.txt"
: > "$TXT"
STEPS=""

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "==== $name (limit ${limit}s, $(date -u +%H:%M:%S)): $*" | tee -a "$TXT"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$TXT"
    rc=${PIPESTATUS[0]}
    echo "==== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$TXT"
    STEPS="$STEPS $name=$rc:$(( $(date +%s) - t0 ))"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$TXT" 2>&1 || true
step info 90 "$PY" -m gpunn info --gpu
# one pytest process (kernels compile once per process): the CUDA tests first, then the rest of the suite
# (tests/test_cuda_compile.py, the offline sm_90 compile check, is left to CI: it needs no GPU)
OTHER_TESTS=$(ls tests/test_*.py | grep -v '^tests/test_cuda_')
# shellcheck disable=SC2086
step pytest 390 "$PY" -m pytest tests/test_cuda_gpu.py tests/test_cuda_kernels.py tests/test_cuda_autograd.py \
    tests/test_cuda_dispatch.py tests/test_cuda_backend.py tests/test_cuda_scripts.py $OTHER_TESTS \
    -v -rfEs -p no:cacheprovider --durations=15
step bench-dense 75 "$PY" kernels/bench_dense_gpu.py --quick --rounds 3 --json "$STEM-bench-dense.json"
step bench-train 75 "$PY" kernels/bench_train_gpu.py --quick --rounds 3 --json "$STEM-bench-train.json"
step autotune 90 "$PY" -m gpunn.kernels.dense_dispatch --quick --repeat 10 --json "$STEM-autotune.json"
step profile 45 "$PY" -m gpunn profile --layers 784,512,512,10 --batch 256 --steps 20 --device gpu --compare \
    --trace "$STEM-trace.json"
cp gpunn/kernels/dense_table.py "$STEM-dense_table.py" 2>/dev/null || true

STEPS="$STEPS" "$PY" - "$STEM" <<'EOF'
import json, os, re, sys
stem = sys.argv[1]
summary = {"stem": stem, "steps": {}}
for item in os.environ.get("STEPS", "").split():
    name, _, rest = item.partition("=")
    rc, _, secs = rest.partition(":")
    summary["steps"][name] = {"exit": int(rc), "seconds": int(secs), "ok": rc == "0"}
text = open(stem + ".txt", errors="replace").read()
summary["pytest_summaries"] = re.findall(r"^=*\s*(\d+ (?:passed|failed|error)[^\n]*?)\s*=*$", text, re.M)
summary["pytest_failures"] = re.findall(r"^(?:FAILED|ERROR) [^\n]+", text, re.M)[:200]
for part in ("bench-dense", "bench-train", "autotune"):
    path = f"{stem}-{part}.json"
    if os.path.exists(path):
        with open(path) as f:
            summary[part] = json.load(f)
with open(stem + ".json", "w") as f:
    json.dump(summary, f, indent=1)
print("summary:", json.dumps(summary["steps"]), "->", stem + ".json")
EOF

if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp "$STEM"* "$OUT"/ && echo "copied $STEM* to $OUT"
fi
