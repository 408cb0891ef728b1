#!/usr/bin/env bash
# Drift check: install the newest versions that pyproject.toml's ranges allow into a scratch
# environment (a temporary folder, removed afterwards), show what differs from requirements.lock,
# and run the test suite there. Not part of CI; run it before a release and every few weeks.
#
#   bash scripts/latest.sh            # newest of everything but torch (kept at the lock's version)
#   bash scripts/latest.sh --torch    # newest torch as well (a CUDA build: several GB)
#   bash scripts/latest.sh --lock     # and, if the tests pass, write that set into requirements.lock
#
# Further arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements.lock"
EXTRAS="dev,8bit,extras"  # what scripts/test.sh installs; the lock covers all of it
PYTHON_BIN="${PYTHON:-python3}"
newest_torch=0
write_lock=0
pytest_args=()
for arg in "$@"; do
    case "$arg" in
        --torch) newest_torch=1 ;;
        --lock) write_lock=1 ;;
        *) pytest_args+=("$arg") ;;
    esac
done

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
"$PYTHON_BIN" -m venv "$SCRATCH/venv"
PY="$SCRATCH/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
# Without --torch, torch stays at the lock's version through the eager upgrade too.
grep '^torch==' "$LOCK" > "$SCRATCH/torch.txt"
if [ "$newest_torch" = 1 ]; then : > "$SCRATCH/torch.txt"; fi
"$PY" -m pip install --quiet --upgrade --upgrade-strategy eager --constraint "$SCRATCH/torch.txt" -e "$ROOT[$EXTRAS]"

# The lock's own format: exact versions, sorted, no local build tags (+cpu, +cu126), no sliders itself.
"$PY" -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$//' | LC_ALL=C sort -f > "$SCRATCH/resolved.txt"
echo "Differences from requirements.lock (< lock, > newest):"
diff <(grep -v '^#' "$LOCK" | LC_ALL=C sort -f) "$SCRATCH/resolved.txt" || true

cd "$ROOT"
HF_HUB_OFFLINE=1 PATH="$SCRATCH/venv/bin:$PATH" "$PY" -m pytest "${pytest_args[@]}"

if [ "$write_lock" = 1 ]; then
    {
        echo "# Exact versions that scripts/setup.sh installs (pip constraints), tested with the suite."
        echo "# Refresh with: bash scripts/latest.sh --lock   (it writes this file only if the tests pass)"
        cat "$SCRATCH/resolved.txt"
    } > "$LOCK"
    echo "wrote $LOCK"
fi
