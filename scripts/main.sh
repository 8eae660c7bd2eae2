#!/usr/bin/env bash
# The main job: set up, then train the default recipe on Fashion-MNIST and write its report.
# Usage: scripts/main.sh [extra traintricks train arguments]   Output: runs/default-<time>/ (runs/latest links it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fashion_mnist.sh
out="runs/default-$(date +%Y%m%d-%H%M%S)"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/traintricks train --out "$out" "$@"
.venv/bin/traintricks report "$out"
ln -sfn "$(basename "$out")" runs/latest
echo "report: $out/report.html and $out/report.md  (curves: $out/curves.png, summary: $out/summary.json)"
