#!/usr/bin/env bash
# Builds the environment for benchmarks/balancing_speed.py: this project plus torchjd and LibMTL, side by side.
# torchjd and LibMTL are NOT dependencies of multitask; they live only in this benchmark environment.
#   BENCH_ENV   where to create it (default .bench-env, ignored by git)
#   LIBMTL_PATH a checkout of github.com/median-research-group/LibMTL (measured at commit 4336804847ea;
#               the PyPI release 1.1.5 predates Nash-MTL, Aligned-MTL, DB-MTL, FAMO and UPGrad)
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${BENCH_ENV:-.bench-env}
python3 -m venv "$ENV"
echo "torch==2.13.0" > "$ENV/constraints.txt"   # never let a dependency swap the CPU torch for a CUDA build
"$ENV/bin/pip" install --quiet -c "$ENV/constraints.txt" torch==2.13.0 "torchjd[full]==0.18.0" cvxpy "qpsolvers[quadprog]"
"$ENV/bin/pip" install --quiet -c "$ENV/constraints.txt" -e ".[plots]"
if [ ! -d "${LIBMTL_PATH:-/nonexistent}/LibMTL/weighting" ]; then
  echo "LibMTL: set LIBMTL_PATH to a checkout of median-research-group/LibMTL (it is imported from source)" >&2
fi
echo "ready: LIBMTL_PATH=... $ENV/bin/python benchmarks/balancing_speed.py"
