"""`sliders-train` (a text slider from prompt pairs) and `sliders-train-images` (an image slider from
paired image folders): their flags as config overrides (defaults < YAML < flags), every input checked
before a model loads, and the run in one or several processes."""

from __future__ import annotations

from typing import Sequence

from ..cli import _Parser, _setup_logging, add_verbose_flag, logger
from ..errors import InputError
from .flags import add_config_flags, config_overrides

TEXT_KEYS = ("train.fused_denoising", "train.fast", "train.xk_max_steps", "train.xk_spacing",
             "train.trajectory_reuse", "train.gradient_checkpointing", "train.compile")
IMAGE_KEYS = ("data.folder_main", "data.folders", "data.scales")
IMAGE_OPTION_KEYS = ("data.captions", "train.pair_difference", "data.timestep_range")


def _training_parser(prog: str, description: str) -> _Parser:
    """The flags both training commands take."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--config", "--config_file", dest="config", help="YAML config (official keys load unchanged)")
    add_config_flags(parser, ("prompts_file", "save.name", "network.rank", "network.alpha"))
    parser.add_argument("--device", help="cpu, cuda, cuda:1, or a GPU index; default: cuda if available")
    add_config_flags(parser, ("train.iterations", "train.lr", "train.seed", "pretrained_model.name_or_path",
                              "save.path"))
    parser.add_argument("--overwrite", action="store_true",
                        help="start an earlier run of the same name again (its files are moved into replaced-<time>/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its latest checkpoint (same config and flags as before)")
    add_config_flags(parser, ("sample.every", "sample.prompts", "pretrained_model.transformer",
                              "pretrained_model.quantize", "train.with_sliders"))
    add_verbose_flag(parser)
    return parser


def train(argv: Sequence[str] | None) -> int:
    parser = _training_parser("sliders-train", "Train a text slider from prompt pairs.")
    parser.add_argument("--attributes", help="preservation attributes, e.g. 'male, female'")
    add_config_flags(parser, TEXT_KEYS)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from ..config import load_config
    from ..models import parse_device
    from ..prompts import expand_attributes, load_prompts, parse_attributes
    from ..distributed import start as start_processes
    from ..training_checks import check_resolutions, check_training_inputs
    from ..trainer import open_run, text_prompts_record, text_resolutions, train_text_slider

    config = load_config(args.config, config_overrides(parser, args))
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


def train_images(argv: Sequence[str] | None) -> int:
    parser = _training_parser("sliders-train-images", "Train an image slider from paired image folders.")
    add_config_flags(parser, IMAGE_KEYS)
    parser.add_argument("--resolution", type=int, help="training resolution (default: the prompt entry's, else 512)")
    add_config_flags(parser, IMAGE_OPTION_KEYS)
    parser.add_argument("--attributes", help="accepted for compatibility with the official script; image sliders ignore it")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from ..config import load_config
    from ..data import scan_pairs
    from ..models import parse_device
    from ..distributed import start as start_processes
    from ..training_checks import check_resolutions, check_training_inputs
    from ..trainer import image_prompts_record, open_run, train_image_slider

    config = load_config(args.config, config_overrides(parser, args))
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

    from ..prompts import load_prompts, make_entry

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
