"""`sliders-convert`: a slider file rewritten in another key format, and the input checks both commands make.

`convert_slider` rewrites any slider file `load_slider` reads (every naming of `sliders.formats`, and
the official `.pt` sliders) as `.safetensors` in the `kohya`, `diffusers` or `peft` key format, and
`key_format_note` says where the result loads. It needs no base weights: the UNet's (FLUX: the
transformer's) layer names come from its config (`unet_config_for`), built on the meta device
(`meta_unet`). `read_checked_slider` and `check_output_file` refuse a bad input or output path before
any work; `sliders-export` uses them too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .errors import InputError
from .families import FLUX, SDXL, family_of_slider, family_of_source
from .formats import SDXL_BASE_UNET_CONFIG, check_key_format, is_flux_file
from .network import load_slider
from .slider_files import read_slider_file

logger = logging.getLogger(__name__)


def _config_of_model(name_or_path: str) -> dict[str, Any]:
    """The UNet config of a base model folder, hub id (from the local cache) or built-in name."""
    from .models import read_unet_config, resolve_model

    source = resolve_model(name_or_path)
    if Path(source).is_file():
        # A single-file checkpoint carries no diffusers config: its family's reference layout (read from
        # its tensor names; SDXL for a pickled file).
        return dict((family_of_source(source) or SDXL).unet_config)
    config = read_unet_config(source)
    if config is None and Path(source).is_dir() and family_of_source(source) is FLUX:
        config = _transformer_config(source)
    if config is None:
        raise InputError(f"could not read the UNet config of base model '{source}' (unet/config.json); check the "
                         "name or path")
    return config


def _transformer_config(folder: str) -> dict[str, Any] | None:
    """A FLUX folder's `transformer/config.json` (its layer names and shapes), None if unreadable."""
    try:
        return json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def unet_config_for(metadata: Mapping[str, str], pretrained_model: str | None,
                    keys: Sequence[str] = ()) -> dict[str, Any]:
    """The UNet (FLUX: transformer) config a slider's layer names are placed in.

    In order: the given base model, the config recorded in the file (`sliders_unet_config`), the
    base model recorded in it, else the reference model of the family the file names (kohya's
    `ss_base_model_version`), else FLUX.1-dev where the file's `keys` name FLUX layers (the official
    flux-sliders `.pt` files record nothing), else SDXL base (files from elsewhere rarely say).
    """
    if pretrained_model:
        return _config_of_model(pretrained_model)
    recorded = metadata.get("sliders_unet_config")
    if recorded:
        try:
            return dict(json.loads(recorded))
        except (json.JSONDecodeError, TypeError, ValueError):
            logger.warning("the slider's recorded UNet config is unreadable; using its base model instead")
    base = metadata.get("sliders_base_model")
    if base:
        try:
            return _config_of_model(base)
        except InputError:
            logger.warning("base model '%s' of the slider is not available here; assuming its family's reference "
                           "layout", base)
    family = family_of_slider(metadata)
    if family is not None:
        return dict(family.unet_config)
    if is_flux_file(keys):
        logger.info("the slider names FLUX layers and records no base model; assuming FLUX.1-dev's transformer")
        return dict(FLUX.unet_config)
    logger.info("the slider does not record its base model; assuming SDXL base (pass --pretrained_model otherwise)")
    return dict(SDXL_BASE_UNET_CONFIG)


def meta_unet(config: Mapping[str, Any]):
    """A UNet (FLUX: its transformer) with this config on the meta device: every layer's name and shape,
    no memory, no weights."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    model_class = FluxTransformer2DModel if FLUX.claims(config) else UNet2DConditionModel
    with torch.device("meta"):
        return model_class.from_config(dict(config))


# ---------------------------------------------------------------- checks before any work


def read_checked_slider(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slider file, refused as `sliders-sample` refuses it: unreadable, no
    UNet LoRA layers, a layer without its down or up weight, or NaN/infinite weights."""
    from .planning import check_slider_file

    path = Path(path)
    tensors, metadata = read_slider_file(path)
    check_slider_file(path, tensors, metadata)
    return tensors, metadata


def check_output_file(path: str | Path, fix: str) -> Path:
    """An output file whose folder can be made and written, checked before any work (nothing is left behind).

    A path through a file (`notes.txt/out.safetensors`), a read-only folder or an existing folder of
    that name is an InputError naming the path and `fix`.
    """
    from .runs import check_writable_folder

    path = Path(path)
    try:
        is_folder = path.is_dir()
    except OSError:
        is_folder = False
    if is_folder:
        raise InputError(f"output '{path}' is a folder; {fix}")
    check_writable_folder(path.parent, "output folder", fix)
    return path


# ---------------------------------------------------------------- key formats


def convert_slider(
    source: str | Path, target: str | Path, key_format: str, *, pretrained_model: str | None = None
) -> Path:
    """Write `source` (any readable slider file) to `target` (.safetensors) in `key_format`.

    The weights pass through unchanged (PEFT's folded `alpha / rank` aside), so the converted file
    gives the same UNet output; the source's metadata is kept. The input and the output path are
    checked before anything is built.
    """
    check_key_format(key_format, "--to")
    source, target = Path(source), Path(target)
    if target.suffix.lower() != ".safetensors":
        raise InputError(f"output '{target}' must end in .safetensors; converted sliders are never pickled")
    if target.resolve() == source.resolve():
        raise InputError(f"output '{target}' is the input file; give another output path")
    tensors, metadata = read_checked_slider(source)
    check_output_file(target, "give another output path")
    network = load_slider(source, meta_unet(unet_config_for(metadata, pretrained_model, list(tensors))), attach=False,
                          contents=(tensors, metadata))
    metadata_out = {"ss_output_name": target.stem}
    if "sliders_version" not in metadata:
        metadata_out["sliders_converted_from"] = source.name
    return network.save(target, metadata_out, key_format=key_format)


# What `sliders-convert` says of each key format it writes.
KEY_FORMAT_NOTES = {
    "kohya": "loads completely in diffusers, ComfyUI, Forge and AUTOMATIC1111",
    "diffusers": "loads completely in diffusers, ComfyUI and Forge; AUTOMATIC1111 drops SDXL's first upsampler",
    "peft": "for diffusers/PEFT only: ComfyUI and Forge drop its attention layers and AUTOMATIC1111 loads none of "
            "it; convert to kohya (--to kohya) for those",
}


# The same for FLUX.1 files (`tests/test_flux_export.py` shows the ComfyUI/Forge rules on FLUX.1-dev).
FLUX_KEY_FORMAT_NOTES = {
    "kohya": "kohya's FLUX naming on the BFL layers: loads completely in diffusers, ComfyUI and Forge",
    "diffusers": "diffusers paths behind lora_unet_ (the official flux-sliders naming): ComfyUI and Forge map none "
                 "of it; convert to kohya (--to kohya) for those",
    "peft": "transformer.<path>: loads in diffusers; ComfyUI and Forge map it too (q/k/v into the fused layers)",
}


def key_format_note(path: str | Path, key_format: str) -> str:
    """What `sliders-convert` says of a file it wrote in `key_format`, for the file's family."""
    _, metadata = read_slider_file(path)
    return (FLUX_KEY_FORMAT_NOTES if family_of_slider(metadata) is FLUX else KEY_FORMAT_NOTES)[key_format]
