#!/usr/bin/env bash
# The test suite: set up (with the test extras), then run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/fashion_mnist.sh --optional     # the one real-data test is skipped without it
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/python -m pytest tests "$@"
