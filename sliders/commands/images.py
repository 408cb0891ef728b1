"""The image-making commands' shared generation flags (how images are generated and where they go),
`sliders-sample` (images at several slider strengths from the same seed) and `sliders-edit` (real
images inverted and regenerated at each slider scale)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from ..cli import _Parser, _setup_logging, add_verbose_flag
from ..errors import InputError
from .flags import add_config_flags

if TYPE_CHECKING:
    from ..planning import GenerationSettings


def generation_flags(parser: _Parser, *, steps: int, output: str, start_noise: int | None = None,
                      guidance_scale: float | None = None, fused: bool = True, guidance_help: str | None = None,
                      slider_required: bool = True) -> None:
    """Flags that sliders-sample, sliders-eval and sliders-edit share: how images are generated and where they go."""
    parser.add_argument("--slider", action="append", required=slider_required, metavar="PATH[:SCALES]",
                        help="slider file, optionally with its own scales (repeat for several sliders)")
    parser.add_argument("--negative_prompt", default="", help="negative prompt")
    parser.add_argument("--start_noise", type=int, default=start_noise,
                        help="sliders are off while the timestep is above this (default "
                             + (f"{start_noise})" if start_noise is not None else "the slider's recorded value, else its "
                                "family's: 750 SDXL, 850 SD 1.x/2.x)"))
    parser.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    parser.add_argument("--guidance_scale", type=float, default=guidance_scale,
                        help=guidance_help or "classifier-free guidance (default "
                             + (f"{guidance_scale:g})" if guidance_scale is not None else "the slider's family's: 5 SDXL, "
                                "7.5 SD 1.x/2.x; few-step models want 0-1)"))
    parser.add_argument("--pretrained_model", help="base model (default: the one recorded in the slider)")
    add_config_flags(parser, ("pretrained_model.transformer", "pretrained_model.quantize"),
                     defaults={"pretrained_model.quantize": "none"})
    parser.add_argument("--resolution", type=int, help="image size (default: the slider's training resolution)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="model dtype")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU index")
    if fused:
        parser.add_argument("--fused", action="store_true",
                            help="fold the sliders into the UNet weights while they are on (faster; same images up to rounding)")
    parser.add_argument("--output", default=output, help=f"output folder (default: {output})")
    add_verbose_flag(parser)


def inversion_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, inversion_help: str) -> None:
    """How real images are inverted (sliders-edit, sliders-eval --edit_scenes)."""
    from ..config import DEFAULT_INVERSION, INVERSIONS, NULL_TEXT_ITERATIONS

    parser.add_argument("--inversion", default=DEFAULT_INVERSION, choices=INVERSIONS, help=inversion_help)
    parser.add_argument("--null_text_iterations", type=int, default=NULL_TEXT_ITERATIONS,
                        help=f"null-text optimisation steps per timestep (default {NULL_TEXT_ITERATIONS})")


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The generation flags (`generation_flags`) as the settings a run takes; `--fused` only in fp32."""
    from ..planning import GenerationSettings

    fused = getattr(args, "fused", False)
    if fused and args.precision != "fp32":
        raise InputError(
            f"--fused folds the sliders into the UNet weights, which in {args.precision} would round the sliders' "
            "change away; use --fused with --precision fp32, or leave --fused off"
        )
    return GenerationSettings(
        output=args.output, start_noise=args.start_noise, steps=args.steps, guidance_scale=args.guidance_scale,
        pretrained_model=args.pretrained_model, device=args.device, precision=args.precision,
        resolution=args.resolution, negative_prompt=args.negative_prompt, transformer=args.transformer,
        quantize=args.quantize, fused=fused,
    )


def sample(argv: Sequence[str] | None) -> int:
    from ..config import SAMPLE_STEPS

    parser = _Parser(prog="sliders-sample", description="Images at several slider strengths from the same seed.")
    generation_flags(parser, steps=SAMPLE_STEPS, output="samples")
    parser.add_argument("--scales", default="-2,0,2", help="scales for sliders without their own (default -2,0,2)")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--seeds", default="0", help="seeds: ranges and lists, e.g. 0-3 or 0,5,9 (default 0)")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from ..parsing import parse_scales, parse_seeds, parse_slider_arg
    from ..sampling import run_sampling

    images, grid = run_sampling(
        [parse_slider_arg(text) for text in args.slider],
        parse_scales(args.scales),
        args.prompt,
        parse_seeds(args.seeds),
        settings=generation_settings(args),
    )
    print(f"wrote {len(images)} images and {grid}")
    return 0


def edit(argv: Sequence[str] | None) -> int:
    from ..config import DEFAULT_INVERSION, EDIT_GUIDANCE, EDIT_START_NOISE, EDIT_STEPS

    parser = _Parser(prog="sliders-edit",
                     description="Edit real images with sliders: invert each image, then regenerate it at each slider scale.")
    parser.add_argument("--image", action="append", required=True, help="image file to edit (repeatable)")
    generation_flags(parser, steps=EDIT_STEPS, output="edits", start_noise=EDIT_START_NOISE, fused=False,
                      guidance_help=f"classifier-free guidance (default {EDIT_GUIDANCE:g}; FLUX: its guidance "
                                    "embedding, default 3.5)")
    parser.add_argument("--scales", default="-2,0,2", help="scales for sliders without their own (default -2,0,2)")
    parser.add_argument("--prompt", action="append",
                        help="what the images show, e.g. 'photo of a person': once for all images or once per image, "
                             "in order (default empty)")
    inversion_flags(parser, f"how images are inverted (default {DEFAULT_INVERSION}; null-text is the official "
                            "notebook's)")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from ..editing import run_editing
    from ..parsing import parse_scales, parse_slider_arg

    run = run_editing(
        args.image,
        [parse_slider_arg(text) for text in args.slider],
        parse_scales(args.scales),
        prompt=args.prompt or "",
        method=args.inversion,
        null_text_iterations=args.null_text_iterations,
        settings=generation_settings(args),
    )
    print(f"wrote {len(run.images)} edited images, {run.grid} and {run.report}")
    return 0
