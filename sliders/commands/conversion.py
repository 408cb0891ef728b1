"""Slider files for other tools: `sliders-convert` (a slider rewritten in another key format) and
`sliders-export` (a slider's start_noise switch carried into ComfyUI, AUTOMATIC1111/Forge or diffusers)."""

from __future__ import annotations

from typing import Sequence

from ..cli import _Parser, _setup_logging, add_verbose_flag, logger
from ..errors import InputError


def convert(argv: Sequence[str] | None) -> int:
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
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from ..convert import convert_slider, key_format_note

    path = convert_slider(args.input, args.output, args.to, pretrained_model=args.pretrained_model)
    print(f"wrote {path} ({args.to} key format: {key_format_note(path, args.to)})")
    return 0


def export(argv: Sequence[str] | None) -> int:
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
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    import json
    from pathlib import Path

    from ..comfyui import COMFYUI_SOURCE, comfyui_flux_workflow, comfyui_workflow
    from ..convert import check_output_file, read_checked_slider
    from ..export import check_ui, check_ui_naming, recommended, resolution_for
    from ..families import FLUX, SDXL, family_of_slider
    from ..files import write_text_atomic
    from ..formats import is_flux_file
    from ..parsing import check_steps
    from ..snippets import diffusers_snippet
    from ..webui import a1111_text, forge_flux_text

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
