#!/usr/bin/env bash
# Run every benchmark once, in sequence, and keep each one's output in
# benchmarks/results/<name>.txt (docs/benchmarks.md quotes these files).
# Usage: bash benchmarks/run_all.sh   (from the repository root, after `make venv`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
mkdir -p "$OUT"
run() {
  local name=$1; shift
  echo "== $name: $*"
  { echo "\$ $*"; echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) CPUs, $(uname -m)"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
}
run inference "$PY" benchmarks/inference_benchmark.py --slices 200
run precision "$PY" benchmarks/precision_check.py --cases 6
run end_to_end "$PY" benchmarks/end_to_end_benchmark.py --runs 3 --slices 200
# rt-utils (the named peer) is not a dependency: pip install --target DIR rt-utils opencv-python-headless, then RTUTILS_PATH=DIR
run writer "$PY" benchmarks/writer_benchmark.py --slices 200 --repeat 3 ${RTUTILS_PATH:+--peer-path "$RTUTILS_PATH"}
run ingest "$PY" benchmarks/ingest_benchmark.py --slices 300 --repeats 3
run stow "$PY" benchmarks/stow_benchmark.py --slices 100 --repeats 3
run feedback "$PY" benchmarks/feedback_benchmark.py --slices 120 --repeat 2
run queue "$PY" benchmarks/queue_benchmark.py --jobs 10000 --workers 8
run series_digest "$PY" benchmarks/series_digest_benchmark.py
