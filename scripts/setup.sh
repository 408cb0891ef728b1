#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make a virtual environment in .venv (once) and install sliders into
# it with the exact versions of requirements.lock. Needs only Python >= 3.10. Re-runs are quick:
# nothing is reinstalled unless pyproject.toml, the lock or the extras asked for changed.
# Usage: source scripts/setup.sh [EXTRAS]   (default: 8bit; test.sh asks for dev,8bit,extras)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLIDERS_VENV:-$ROOT/.venv}"
EXTRAS="${1:-8bit}"
LOCK="$ROOT/requirements.lock"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sliders-installed-$(cat "$ROOT/pyproject.toml" "$LOCK" | cksum | cut -d' ' -f1)-${EXTRAS//,/-}"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    constraints="$LOCK"
    if "$PY" -c "import torch" >/dev/null 2>&1; then
        # A torch already in the environment is kept (a CUDA build, say): lock everything but torch.
        constraints="$VENV/constraints-without-torch.txt"
        grep -v '^torch==' "$LOCK" > "$constraints"
    else
        "$PY" -m pip install --quiet "$(grep '^torch==' "$LOCK")"
    fi
    "$PY" -m pip install --quiet --constraint "$constraints" -e "$ROOT[$EXTRAS]"
    rm -f "$VENV"/.sliders-installed-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
