#!/usr/bin/env bash
# The main job on the built-in default model: train a text slider, then sample it at five strengths.
# Writes output/models/... (the slider) and output/samples/grid.png.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
sliders-train --config configs/tiny/text-slider.yaml --overwrite "$@"
sliders-sample --slider output/models/size_alpha1.0_rank4_noxattn/size_last.safetensors \
    --scales=-2,-1,0,1,2 --prompt "circle" --seeds 0,1 --steps 20 --output output/samples
