#!/usr/bin/env bash
# The main job on the built-in default model (the shapes world): train a text size slider, then
# sample it at five strengths. Writes output/models/... (the slider) and output/samples/grid.png.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
sliders-train --config configs/shapes/size.yaml --overwrite "$@"
sliders-sample --slider output/models/size_alpha1.0_rank4_noxattn/size_last.safetensors \
    --scales=-2,-1,0,1,2 --prompt "a medium red circle" --prompt "a medium blue square" \
    --prompt "a medium green triangle" --seeds 0,1 --steps 25 --output output/samples
