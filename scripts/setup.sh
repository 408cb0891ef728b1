#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make a virtual environment in .venv (once) and install sliders into
# it. Needs only Python >= 3.10. Re-runs are quick: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLIDERS_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sliders-installed-$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)-${EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    # Any torch already in the environment is kept (a CUDA build, say); otherwise take 2.13.0.
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        "$PY" -m pip install --quiet "torch==2.13.0"
    fi
    if [ -n "$EXTRAS" ]; then
        "$PY" -m pip install --quiet -e "$ROOT[$EXTRAS]"
    else
        "$PY" -m pip install --quiet -e "$ROOT"
    fi
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
