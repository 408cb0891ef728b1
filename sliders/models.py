"""Model loading: load a model of any family (the diffusion maths is `diffusion.py`, quantization `quantize.py`).

This is the only module that calls `from_pretrained`/`from_single_file`, and `load_pipeline` the
one door every command's base model comes through: `injected_loader` puts another loader behind it
(the tests' tiny model, or a loader that refuses). Which pipeline class and which text encoders a
model has is its family's (`sliders.families`). Every dimension (latent channels, VAE factor,
time-embedding sizes, projection dims) is read from the model's configs, so the built-in tiny
model and real SDXL run through exactly the same code. No slider logic here. The names of `diffusion`
and `quantize` stay importable from here.
"""

from __future__ import annotations

import logging
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from diffusers import DiffusionPipeline

from .config import BUILTIN_MODEL, SHAPES_FLUX_MODEL, SHAPES_SD1_MODEL
from .errors import InputError

# Re-exported so every name stays importable from sliders.models. From .diffusion: SIGMA_SCHEDULERS,
# Conditioning, conditioning, denoise_jumps, denoise_states, denoise_to, ddim_update, encode_prompts,
# guided_noise, jump_plan, make_scheduler, model_input, predict_noise, prediction_of, time_ids,
# training_timestep, vae_factor. From .quantize: QUANTIZED_BLOCKS, check_quantize, quantize_denoiser,
# quantized_linear.
from .diffusion import (  # noqa: F401
    SIGMA_SCHEDULERS,
    Conditioning,
    _cat,
    conditioning,
    ddim_update,
    denoise_jumps,
    denoise_states,
    denoise_to,
    encode_prompts,
    guided_noise,
    jump_plan,
    make_scheduler,
    model_input,
    predict_noise,
    prediction_of,
    time_ids,
    training_timestep,
    vae_factor,
)
from .quantize import QUANTIZED_BLOCKS, _quantized_failure, check_quantize, quantize_denoiser, quantized_linear  # noqa: F401

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def parse_device(value: str | int | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', or an integer GPU index as in the official scripts; None picks CUDA if present."""
    if value is None or value == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(value).strip()
    if text.isdigit():
        text = f"cuda:{text}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device {value!r} is not a device; use cpu, cuda, cuda:1 or a GPU index") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {value!r} is not a device sliders runs on; use cpu, cuda, cuda:1, mps or a GPU index")
    if device.type == "cpu" and device.index not in (None, 0):
        raise InputError(f"--device {value!r}: there is one CPU device; use --device cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {value!r} asks for CUDA, but no CUDA GPU is available here; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {value!r} asks for GPU {device.index}, but this machine has {count} "
                             f"(cuda:0 to cuda:{count - 1}); pick one of them")
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {value!r} asks for Apple's MPS, which is not available here; use --device cpu")
        if device.index not in (None, 0):
            raise InputError(f"--device {value!r}: there is one MPS device; use --device mps")
    return device


SHAPES_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "shapes-sdxl"
# The same world, model and recipe with SD 1.x's architecture (one text encoder, no added
# conditioning), sharing the SDXL one's autoencoder.
SHAPES_SD1_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "shapes-sd1"
# And with FLUX.1's (a flow-matching transformer with CLIP and T5 text encoders), on the same autoencoder.
SHAPES_FLUX_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "shapes-flux"
SHAPES_MODELS = {BUILTIN_MODEL: SHAPES_MODEL_DIR, SHAPES_SD1_MODEL: SHAPES_SD1_MODEL_DIR,
                 SHAPES_FLUX_MODEL: SHAPES_FLUX_MODEL_DIR}


def resolve_model(name_or_path: str) -> str:
    """Built-in model names become local folders; anything else is kept.

    `builtin:shapes` is the shapes-world model shipped with the package (`builtin:shapes-sd1` and
    `builtin:shapes-flux`: its SD 1.x- and FLUX.1-architecture twins); `builtin:tiny-sdxl`,
    `builtin:tiny-sdxl-vpred`, `builtin:tiny-sd1` and `builtin:tiny-sd2v` are random tiny models built on
    first use (`sliders.tiny`).
    """
    if name_or_path in SHAPES_MODELS:
        return str(SHAPES_MODELS[name_or_path])
    if name_or_path.startswith("builtin:"):
        from .tiny import TINY_BUILDERS, ensure_tiny_model

        kind = name_or_path[len("builtin:"):]
        if kind in TINY_BUILDERS:
            return str(ensure_tiny_model(kind=kind))
        names = ", ".join([*SHAPES_MODELS] + [f"builtin:{k}" for k in TINY_BUILDERS])
        raise InputError(f"base model '{name_or_path}' is not a built-in model; built-in ones are {names}")
    return name_or_path


# The loader standing in for `load_pipeline` inside an `injected_loader` block; None loads for real.
_injected_loader: Callable[..., Any] | None = None


@contextmanager
def injected_loader(loader: Callable[..., Any] | None) -> Iterator[None]:
    """Within the block every `load_pipeline` call (training, sampling, editing and evaluation load
    their base model through it) returns `loader(name_or_path, dtype, device, family=..., v2=...,
    transformer=...)` instead: how tests put the tiny model, a recorder or a loader that refuses in
    the model's place, in one place for every command. `loader` may itself call `load_pipeline` for
    the real load (the injection is off while it runs). None loads for real; on exit the loader in
    place before the block is back."""
    global _injected_loader
    previous, _injected_loader = _injected_loader, loader
    try:
        yield
    finally:
        _injected_loader = previous


def load_pipeline(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", *,
    family: str | None = None, v2: bool = False, transformer: str | None = None,
):
    """A pipeline from a diffusers folder, a hub id, or one `.safetensors`/`.ckpt` file, of the family
    `family` names, else the one its files show (`sliders.families.family_of_source`; the official `v2`
    flag means SD 2.x). A model of no supported family is one line. Inside an `injected_loader` block,
    whatever that loader returns.

    `transformer` (FLUX.1 only): a single-file transformer in BFL's naming (`flux1-dev.safetensors`)
    that replaces the folder's or hub id's; everything else, its config included, comes from there."""
    if _injected_loader is not None:
        loader = _injected_loader
        with injected_loader(None):
            return loader(name_or_path, dtype, device, family=family, v2=v2, transformer=transformer)
    from .families import FLUX, family_of_pipe, family_of_source

    source = resolve_model(name_or_path)
    path = Path(source).expanduser()
    looks_local = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise InputError(f"base model '{source}' does not exist; give a diffusers folder, a .safetensors file or a hub id")
    if path.is_file() and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise InputError(f"base model file '{source}' must be .safetensors or .ckpt")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise InputError(f"base model folder '{source}' has no model_index.json; give a diffusers folder")
    known = family_of_source(source, family=family, v2=v2)
    if known is FLUX and path.is_file():
        raise InputError(f"base model file '{source}' is a FLUX.1 checkpoint, which holds the transformer only; set "
                         "pretrained_model.name_or_path to a FLUX.1 diffusers folder or hub id (black-forest-labs/"
                         f"FLUX.1-dev) and pretrained_model.transformer to '{source}'")
    components = {}
    if transformer:
        if path.is_file() or (known is not None and known is not FLUX):
            kind = "a single file" if known is None else known.label
            raise InputError(f"pretrained_model.transformer replaces a FLUX.1 transformer, but base model '{source}' is "
                             f"{kind}; remove the key or give a FLUX.1 diffusers folder or hub id")
        components["transformer"] = load_flux_transformer(transformer, source, dtype)
    if known is None and path.is_file():
        from .families import SDXL

        known = SDXL  # a pickled single file is not opened before loading: SDXL, our target, unless told
    pipeline_class = known.pipeline_type() if known is not None else DiffusionPipeline
    try:
        if path.is_file():
            pipe = pipeline_class.from_single_file(str(path), dtype=dtype)
        else:
            pipe = pipeline_class.from_pretrained(str(path) if path.is_dir() else source, dtype=dtype, **components)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"could not load base model '{source}': {first}; check the name, path or network") from None
    if known is None:
        loaded = family_of_pipe(pipe)  # a hub model of an unsupported kind is refused here
        if transformer and loaded is not FLUX:
            raise InputError(f"pretrained_model.transformer replaces a FLUX.1 transformer, but base model '{source}' is "
                             f"{loaded.label}; remove the key or give a FLUX.1 folder or hub id")
    return pipe.to(device)


def check_transformer_file(file: str, option: str = "pretrained_model.transformer") -> Path:
    """The path of `pretrained_model.transformer` (`option`: how the user gave it, e.g. `--transformer`)
    if it is a readable `.safetensors` file whose tensor names (its header only) are a FLUX.1
    transformer's in BFL's naming; else one line."""
    from .families import FLUX, _safetensors_keys

    path = Path(file).expanduser()
    if not path.is_file():
        raise InputError(f"{option} '{file}' does not exist; give a FLUX.1 transformer "
                         ".safetensors file (flux1-dev.safetensors)")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{option} '{file}' must be a .safetensors file")
    try:
        keys = _safetensors_keys(path)
    except (OSError, ValueError, struct.error) as error:
        raise InputError(f"{option} '{file}' is not a readable .safetensors file ({error})") from None
    if not FLUX.claims_checkpoint(keys):
        raise InputError(f"{option} '{file}' is not a FLUX.1 transformer in BFL's naming (no "
                         "'double_blocks.' tensors); give flux1-dev.safetensors or flux1-schnell.safetensors")
    return path


def load_flux_transformer(file: str, base: str, dtype: torch.dtype = torch.float32):
    """A FluxTransformer2DModel from a single BFL-named `.safetensors` file, with the config of the base
    model's `transformer/` (a local folder, or a hub id: its config only). The file is recognised by its
    tensor names and checked tensor by tensor against that config before any weight is used: a file
    that is not a FLUX.1 transformer, or not one of this config's size, is one line."""
    from diffusers import FluxTransformer2DModel
    from safetensors import SafetensorError, safe_open

    from .families.flux_checkpoint import to_diffusers, transformer_keys

    path = check_transformer_file(file)
    try:
        config = FluxTransformer2DModel.load_config(base, subfolder="transformer")
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"could not read the transformer config of base model '{base}' for pretrained_model."
                         f"transformer: {first}; give a FLUX.1 diffusers folder or hub id") from None
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in FluxTransformer2DModel.from_config(config).state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as handle:  # the transformer's tensors only
            tensors = {key: handle.get_tensor(key) for key in transformer_keys(handle.keys())}
    except (OSError, SafetensorError) as error:
        raise InputError(f"pretrained_model.transformer '{file}' could not be read ({error})") from None
    state = to_diffusers(tensors, shapes, config["num_layers"], config["num_single_layers"], source=file)
    # Already in diffusers' layout: from_single_file only builds the model from `config` and loads it.
    return FluxTransformer2DModel.from_single_file(state, config=base, subfolder="transformer", torch_dtype=dtype)


# --------------------------------------------------------------------------------------------------
# A base model's UNet layout, known before (and without) its weights
# --------------------------------------------------------------------------------------------------


def missing_model(name_or_path: str) -> str | None:
    """The path a base model names when it is a local path that does not exist (moved or deleted), else None.

    A name is a local path, not a hub id, when it ends in `.safetensors`/`.ckpt`, starts with `.`, `/`
    or `~`, or exists: the rule `load_pipeline` applies.
    """
    source = resolve_model(name_or_path)
    path = Path(source).expanduser()
    local = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~")) or path.exists()
    return source if local and not path.exists() else None


def read_unet_config(name_or_path: str) -> dict | None:
    """The UNet config of a base model, without its weights: `unet/config.json` of a diffusers folder
    (the built-in models too) or of a hub id (the local cache, else the hub: one small file).

    None where a config cannot be had that way: a single-file checkpoint (weights only), a hub id out
    of reach, a folder without a readable UNet config. Loading that model then says what is wrong.
    """
    from diffusers import UNet2DConditionModel

    source = resolve_model(name_or_path)
    path = Path(source).expanduser()
    if path.is_file():
        return None
    try:
        return dict(UNet2DConditionModel.load_config(str(path) if path.is_dir() else source, subfolder="unet"))
    except (OSError, ValueError) as error:
        logger.debug("no UNet config for %s before loading it: %s", source, error)
        return None


# --------------------------------------------------------------------------------------------------
# Scoring models (sliders-eval --measurer clip)
# --------------------------------------------------------------------------------------------------


def load_clip(name_or_path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """(model, processor) of a CLIP checkpoint in transformers' format: a folder (with its tokenizer and
    `preprocessor_config.json`) or a hub id such as `openai/clip-vit-large-patch14`. The model is in
    eval mode on `device`; anything that cannot be loaded is one line."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise InputError(f"CLIP model '{name_or_path}' is not a folder; give a CLIP folder in transformers' format or a "
                         "hub id such as openai/clip-vit-large-patch14")
    source = str(path) if looks_local else name_or_path
    try:
        model = CLIPModel.from_pretrained(source, dtype=dtype)
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"could not load CLIP model '{name_or_path}': {first}; give a CLIP folder or hub id "
                         "(--measurer_arg model=...), downloaded beforehand when offline") from None
    return model.to(device).eval(), processor
