"""Slider files: reading and writing them, and what they recommend where training recorded nothing.

A slider file is a `.safetensors` file of LoRA tensors with string metadata; the official code's
`.pt` sliders (a plain state dict) are read too, always with `torch.load(weights_only=True)`.
`write_slider_file` writes atomically, `read_slider_file` gives the tensors and metadata or one
InputError, and `unfuse_flux` turns a FLUX file's kohya fused-layer keys into one key set per
layer. The key namings themselves are `sliders.formats`'; rebuilding a slider onto a model from a
file is `sliders.network.load_slider`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import InputError
from .families import SDXL, family_of_slider
from .families.flux import split_kohya as flux_split_kohya
from .files import atomic_tensor_path
from .lora import lora_name

# What a slider file recommends to the UIs that use it, where training recorded nothing else: the
# paper's SDEdit-style switch (`config.DEFAULT_START_NOISE`) and
# the scales sampled.
DEFAULT_SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0)
# Files read as a torch pickle, always with weights_only=True: no code in them runs.
TORCH_SUFFIXES = (".pt", ".ckpt", ".pth")


def write_slider_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    """Write `tensors` with `metadata` (values other than strings as JSON) to `path` atomically: a
    temporary file renamed into place, so a failed write leaves an earlier file as it was."""
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_tensor_path(path) as temporary:
        save_file(tensors, temporary, metadata=meta)
    return path


def read_slider_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slider file.

    `.safetensors` files, and the official code's `.pt` sliders (a torch.save of the network's
    state_dict), read with `torch.load(weights_only=True)` so that no code in the file runs; those
    have no metadata. Anything else, or an unreadable file, is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"slider file '{path}' does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return _read_torch_file(path), {}
    if suffix != ".safetensors":
        raise InputError(
            f"slider file '{path}' is not .safetensors (nor a {'/'.join(TORCH_SUFFIXES)} state dict); "
            "give a slider file in one of these"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"slider file '{path}' is not a readable safetensors file ({error}); re-save or re-train it") from None
    return tensors, metadata


def recorded_start_noise(metadata: Mapping[str, str]) -> float:
    """The start_noise a slider file recommends: its recorded `sliders_start_noise`, else its family's
    default (`sliders.families`; SDXL's for a file that names no family). An unreadable record is an
    InputError: pass --start_noise."""
    text = metadata.get("sliders_start_noise")
    if text is None:
        return float((family_of_slider(metadata) or SDXL).defaults.start_noise)
    try:
        return float(text)
    except ValueError:
        raise InputError(f"the slider's sliders_start_noise {text!r} is not a number; pass --start_noise") from None


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"slider file '{path}' is not .safetensors and torch.load(weights_only=True) cannot read it ({reason}); "
            "only plain tensor state dicts load this way, never pickled code"
        ) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"slider file '{path}' holds no state dict of tensors; save the network's state_dict() instead")
    return {str(k): v for k, v in data.items()}


def unfuse_flux(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], model: nn.Module, path: Path
                ) -> dict[str, torch.Tensor]:
    """A FLUX file's kohya fused-layer keys (`lora_unet_double_blocks_0_img_attn_qkv`) as one diffusers-path
    key set per part (`sliders.families.flux.split_kohya`); other keys are kept as they are."""
    fused = [k for k in tensors if k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))]
    if not fused:
        return tensors
    try:
        recorded = json.loads(metadata.get("sliders_fused_parts", "null"))
    except json.JSONDecodeError:
        recorded = None
    parts = flux_split_kohya(tensors, model, recorded)
    known = {f"{part['key']}.{leaf}" for part in parts.values() for leaf in ("lora_down.weight", "lora_up.weight", "alpha")}
    unknown = [k for k in fused if k not in known]
    if unknown:
        raise InputError(f"slider file '{path}' (kohya FLUX naming) has key '{unknown[0]}', which this FLUX model "
                         "lacks or sliders does not adapt; load it with the base model it was trained on")
    out = {k: v for k, v in tensors.items() if k not in set(fused)}
    for dotted, part in parts.items():
        key = lora_name(dotted)
        out[f"{key}.lora_down.weight"] = part["down"]
        out[f"{key}.lora_up.weight"] = part["up"]
        out[f"{key}.alpha"] = torch.tensor(part["alpha"])
    return out
