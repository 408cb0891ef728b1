"""Model families: everything that differs between the base models sliders works on, one module each.

A family (`base.Family`) owns what is specific to a kind of model: the diffusers pipeline class
that loads it and how to recognise it from a UNet config, a `model_index.json` or a single file's
tensor names; prompt encoding and added conditioning; how UIs name its layers in slider files; and
the defaults its users expect (resolution, start_noise, guidance). The schedule and prediction type
(epsilon, v, zero terminal SNR) come from the model's own scheduler config, read by
`sliders.models`. The layer sets of the network types and training methods are the same function
of module paths for every UNet family (`sliders.targets`). Trainer, objectives, sampling, editing,
evaluation, previews, convert and export ask the family instead of assuming SDXL.

Families here: `sdxl` (SDXL and its fine-tunes, v-prediction and few-step ones included), `sd1`,
`sd2` (SD 2.x, 512 epsilon and 768-v), `flux` (FLUX.1 dev/schnell: a flow-matching transformer; it
also overrides `denoiser`, `predict` and `target_modules`, which UNet families inherit).

To add a family:
1. Write `sliders/families/<name>.py` with a `Family` subclass that implements `claims`,
   `claims_checkpoint`, `text_encoders`, `encode_prompts`, `pipeline_prompt`, `preview_pipeline`
   (and `time_ids` if the UNet takes added conditioning), and one instance of it with its defaults.
2. Add the instance to `FAMILIES` below.
3. Add a tiny builder to `sliders/tiny.py` (`TINY_BUILDERS`) and the family to the family tests
   (`tests/test_families.py`), which run training, sampling, editing and file loading on it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .base import Defaults, Family
from .flux import FLUX
from .sd import SD1, SD2
from .sdxl import SDXL

FAMILIES: tuple[Family, ...] = (SDXL, SD1, SD2, FLUX)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)

__all__ = ["Defaults", "FAMILIES", "FAMILY_NAMES", "FLUX", "Family", "SD1", "SD2", "SDXL", "family_named", "detect_family",
           "family_of_pipe", "family_of_source", "family_of_slider", "check_family"]


def family_named(name: str, what: str = "config key 'pretrained_model.family'") -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise InputError(f"{what} is {name!r}, which is not a model family sliders knows; choose one of "
                     f"{', '.join(FAMILY_NAMES)}")


def detect_family(unet_config: Mapping[str, Any], pipeline_class: str | None = None, *, source: str = "the model") -> Family:
    """The family of a model from its UNet config (and its pipeline class when known)."""
    for family in FAMILIES:
        if family.claims(unet_config, pipeline_class):
            return family
    kind = pipeline_class or unet_config.get("_class_name") or "a model"
    raise InputError(f"{source} is {kind}, an architecture sliders does not support; give an SDXL, SD 1.x, SD 2.x or "
                     f"FLUX.1 model (or set pretrained_model.family if it is one of them)")


def family_of_pipe(pipe) -> Family:
    """The family of a loaded pipeline."""
    model = pipe.unet if hasattr(pipe, "unet") else getattr(pipe, "transformer", None)
    # The diffusers class it is (or, for a wrapper that forwards attributes, the one its config names).
    name = next((c.__name__ for c in type(pipe).__mro__ if c.__module__.startswith("diffusers.")), None)
    if name is None:
        name = dict(getattr(pipe, "config", None) or {}).get("_class_name")
    return detect_family(dict(model.config) if model is not None else {}, name)


def _safetensors_keys(path: Path) -> list[str]:
    """A `.safetensors` file's tensor names from its header, without reading any weight."""
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        if size > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(handle.read(size))
    return [key for key in header if key != "__metadata__"]


def family_of_source(source: str, *, family: str | None = None, v2: bool = False) -> Family | None:
    """The family of a base model named by a local folder or file, read from `model_index.json` and the UNet
    config, or a single file's tensor names, without loading weights. `family` (the config's override) and
    the official `v2` flag decide where given; a hub id not in the local cache gives None (known once loaded)."""
    if family:
        return family_named(family)
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            denoiser = "transformer" if "transformer" in index and "unet" not in index else "unet"
            unet = json.loads((path / denoiser / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"base model folder '{source}' has no readable model_index.json and unet/config.json "
                             f"({type(error).__name__}); give a diffusers folder") from None
        return detect_family(unet, index.get("_class_name"), source=f"base model '{source}'")
    if path.is_file():
        if v2:
            return SD2
        if path.suffix.lower() != ".safetensors":
            return None  # a pickled .ckpt is not opened before loading; its family is known once loaded
        try:
            keys = _safetensors_keys(path)
        except (OSError, ValueError, struct.error) as error:
            raise InputError(f"base model file '{source}' is not a readable .safetensors file ({error})") from None
        for candidate in FAMILIES:
            if candidate.claims_checkpoint(keys):
                return candidate
        raise InputError(f"base model file '{source}' is not an SDXL, SD 1.x, SD 2.x or FLUX.1 checkpoint (no text "
                         f"encoder this tool knows); give one of those")
    return SD2 if v2 else None


def family_of_slider(metadata: Mapping[str, str]) -> Family | None:
    """The family a slider file was made for: its `sliders_family`, else its recorded UNet config, else
    kohya's `ss_base_model_version`; None when the file says nothing (files from elsewhere)."""
    name = metadata.get("sliders_family")
    if name:
        return family_named(name, "the slider's sliders_family")
    recorded = metadata.get("sliders_unet_config")
    if recorded:
        try:
            return detect_family(json.loads(recorded))
        except (InputError, ValueError, TypeError):
            pass
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return SDXL
    if version.startswith("sd_v1"):
        return SD1
    if version.startswith("sd_v2"):
        return SD2
    if version.startswith("flux1"):
        return FLUX
    return None


def check_family(slider: str, metadata: Mapping[str, str], model_family: Family | None, model: str) -> None:
    """One line when a slider was made for another family than the base model it is given."""
    made_for = family_of_slider(metadata)
    if made_for is None or model_family is None or made_for is model_family:
        return
    raise InputError(f"slider '{slider}' was made for {made_for.label} ({made_for.name}), but base model '{model}' "
                     f"is {model_family.label} ({model_family.name}); pass a {made_for.name} base model "
                     f"with --pretrained_model")
