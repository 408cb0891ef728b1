#!/usr/bin/env bash
# An image size slider (configs/shapes/image-size.yaml, 400 iterations) trained with one option at
# several seeds, each evaluated as EVALUATION.md does ("Image sliders: diagnosis and options").
#   MODE=symmetric (default): datasets/shapes-size/symmetric (or $FOLDER_MAIN), smaller/larger at -1, 1, with captions;
#     evaluated on the size-free prompts at -2..2. Reports in output/eval/image-options/NAME-sSEED.
#   MODE=multiscale: datasets/shapes-size/multiscale, four folders at 0.67, 1, 1.3, 2; evaluated on
#     the common prompts at 0, 0.67, 1, 1.3, 2. Reports in output/eval/image-options/ms-NAME-sSEED.
# Usage: bash scripts/image_slider_options.sh NAME "SEEDS" [sliders-train-images flags...]
# e.g. bash scripts/image_slider_options.sh t200 "0 1 2" --timestep_range 200,999
# `python scripts/summarize_image_options.py` tabulates the reports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -n "${SLIDERS_NO_SETUP:-}" ] || source "$ROOT/scripts/setup.sh"
name=$1 seeds=$2; shift 2
mode=${MODE:-symmetric}
GEN=(--seeds 0-3 --steps 25 --guidance_scale 5)
if [ "$mode" = multiscale ]; then
    prefix=ms- folder_main=datasets/shapes-size/multiscale
    TRAIN=(--folders base_one_minus,base_one,base_one_plus,base_k --scales 0.67,1,1.3,2)
    EVAL=(--scales=0,0.67,1,1.3,2 --prompts_file configs/shapes/eval-prompts.txt "${GEN[@]}")
else
    prefix="" folder_main=${FOLDER_MAIN:-datasets/shapes-size/symmetric}
    TRAIN=(--folders smaller,larger --scales=-1,1 --captions)
    EVAL=(--scales=-2,-1,0,1,2 --prompts_file configs/shapes/eval-prompts-nosize.txt "${GEN[@]}")
fi
for seed in $seeds; do
    run="imgopt_${prefix//-/_}${name}_s${seed}"
    out="output/eval/image-options/${prefix}${name}-s${seed}"
    [ -f "$out/report.json" ] && continue
    sliders-train-images --config configs/shapes/image-size.yaml --name "$run" --folder_main "$folder_main" \
        "${TRAIN[@]}" --resolution 64 --seed "$seed" --sample_every 0 --overwrite "$@"
    file=$(ls output/models/${run}_*/${run}_last.safetensors)
    sliders-eval --slider "$file" --target size "${EVAL[@]}" --output "$out"
done
