#!/usr/bin/env bash
# Builds the environment for benchmarks/architectures.py: this project plus torch-rechub 0.9.0, side by side.
# torch-rechub is NOT a dependency of multitask; it lives only in this benchmark environment.
#   BENCH_ENV   where to create it (default .bench-rechub, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${BENCH_ENV:-.bench-rechub}
python3 -m venv "$ENV"
echo "torch==2.13.0" > "$ENV/constraints.txt"   # never let a dependency swap the CPU torch for a CUDA build
"$ENV/bin/pip" install --quiet -c "$ENV/constraints.txt" torch==2.13.0 torch-rechub==0.9.0
"$ENV/bin/pip" install --quiet -c "$ENV/constraints.txt" -e ".[data,fast]"
echo "ready: $ENV/bin/python benchmarks/architectures.py"
