"""`sliders-eval`: sliders measured (attribute per scale, preservation, a prompt-editing baseline) on
generated images, on edits of the shapes world's rendered scenes, or on what `sliders-edit` wrote."""

from __future__ import annotations

import argparse
from typing import Sequence

from ..cli import _Parser, _setup_logging
from ..errors import InputError
from .images import generation_flags, generation_settings, inversion_flags


def evaluate(argv: Sequence[str] | None) -> int:
    from ..config import DEFAULT_INVERSION, EVAL_STEPS

    parser = _Parser(prog="sliders-eval", description="Measure sliders: attribute per scale, preservation, baseline.")
    generation_flags(parser, steps=EVAL_STEPS, output="evaluation", start_noise=None, slider_required=False)
    parser.add_argument("--scales", default="-2,-1,0,1,2", help="scales for sliders without their own")
    parser.add_argument("--prompt", action="append", help="prompt (repeatable)")
    parser.add_argument("--prompts_file", help="text file, one prompt per line")
    parser.add_argument("--seeds", default="0-7", help="seeds: ranges and lists, e.g. 0-31 or 0,5,9")
    parser.add_argument("--measurer", default="shapes",
                        help="how attributes are read from images: shapes (default; the shapes world) or clip (CLIP "
                             "scores and LPIPS, for real models; needs --measurer_arg model=...)")
    parser.add_argument("--measurer_arg", action="append", metavar="KEY=VALUE",
                        help="an option of the measurer, repeatable: e.g. model=openai/clip-vit-large-patch14, "
                             "positive='old person', negative='young person', batch_size=16, lpips=alex|vgg|off")
    parser.add_argument("--target", default=None,
                        help="the attribute the slider should move (default: the measurer's: size, clip_direction)")
    parser.add_argument("--compare", action="store_true",
                        help="several sliders side by side: each at its scales with the others at 0 (instead of "
                             "every combination)")
    parser.add_argument("--edit_results", metavar="FOLDER",
                        help="measure the edits sliders-edit wrote into FOLDER against their input images (no model "
                             "is loaded; --slider and the generation flags are not used)")
    parser.add_argument("--baseline_replace", action="append", metavar="OLD=NEW",
                        help="prompt-editing baseline: replace OLD by NEW in each prompt (repeatable)")
    parser.add_argument("--baseline_prompts_file",
                        help="prompt-editing baseline: text file with the edited prompt of each prompt, in order")
    parser.add_argument("--save_images", action="store_true", help="also write every image and grids")
    edits = parser.add_argument_group("real-image edits (the shapes world's rendered scenes, edited with sliders-edit's method)")
    edits.add_argument("--edit_scenes", type=int, metavar="N",
                       help="measure edits of N rendered scenes instead of generated images (their captions are the prompts)")
    edits.add_argument("--scene_seed", type=int, default=0, help="seed of the rendered scenes (default 0)")
    edits.add_argument("--scene_style", default="world",
                       help="world (drawn as the model was trained; default), ood (cycling through dark, tinted, "
                            "noise, blur, edge: inputs unlike the training data) or one of those styles")
    inversion_flags(edits, f"how the scenes are inverted (default {DEFAULT_INVERSION})")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    if args.edit_results is not None:
        return _eval_edit_results(args)
    if not args.slider:
        raise InputError("no slider; pass --slider FILE.safetensors (repeatable), or --edit_results FOLDER")
    if args.edit_scenes is not None:
        return _eval_edits(args)
    from ..evaluation import read_prompt_lines, run_evaluation

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompt_lines(args.prompts_file)
    if not prompts:
        raise InputError("no prompts; pass --prompt TEXT (repeatable) or --prompts_file FILE")
    baseline = read_prompt_lines(args.baseline_prompts_file) if args.baseline_prompts_file else None
    paths = run_evaluation(
        args.slider,
        args.scales,
        prompts,
        args.seeds,
        measurer=args.measurer,
        target=args.target,
        measurer_args=args.measurer_arg,
        compare=args.compare,
        baseline_prompts=baseline,
        baseline_replace=args.baseline_replace,
        images=args.save_images,
        settings=generation_settings(args),
    )
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    return 0


def _eval_edits(args: argparse.Namespace) -> int:
    """sliders-eval --edit_scenes N: the edit protocol (`evaluation.edits`); --start_noise defaults
    to EDIT_START_NOISE there."""
    given = [flag for flag, value in (("--prompt", args.prompt), ("--prompts_file", args.prompts_file),
                                      ("--baseline_prompts_file", args.baseline_prompts_file)) if value]
    if given:
        raise InputError(f"--edit_scenes takes each scene's caption as its prompt; drop {' and '.join(given)} "
                         "(edit the captions with --baseline_replace)")
    if args.fused:
        raise InputError("--fused is for generated images; drop it with --edit_scenes")

    from ..evaluation.edits import run_edit_evaluation

    paths = run_edit_evaluation(
        args.slider, args.scales, scenes=args.edit_scenes, scene_seed=args.scene_seed,
        scene_style=args.scene_style, method=args.inversion,
        null_text_iterations=args.null_text_iterations, measurer=args.measurer, target=args.target,
        measurer_args=args.measurer_arg, baseline_replace=args.baseline_replace, images=args.save_images,
        settings=generation_settings(args),
    )
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    return 0


def _eval_edit_results(args: argparse.Namespace) -> int:
    """sliders-eval --edit_results FOLDER: what sliders-edit wrote, measured against its inputs."""
    given = [flag for flag, value in (("--slider", args.slider), ("--prompt", args.prompt),
                                      ("--prompts_file", args.prompts_file), ("--edit_scenes", args.edit_scenes),
                                      ("--baseline_replace", args.baseline_replace), ("--compare", args.compare),
                                      ("--baseline_prompts_file", args.baseline_prompts_file),
                                      ("--save_images", args.save_images), ("--fused", args.fused),
                                      ("--transformer", args.transformer), ("--quantize", args.quantize != "none"))
             if value]
    if given:
        raise InputError(f"--edit_results measures the edits in its folder as they are; drop {', '.join(given)}")
    from ..evaluation.edit_results import run_edit_results_evaluation

    paths = run_edit_results_evaluation(args.edit_results, output=args.output, measurer=args.measurer,
                                        target=args.target, measurer_args=args.measurer_arg, device=args.device)
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    return 0
