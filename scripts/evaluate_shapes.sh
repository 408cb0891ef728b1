#!/usr/bin/env bash
# Every figure of EVALUATION.md: train the shapes-world sliders and measure them with sliders-eval.
# Writes output/models/... and output/eval/<experiment>/report.{md,json} and plot.png.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
M=output/models
GEN=(--steps 25 --guidance_scale 5)
EVAL=(--prompts_file configs/shapes/eval-prompts.txt --seeds 0-3 "${GEN[@]}")  # 8 prompts x 4 seeds
NOSIZE=(--prompts_file configs/shapes/eval-prompts-nosize.txt --seeds 0-3 "${GEN[@]}")
SQUARES=(--prompts_file configs/shapes/eval-prompts-squares.txt --seeds 0-7 "${GEN[@]}")  # 4 x 8
colours='red, green, blue, yellow'
sized_colours='small red, small green, small blue, small yellow, medium red, medium green, medium blue, medium yellow, large red, large green, large blue, large yellow'

train_text() {  # name config [flags...]
    local name=$1 config=$2; shift 2
    [ -f "$M/${name}_alpha1.0_rank4_noxattn/${name}_last.safetensors" ] ||
        sliders-train --config "$config" --name "$name" --overwrite "$@"
}
train_images() {  # name folder_main folders scales [flags...]
    local name=$1 root=$2 folders=$3 scales=$4; shift 4
    [ -f "$M/${name}_alpha1.0_rank4_noxattn/${name}_last.safetensors" ] ||
        sliders-train-images --config configs/shapes/image-size.yaml --name "$name" --folder_main "$root" \
            --folders "$folders" --scales="$scales" --resolution 64 --overwrite "$@"
}
slider() { echo "$M/$1_alpha1.0_rank4_noxattn/$1_last.safetensors"; }

experiment=${1:-all}
if [ "$experiment" = all ] || [ "$experiment" = text ]; then
    train_text size configs/shapes/size.yaml
    sliders-eval --slider "$(slider size)" --scales=-2,-1,0,1,2 --target size "${EVAL[@]}" \
        --baseline_replace medium=large --output output/eval/text-size
    train_text size_colours configs/shapes/size.yaml --attributes "$colours"
    sliders-eval --slider "$(slider size_colours)" --scales=-2,-1,0,1,2 --target size "${EVAL[@]}" \
        --baseline_replace medium=large --output output/eval/text-size-colours
    for name in size size_colours; do  # far out of the training range, where colour could start to drift
        sliders-eval --slider "$(slider $name)" --scales=-6,0,6 --target size "${EVAL[@]}" \
            --output "output/eval/stress-$name"
    done
    train_text size_bidirectional configs/shapes/size-bidirectional.yaml
    sliders-eval --slider "$(slider size_bidirectional)" --scales=-2,-1,0,1,2 --target size "${EVAL[@]}" \
        --baseline_replace medium=small --output output/eval/text-size-bidirectional
fi
if [ "$experiment" = all ] || [ "$experiment" = edits ]; then
    # Real-image editing: 32 rendered medium scenes, inverted with each method, edited with the size slider.
    train_text size configs/shapes/size.yaml
    for method in direct null-text negative-prompt ddim; do
        sliders-eval --slider "$(slider size)" --scales=-2,-1,0,1,2 --target size --edit_scenes 32 \
            --inversion "$method" "${GEN[@]}" --baseline_replace medium=large --output "output/eval/edit-$method"
    done
    sliders-eval --slider "$(slider size)" --scales=-2,-1,0,1,2 --target size --edit_scenes 32 \
        --start_noise 750 "${GEN[@]}" --baseline_replace medium=large --output output/eval/edit-direct-750
fi
if [ "$experiment" = all ] || [ "$experiment" = images ]; then
    train_images image_symmetric datasets/shapes-size/symmetric smaller,larger -1,1 --captions
    sliders-eval --slider "$(slider image_symmetric)" --scales=-2,-1,0,1,2 --target size "${EVAL[@]}" \
        --baseline_replace medium=large --output output/eval/image-symmetric
    sliders-eval --slider "$(slider image_symmetric)" --scales=-2,-1,0,1,2 --target size "${NOSIZE[@]}" \
        --baseline_prompts_file configs/shapes/eval-prompts-nosize-large.txt --output output/eval/image-symmetric-nosize
    # Why "a medium ..." prompts hide it: the same images without classifier-free guidance.
    sliders-eval --slider "$(slider image_symmetric)" --scales=-2,0,2 --target size "${EVAL[@]}" \
        --guidance_scale 1 --output output/eval/image-symmetric-guidance1
    train_images image_symmetric_nocaptions datasets/shapes-size/symmetric smaller,larger -1,1
    sliders-eval --slider "$(slider image_symmetric_nocaptions)" --scales=-2,-1,0,1,2 --target size \
        "${NOSIZE[@]}" --output output/eval/image-symmetric-nocaptions
    train_images image_multiscale datasets/shapes-size/multiscale base_one_minus,base_one,base_one_plus,base_k 0.67,1,1.3,2
    sliders-eval --slider "$(slider image_multiscale)" --scales=0,0.67,1,1.3,2 --target size "${EVAL[@]}" \
        --output output/eval/image-multiscale
fi
if [ "$experiment" = all ] || [ "$experiment" = composition ]; then
    train_text size_colours configs/shapes/size.yaml --attributes "$colours"
    train_text roundness configs/shapes/roundness.yaml --attributes "$colours"
    sliders-eval --slider "$(slider roundness)" --scales=-2,-1,0,1,2 --target fill_ratio "${SQUARES[@]}" \
        --baseline_replace square=circle --output output/eval/roundness
    sliders-eval --slider "$(slider size_colours):0,1,2" --slider "$(slider roundness):0,1,2" --target size \
        "${SQUARES[@]}" --output output/eval/composition
    # Roundness with size as well as colour preservation attributes: does it compose better?
    train_text roundness_sizes configs/shapes/roundness.yaml --attributes "$sized_colours"
    sliders-eval --slider "$(slider roundness_sizes)" --scales=-2,-1,0,1,2 --target fill_ratio "${SQUARES[@]}" \
        --baseline_replace square=circle --output output/eval/roundness-sizes
    sliders-eval --slider "$(slider size_colours):0,1,2" --slider "$(slider roundness_sizes):0,1,2" --target size \
        "${SQUARES[@]}" --output output/eval/composition-roundness-sizes
fi
