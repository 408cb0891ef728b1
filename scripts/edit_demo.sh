#!/usr/bin/env bash
# Real-image editing on the built-in default model: four rendered shapes-world scenes (drawn, not
# generated) edited with the demo's size slider at five strengths, each with its caption as the
# prompt. Run scripts/demo.sh first (it trains the slider). Writes output/scenes/ (the inputs and
# captions.txt) and output/edits/ (the edits, grid.png, edits.json).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
python -m sliders.shapes.datasets --scenes --out output/scenes --count 4 --seed 0 > /dev/null
inputs=()
while IFS= read -r line; do  # "scene000.png: a medium blue triangle"
    inputs+=(--image "output/scenes/${line%%: *}" --prompt "${line#*: }")
done < output/scenes/captions.txt
sliders-edit "${inputs[@]}" --slider output/models/size_alpha1.0_rank4_noxattn/size_last.safetensors \
    --scales=-2,-1,0,1,2 --steps 25 --guidance_scale 5 --output output/edits "$@"
