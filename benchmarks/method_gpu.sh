#!/usr/bin/env bash
# The method experiment at its GPU size on one GPU (an H100: under 10 minutes is the target):
# every row of Table 3 over seeds 0, 1, 2 on the clothes-trap world, the official OSNet x1.0 at
# 256x128 body crops, from scratch (no ImageNet file on a lent machine). Writes OUT/method.json,
# OUT/method.md, OUT/report.html and OUT/time.txt (wall seconds), default ./method-gpu.
#   benchmarks/method_gpu.sh /tmp/method-gpu
#   benchmarks/method_gpu.sh /tmp/method-gpu --size tiny   # anywhere: the tiny size (what the test does)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-method-gpu}"
shift || true
python="${PYTHON:-python}"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/device.txt" 2>/dev/null || echo "no GPU" > "$out/device.txt"
start=$(date +%s)
# 9.5 minutes at most, so that a 10-minute device call brings back what finished (per-seed files).
timeout 570 "$python" -m deskpro experiment method --size gpu --no-progress -o "$out" "$@" 2>&1 | tee "$out/log.txt"
echo "$(( $(date +%s) - start ))" > "$out/time.txt"
