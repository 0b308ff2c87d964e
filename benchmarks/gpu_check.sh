#!/usr/bin/env bash
# One-GPU check (under 8 minutes on one H200): network throughput per batch / precision / memory
# format with FLOPs and the fraction of the compute limit, training images/s with AMP and the
# data-wait share, GPU JPEG decoding. Writes gpu_check.json and gpu_check.md to OUT (default
# ./gpu_check). Random weights: speed only. Extra arguments go to benchmarks/gpu_check.py, e.g.
#   benchmarks/gpu_check.sh /tmp/out --peak-tflops 989
#   benchmarks/gpu_check.sh /tmp/out --tiny          # CPU-sized smoke run (what the test does)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-gpu_check}"
shift || true
python="${PYTHON:-python}"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
# 7.5 minutes at most, so that the whole check (with start-up) stays under 8.
exec timeout 450 "$python" "$here/gpu_check.py" --out "$out" "$@"
