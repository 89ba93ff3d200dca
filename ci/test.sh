#!/usr/bin/env bash
# CI: a fresh virtual environment, the project installed exactly as README.md says, the PyTorch
# oracle for the parity tests, then README's test command. No GPU: CUDA kernels run under
# Numba's simulator where a test asks for it; CuPy-only tests skip with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${GPUNN_CI_VENV:-.venv-ci}"
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip

# README, "Run the tests": the project with its test and cuda-compile extras
python -m pip install --quiet -e ".[test,cuda-compile]"
# The oracle for the PyTorch parity tests (CPU build); CI only, never a dependency of gpunn.
python -m pip install --quiet "torch==2.13.0"

python - <<'PY'
from importlib.metadata import version
import numpy, numba, torch, gpunn
print(f"gpunn {gpunn.__version__} | numpy {numpy.__version__} | numba {numba.__version__} | "
      f"numba-cuda {version('numba-cuda')} | torch {torch.__version__}")
PY

# README, "Run the tests"
python -m pytest -q
