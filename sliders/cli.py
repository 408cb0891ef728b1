"""Command-line entry points: `sliders-train`, `sliders-train-images`, `sliders-sample`, `sliders-eval`,
`sliders-edit`, `sliders-convert`, `sliders-export`.

The only module that reads argv, prints, or exits. It turns flags into config overrides
(defaults < YAML < flags), validates every input before a model loads, and turns an `InputError`
into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from .errors import InputError, Interrupted, OutputError, PeerFailed, Terminated, TrainingError

logger = logging.getLogger("sliders")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2."""

    # Flags whose values often start with '-' ("--scales -2,0,2"), which argparse would read as a flag.
    NEGATIVE_VALUE_FLAGS = ("--scales",)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        joined = []
        i = 0
        while i < len(argv):
            if argv[i] in self.NEGATIVE_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
                joined.append(f"{argv[i]}={argv[i + 1]}")
                i += 2
            else:
                joined.append(argv[i])
                i += 1
        return super().parse_args(joined, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)


def _common_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "--config_file", dest="config", help="YAML config (official keys load unchanged)")
    parser.add_argument("--prompts_file", help="YAML list of prompt entries (overrides prompts_file in the config)")
    parser.add_argument("--name", help="slider name (save.name)")
    parser.add_argument("--rank", type=int, help="LoRA rank (network.rank)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (network.alpha)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU index; default: cuda if available")
    parser.add_argument("--iterations", type=int, help="training steps (train.iterations)")
    parser.add_argument("--lr", type=float, help="learning rate (train.lr)")
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument("--pretrained_model", help="SDXL diffusers folder, hub id or single file")
    parser.add_argument("--output_dir", help="where run folders go (save.path)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start an earlier run of the same name again (its files are moved into replaced-<time>/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its latest checkpoint (same config and flags as before)")
    parser.add_argument("--sample_every", type=int, metavar="N",
                        help="preview grid every N steps and at the end, into samples/ (sample.every; 0: off)")
    parser.add_argument("--sample_prompt", action="append", metavar="TEXT",
                        help="preview prompt (sample.prompts; repeatable; default: the slider's own)")
    _base_model_flags(parser, quantize=None)
    parser.add_argument("--with_slider", action="append", metavar="FILE[:SCALES]",
                        help="another slider present while this one trains, at one of SCALES per step (default 1); "
                             "repeatable (train.with_sliders)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "prompts_file": args.prompts_file,
        "save.name": args.name,
        "network.rank": args.rank,
        "network.alpha": args.alpha,
        "train.iterations": args.iterations,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "pretrained_model.name_or_path": args.pretrained_model,
        "save.path": args.output_dir,
        "sample.every": args.sample_every,
        "sample.prompts": args.sample_prompt,
        "train.with_sliders": args.with_slider,
        "pretrained_model.transformer": args.transformer,
        "pretrained_model.quantize": args.quantize,
    }


def _setup_logging(verbose: bool) -> None:
    """Our messages always; what a dependency logs or warns only with -v.

    Called before any heavy import, so what a dependency logs while it is imported (bitsandbytes'
    kernel notices, say) is already covered. The root logger's level is what every dependency's
    logger inherits; ours sets its own level, so it alone is heard. Warnings are routed through
    logging (the `py.warnings` logger), so the same level decides for them.
    """
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    logging.captureWarnings(True)
    logger.setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        # diffusers and transformers keep a level and a handler of their own: hand their records to
        # the root logger instead, at its level.
        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity(logging.NOTSET)
            library.disable_default_handler()
            library.enable_propagation()
            library.disable_progress_bar()  # "Loading weights" and pipeline-component bars


def _speaks() -> bool:
    """Whether this process prints: not one of the other processes of `accelerate launch` (its RANK is
    set by the launcher; `distributed.speaks`, without importing torch before logging is set up)."""
    return int(os.environ.get("RANK", "0")) == 0


def _terminate(signum, frame) -> None:
    raise Terminated()


def _run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command; every way it can end is one line on stderr and an exit code.

    SIGTERM is raised as `Terminated` (a KeyboardInterrupt) so that it keeps work as Ctrl-C does.
    """
    previous = None
    if not _speaks():
        # A process other than the main one of `accelerate launch`: the main one prints, also the error
        # of another process (`distributed.Processes.check`).
        sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv)
    except PeerFailed:
        return 1
    except InputError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except TrainingError as error:
        sys.stderr.write(f"training stopped: {error}\n")
        return 1
    except OutputError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    except Interrupted as error:
        sys.stderr.write(f"interrupted: {error}\n")
        return error.exit_code
    except Terminated:
        sys.stderr.write("terminated\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "sliders.distributed" in sys.modules:  # only a command that set up processes has any to close
            sys.modules["sliders.distributed"].finish()


def parse_names(text: str, what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError(f"{what} is empty; give names separated by commas")
    return names


def _train(argv: Sequence[str] | None) -> int:
    parser = _Parser(prog="sliders-train", description="Train a text slider from prompt pairs.")
    _common_training_flags(parser)
    parser.add_argument("--attributes", help="preservation attributes, e.g. 'male, female'")
    parser.add_argument(
        "--fused_denoising",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold the slider into the UNet weights for the no-grad partial denoising (train.fused_denoising)",
    )
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="the recommended fast option (train.fast): each step's x_k in at most 4 UNet calls")
    parser.add_argument("--xk_max_steps", type=int,
                        help="reach each step's starting latents in at most this many UNet calls (train.xk_max_steps)")
    parser.add_argument("--xk_spacing", choices=("late", "even"),
                        help="how those calls are spaced: shorter towards x_k (late, default) or equal (train.xk_spacing)")
    parser.add_argument("--trajectory_reuse", type=int,
                        help="one partial-denoising trajectory supplies this many steps (train.trajectory_reuse)")
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute UNet activations in the slider's backward (train.gradient_checkpointing)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the UNet for the no-grad partial denoising and frozen calls (train.compile)")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from .config import load_config
    from .models import parse_device
    from .prompts import expand_attributes, load_prompts, parse_attributes
    from .distributed import start as start_processes
    from .training_checks import check_resolutions, check_training_inputs
    from .trainer import open_run, text_prompts_record, text_resolutions, train_text_slider

    config = load_config(args.config, {
        **_overrides(args),
        "train.fused_denoising": args.fused_denoising,
        "train.fast": args.fast,
        "train.xk_max_steps": args.xk_max_steps,
        "train.xk_spacing": args.xk_spacing,
        "train.trajectory_reuse": args.trajectory_reuse,
        "train.gradient_checkpointing": args.gradient_checkpointing,
        "train.compile": args.compile,
    })
    if not config.prompts_file:
        raise InputError("no prompts file; pass --prompts_file or set prompts_file in the config")
    entries = expand_attributes(load_prompts(config.prompts_file), parse_attributes(args.attributes))
    device = parse_device(args.device)
    check_training_inputs(config)
    check_resolutions(config, text_resolutions(entries))
    processes = start_processes(device)
    with processes.guard():  # an error in one process stops every process (docs/distributed.md)
        run = open_run(config, text_prompts_record(entries), overwrite=args.overwrite, resume=args.resume) \
            if processes.is_main else None
        try:
            result = train_text_slider(config, entries, processes.device, run, processes)
        finally:
            if run is not None:
                run.release()
    print(f"saved slider: {result.last}")
    return 0


def _train_images(argv: Sequence[str] | None) -> int:
    parser = _Parser(prog="sliders-train-images", description="Train an image slider from paired image folders.")
    _common_training_flags(parser)
    parser.add_argument("--folder_main", help="folder holding the image sub-folders (default: current directory)")
    parser.add_argument("--folders", help="sub-folders, comma separated, e.g. 'low,high'")
    parser.add_argument("--scales", help="one scale per folder, e.g. '-1,1' or '0.67,1,1.3,2'")
    parser.add_argument("--resolution", type=int, help="training resolution (default: the prompt entry's, else 512)")
    parser.add_argument(
        "--captions",
        action="store_true",
        default=None,
        help="condition each pair on its caption, folder_main/<name>.txt (before the entry's prompt)",
    )
    parser.add_argument("--pair_difference", type=float, metavar="WEIGHT",
                        help="add WEIGHT x the loss on two folders' prediction difference (train.pair_difference; default 0)")
    parser.add_argument("--timestep_range", metavar="LOW,HIGH",
                        help="train only at timesteps LOW..HIGH, e.g. 200,999 (data.timestep_range; default: all)")
    parser.add_argument("--attributes", help="accepted for compatibility with the official script; image sliders ignore it")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from .config import load_config
    from .data import scan_pairs
    from .models import parse_device
    from .distributed import start as start_processes
    from .parsing import parse_scales
    from .training_checks import check_resolutions, check_training_inputs
    from .trainer import image_prompts_record, open_run, train_image_slider

    overrides = _overrides(args)
    overrides["data.folder_main"] = args.folder_main
    if args.folders is not None:
        overrides["data.folders"] = parse_names(args.folders, "--folders")
    if args.scales is not None:
        overrides["data.scales"] = list(parse_scales(args.scales))
    overrides["data.captions"] = args.captions
    overrides["data.timestep_range"] = args.timestep_range
    overrides["train.pair_difference"] = args.pair_difference
    config = load_config(args.config, overrides)
    if args.attributes:
        logger.warning("--attributes has no effect on image sliders")
    entry = _image_entry(config.prompts_file, args.resolution)
    if not config.data.folders:
        raise InputError("no image folders; pass --folders a,b (and --scales) or set data.folders in the config")
    pairs = scan_pairs(config.data.folder_main, config.data.folders, config.data.scales, config.data.captions)
    device = parse_device(args.device)
    check_training_inputs(config)
    check_resolutions(config, [("--resolution" if args.resolution is not None else "prompts file key 'resolution'",
                                entry.resolution)])
    processes = start_processes(device)
    with processes.guard():  # an error in one process stops every process (docs/distributed.md)
        run = open_run(config, image_prompts_record(pairs, entry), overwrite=args.overwrite, resume=args.resume) \
            if processes.is_main else None
        try:
            result = train_image_slider(config, pairs, entry, processes.device, run, processes)
        finally:
            if run is not None:
                run.release()
    print(f"saved slider: {result.last}")
    return 0


def _image_entry(prompts_file: str | None, resolution: int | None):
    """The one prompt entry of an image slider: from the prompts file, else empty prompts."""
    import dataclasses

    from .prompts import load_prompts, make_entry

    raw: dict = {"target": ""}
    if prompts_file:
        entries = load_prompts(prompts_file)
        if len(entries) != 1:
            raise InputError(
                f"prompts file '{prompts_file}' has {len(entries)} entries; an image slider takes exactly one"
            )
        raw = dataclasses.asdict(entries[0])
    if resolution is not None:
        raw["resolution"] = resolution
    return make_entry(raw, "image slider prompt entry")


def _generation_flags(parser: argparse.ArgumentParser, *, steps: int, output: str, start_noise: int | None = None,
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
    _base_model_flags(parser)
    parser.add_argument("--resolution", type=int, help="image size (default: the slider's training resolution)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="model dtype")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU index")
    if fused:
        parser.add_argument("--fused", action="store_true",
                            help="fold the sliders into the UNet weights while they are on (faster; same images up to rounding)")
    parser.add_argument("--output", default=output, help=f"output folder (default: {output})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")


def _base_model_flags(parser: argparse.ArgumentParser, quantize: str | None = "none") -> None:
    """FLUX.1's base-model options, as training's `pretrained_model.transformer` and `.quantize` keys
    (`quantize` None: the config's value unless the flag is given)."""
    from .config import QUANTIZE_MODES

    parser.add_argument("--transformer", metavar="FILE",
                        help="FLUX.1: a single-file transformer in BFL's naming (flux1-dev.safetensors) in place "
                             "of the base model's; the rest comes from the base model (pretrained_model.transformer)")
    parser.add_argument("--quantize", default=quantize, choices=QUANTIZE_MODES, type=str.lower,
                        help="FLUX.1: the transformer's blocks in 8bit (LLM.int8) or 4bit (NF4) with bitsandbytes "
                             f"(default {quantize or 'the config value, none'}; pretrained_model.quantize)")


def _generation_kwargs(args: argparse.Namespace) -> dict:
    if getattr(args, "fused", False) and args.precision != "fp32":
        raise InputError(
            f"--fused folds the sliders into the UNet weights, which in {args.precision} would round the sliders' "
            "change away; use --fused with --precision fp32, or leave --fused off"
        )
    return {
        "output": args.output,
        "start_noise": args.start_noise,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "pretrained_model": args.pretrained_model,
        "device": args.device,
        "precision": args.precision,
        "resolution": args.resolution,
        "negative_prompt": args.negative_prompt,
        "transformer": args.transformer,
        "quantize": args.quantize,
        **({"fused": args.fused} if hasattr(args, "fused") else {}),
    }


def _sample(argv: Sequence[str] | None) -> int:
    from .config import SAMPLE_STEPS

    parser = _Parser(prog="sliders-sample", description="Images at several slider strengths from the same seed.")
    _generation_flags(parser, steps=SAMPLE_STEPS, output="samples")
    parser.add_argument("--scales", default="-2,0,2", help="scales for sliders without their own (default -2,0,2)")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--seeds", default="0", help="seeds: ranges and lists, e.g. 0-3 or 0,5,9 (default 0)")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from .parsing import parse_scales, parse_seeds, parse_slider_arg
    from .sampling import run_sampling

    images, grid = run_sampling(
        [parse_slider_arg(text) for text in args.slider],
        parse_scales(args.scales),
        args.prompt,
        parse_seeds(args.seeds),
        **_generation_kwargs(args),
    )
    print(f"wrote {len(images)} images and {grid}")
    return 0


def _eval(argv: Sequence[str] | None) -> int:
    from .config import DEFAULT_INVERSION, EVAL_STEPS, INVERSIONS, NULL_TEXT_ITERATIONS

    parser = _Parser(prog="sliders-eval", description="Measure sliders: attribute per scale, preservation, baseline.")
    _generation_flags(parser, steps=EVAL_STEPS, output="evaluation", start_noise=None, slider_required=False)
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
    edits.add_argument("--inversion", default=DEFAULT_INVERSION, choices=INVERSIONS,
                       help=f"how the scenes are inverted (default {DEFAULT_INVERSION})")
    edits.add_argument("--null_text_iterations", type=int, default=NULL_TEXT_ITERATIONS,
                       help=f"null-text optimisation steps per timestep (default {NULL_TEXT_ITERATIONS})")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    if args.edit_results is not None:
        return _eval_edit_results(args)
    if not args.slider:
        raise InputError("no slider; pass --slider FILE.safetensors (repeatable), or --edit_results FOLDER")
    if args.edit_scenes is not None:
        return _eval_edits(args)
    from .evaluation import read_prompt_lines, run_evaluation

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
        **_generation_kwargs(args),
    )
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    return 0


def _eval_edits(args: argparse.Namespace) -> int:
    """sliders-eval --edit_scenes N: the edit protocol (`evaluation.edits`)."""
    from .config import EDIT_START_NOISE

    given = [flag for flag, value in (("--prompt", args.prompt), ("--prompts_file", args.prompts_file),
                                      ("--baseline_prompts_file", args.baseline_prompts_file)) if value]
    if given:
        raise InputError(f"--edit_scenes takes each scene's caption as its prompt; drop {' and '.join(given)} "
                         "(edit the captions with --baseline_replace)")
    if args.fused:
        raise InputError("--fused is for generated images; drop it with --edit_scenes")
    if args.start_noise is None:
        args.start_noise = EDIT_START_NOISE

    from .evaluation.edits import run_edit_evaluation

    kwargs = _generation_kwargs(args)
    kwargs.pop("fused")
    paths = run_edit_evaluation(
        args.slider, args.scales, scenes=args.edit_scenes, scene_seed=args.scene_seed,
        scene_style=args.scene_style, method=args.inversion,
        null_text_iterations=args.null_text_iterations, measurer=args.measurer, target=args.target,
        measurer_args=args.measurer_arg, baseline_replace=args.baseline_replace, images=args.save_images, **kwargs,
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
    from .evaluation.edit_results import run_edit_results_evaluation

    paths = run_edit_results_evaluation(args.edit_results, output=args.output, measurer=args.measurer,
                                        target=args.target, measurer_args=args.measurer_arg, device=args.device)
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    return 0


def _edit(argv: Sequence[str] | None) -> int:
    from .config import DEFAULT_INVERSION, EDIT_GUIDANCE, EDIT_START_NOISE, EDIT_STEPS, INVERSIONS, NULL_TEXT_ITERATIONS

    parser = _Parser(prog="sliders-edit",
                     description="Edit real images with sliders: invert each image, then regenerate it at each slider scale.")
    parser.add_argument("--image", action="append", required=True, help="image file to edit (repeatable)")
    _generation_flags(parser, steps=EDIT_STEPS, output="edits", start_noise=EDIT_START_NOISE, fused=False,
                      guidance_help=f"classifier-free guidance (default {EDIT_GUIDANCE:g}; FLUX: its guidance "
                                    "embedding, default 3.5)")
    parser.add_argument("--scales", default="-2,0,2", help="scales for sliders without their own (default -2,0,2)")
    parser.add_argument("--prompt", action="append",
                        help="what the images show, e.g. 'photo of a person': once for all images or once per image, "
                             "in order (default empty)")
    parser.add_argument("--inversion", default=DEFAULT_INVERSION, choices=INVERSIONS,
                        help=f"how images are inverted (default {DEFAULT_INVERSION}; null-text is the official notebook's)")
    parser.add_argument("--null_text_iterations", type=int, default=NULL_TEXT_ITERATIONS,
                        help=f"null-text optimisation steps per timestep (default {NULL_TEXT_ITERATIONS})")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from .editing import run_editing
    from .parsing import parse_scales, parse_slider_arg

    run = run_editing(
        args.image,
        [parse_slider_arg(text) for text in args.slider],
        parse_scales(args.scales),
        prompt=args.prompt or "",
        method=args.inversion,
        null_text_iterations=args.null_text_iterations,
        **_generation_kwargs(args),
    )
    print(f"wrote {len(run.images)} edited images, {run.grid} and {run.report}")
    return 0


def edit_main(argv: Sequence[str] | None = None) -> int:
    return _run(_edit, argv)


def console_edit() -> None:
    sys.exit(edit_main())


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run(_train, argv)


def train_images_main(argv: Sequence[str] | None = None) -> int:
    return _run(_train_images, argv)


def sample_main(argv: Sequence[str] | None = None) -> int:
    return _run(_sample, argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    return _run(_eval, argv)


def console_train() -> None:
    sys.exit(train_main())


def console_train_images() -> None:
    sys.exit(train_images_main())


def console_sample() -> None:
    sys.exit(sample_main())


def console_eval() -> None:
    sys.exit(eval_main())


def _convert(argv: Sequence[str] | None) -> int:
    parser = _Parser(
        prog="sliders-convert",
        description="Rewrite a slider file (any naming, or an official .pt slider) as .safetensors in another key format.",
    )
    parser.add_argument("input", help="slider file: .safetensors (kohya, diffusers or PEFT naming) or an official .pt")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--to", default="kohya", help="key format: kohya (default; loads in A1111, Forge, ComfyUI, "
                        "diffusers), diffusers (lora_unet_down_blocks_...), peft (unet.*.lora_A/B; diffusers/PEFT only)")
    parser.add_argument("--pretrained_model",
                        help="base model whose UNet layout places the layer names (default: the one the file records, else SDXL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from .convert import convert_slider, key_format_note

    path = convert_slider(args.input, args.output, args.to, pretrained_model=args.pretrained_model)
    print(f"wrote {path} ({args.to} key format: {key_format_note(path, args.to)})")
    return 0


def _export(argv: Sequence[str] | None) -> int:
    parser = _Parser(
        prog="sliders-export",
        description="Carry a slider's start_noise switch into ComfyUI, AUTOMATIC1111/Forge or diffusers.",
    )
    parser.add_argument("slider", help="slider file")
    parser.add_argument("--ui", required=True,
                        help="comfyui (writes a workflow JSON), a1111, forge or diffusers (print); FLUX: not a1111")
    parser.add_argument("--scale", type=float, help="slider strength once on (default: the largest recorded scale)")
    parser.add_argument("--start_noise", type=float,
                        help="slider off while the timestep is above this (default: recorded, else its family's)")
    parser.add_argument("--steps", type=int, default=30,
                        help="sampling steps the workflow, syntax or snippet is made for (default 30)")
    parser.add_argument("--prompt", default="a photo of a person", help="prompt in the workflow or snippet")
    parser.add_argument("--seed", type=int, default=0, help="seed in the workflow or snippet (default 0)")
    parser.add_argument("--resolution", type=int,
                        help="image size in the workflow or snippet (default: the slider's training resolution, else 1024)")
    parser.add_argument("--checkpoint", help="ComfyUI checkpoint name (default: the slider family's base, e.g. "
                        "sd_xl_base_1.0.safetensors)")
    parser.add_argument("--pretrained_model", help="diffusers base model in the snippet (default: the recorded one)")
    parser.add_argument("--output", help="where the ComfyUI workflow goes (default: <slider>_comfyui.json beside the slider)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    import json
    from pathlib import Path

    from .comfyui import COMFYUI_SOURCE, comfyui_flux_workflow, comfyui_workflow
    from .convert import check_output_file, read_checked_slider
    from .export import check_ui, check_ui_naming, recommended, resolution_for
    from .families import FLUX, SDXL, family_of_slider
    from .files import write_text_atomic
    from .formats import is_flux_file
    from .parsing import check_steps
    from .snippets import diffusers_snippet
    from .webui import a1111_text, forge_flux_text

    ui = check_ui(args.ui)
    path = Path(args.slider)
    if path.suffix.lower() != ".safetensors" and path.is_file():
        raise InputError(f"'{path}' is not .safetensors, which UIs load; convert it first: sliders-convert {path} "
                         f"{path.with_suffix('.safetensors')}")
    tensors, metadata = read_checked_slider(path)
    family = family_of_slider(metadata) or (FLUX if is_flux_file(tensors) else SDXL)
    if ui == "a1111" and family is FLUX:
        raise InputError(f"'{path}' is a FLUX.1 slider and AUTOMATIC1111 has no FLUX.1; use --ui forge, comfyui or "
                         "diffusers")
    check_ui_naming(path, tensors, metadata, ui)
    if ui == "a1111" and any(key.startswith("lora_unet_up_blocks_") for key in tensors):
        logger.warning("this file has diffusers-path names, of which AUTOMATIC1111 drops up_blocks.0's upsampler; "
                       "sliders-convert it (--to kohya) for a complete load")
    start_noise, scale = recommended(metadata, args.start_noise, args.scale)
    steps = check_steps(args.steps)
    resolution = resolution_for(metadata, path, args.resolution)
    if ui == "comfyui":
        output = Path(args.output) if args.output else path.with_name(f"{path.stem}_comfyui.json")
        check_output_file(output, "choose another --output")
        if family is FLUX:
            workflow = comfyui_flux_workflow(path.name, scale, start_noise, transformer=args.checkpoint or
                                             family.comfyui_checkpoint, prompt=args.prompt, steps=steps,
                                             guidance=family.defaults.guidance_scale, seed=args.seed,
                                             width=resolution, height=resolution)
        else:
            workflow = comfyui_workflow(path.name, scale, start_noise,
                                        checkpoint=args.checkpoint or family.comfyui_checkpoint, prompt=args.prompt,
                                        steps=steps, seed=args.seed, width=resolution, height=resolution)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, json.dumps(workflow, indent=2) + "\n")
        kind = "FLUX.1 " if family is FLUX else ""
        scheduler = "simple, ModelSamplingFlux at the image size" if family is FLUX else "normal"
        print(f"wrote {output} ({kind}ComfyUI API-format workflow, {steps} steps, sampler euler, scheduler {scheduler}; "
              f"inputs as in {COMFYUI_SOURCE}; put {path.name} in models/loras; queue it as is: its start_percent is "
              "exact)")
    elif ui == "forge" and family is FLUX:
        print(forge_flux_text(path.stem, scale, start_noise, steps))
    elif ui in ("a1111", "forge"):
        print(a1111_text(path.stem, scale, start_noise, steps))
    else:
        model = args.pretrained_model or metadata.get("sliders_base_model") or family.hub_id
        print(diffusers_snippet(str(path.resolve()), scale, start_noise, model=model, prompt=args.prompt, steps=steps,
                                seed=args.seed, height=resolution, width=resolution,
                                guidance_scale=family.defaults.guidance_scale, pipeline_class=family.pipeline_class),
              end="")
    return 0


def convert_main(argv: Sequence[str] | None = None) -> int:
    return _run(_convert, argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run(_export, argv)


def console_convert() -> None:
    sys.exit(convert_main())


def console_export() -> None:
    sys.exit(export_main())
