#!/usr/bin/env bash
# The test suite on tiny locally built models: no GPU, no downloads.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" dev,8bit,extras
cd "$ROOT"
export HF_HUB_OFFLINE=1
python -m pytest "$@"
