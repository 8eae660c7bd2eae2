#!/usr/bin/env bash
# Create .venv (once) and install traintricks into it, editable, with the extras named in $1.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    py="${PYTHON:-}"
    if [ -z "$py" ]; then
        for c in python3.11 python3.12 python3; do command -v "$c" >/dev/null 2>&1 && { py="$c"; break; }; done
    fi
    "$py" -m venv .venv
fi
# torch is pinned to the 2.13.0 CPU build in pyproject.toml (see README for a CUDA build)
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
.venv/bin/python -c "import traintricks, torch; print('traintricks', traintricks.__version__, 'torch', torch.__version__)"
