"""Model plumbing: load a model of any family, encode prompts, build conditioning, predict noise, denoise.

This is the only module that calls `from_pretrained`/`from_single_file`, and `load_pipeline` the
one door every command's base model comes through: `injected_loader` puts another loader behind it
(the tests' tiny model, or a loader that refuses). Which pipeline class and which text encoders a
model has is its family's (`sliders.families`). Every dimension (latent channels, VAE factor,
time-embedding sizes, projection dims) is read from the model's configs, so the built-in tiny
model and real SDXL run through exactly the same code. No slider logic here.
"""

from __future__ import annotations

import inspect
import logging
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
)

from .config import BUILTIN_MODEL, SHAPES_FLUX_MODEL, SHAPES_SD1_MODEL
from .errors import InputError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Schedulers whose latents live in sigma space (x0 + sigma * noise) and need 1/sqrt(sigma^2+1) before the UNet.
SIGMA_SCHEDULERS = (EulerAncestralDiscreteScheduler, LMSDiscreteScheduler)


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


QUANTIZED_BLOCKS = ("transformer_blocks", "single_transformer_blocks")  # FLUX's blocks: nearly all its weights


def check_quantize(mode: str, family, device: torch.device | str, compute_dtype: torch.dtype = torch.bfloat16,
                   option: str = "pretrained_model.quantize") -> None:
    """One line unless `pretrained_model.quantize` `mode` can run here: FLUX.1 only (a UNet family
    trains unquantized), on CUDA or the CPU, with a bitsandbytes that runs a small layer of that kind
    forward and backward on this device (its CPU backend depends on its version). `option` names the
    setting as the user gave it (`--quantize` on the image-making commands)."""
    if mode == "none":
        return
    where = f"{option} {mode}"
    off = f"leave {option} out" if option.startswith("--") else f"set {option} to none"
    if not family.flow_matching:
        raise InputError(f"{where} quantizes FLUX.1's transformer; {family.label} trains unquantized (its UNet "
                         f"fits); {off}")
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"{where} runs on CUDA (or bitsandbytes' CPU backend), not {device.type}; "
                         f"use --device cuda or {off}")
    try:
        import bitsandbytes
    except ImportError:
        raise InputError(f"{where} needs bitsandbytes: pip install 'sliders[8bit]', or {off}") from None
    failure = _quantized_failure(mode, device, compute_dtype)
    if failure:
        raise InputError(f"{where}: bitsandbytes {bitsandbytes.__version__} cannot run {mode} layers on {device.type} "
                         f"({failure}); use a CUDA GPU or {off}")


def quantize_denoiser(model: torch.nn.Module, mode: str, device: torch.device | str, family,
                      compute_dtype: torch.dtype = torch.bfloat16, option: str = "pretrained_model.quantize") -> int:
    """Replace every Linear of a FLUX transformer's double and single blocks by bitsandbytes' 8-bit
    (LLM.int8, outlier threshold 6) or 4-bit (NF4) layer, quantized as it moves to `device` (one layer
    at a time: the float weights never reach the device). Embedders and the output layer stay float.
    The quantized weights are frozen; a slider's adaptors hook the new layers as they hook a Linear
    (they are Linear subclasses with the same in/out features) and stay float32. Returns the number
    of layers replaced; `mode` 'none' does nothing. Checked first (`check_quantize`, naming `option`)."""
    if mode == "none":
        return 0
    check_quantize(mode, family, device, compute_dtype, option)
    count = 0
    for blocks in QUANTIZED_BLOCKS:
        for module in list(getattr(model, blocks).modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(module, child_name, quantized_linear(child, mode, compute_dtype).to(device))
                    count += 1
    logger.info("%s %s: %d Linear layers of the transformer quantized on %s", option, mode, count, device)
    return count


def quantized_linear(linear: torch.nn.Linear, mode: str, compute_dtype: torch.dtype) -> torch.nn.Linear:
    """A bitsandbytes copy of `linear` (frozen), not yet quantized: that happens when it moves to a device."""
    import bitsandbytes as bnb

    bias = linear.bias is not None
    if mode == "8bit":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                    threshold=6.0)
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    elif mode == "4bit":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                                  quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        # bitsandbytes' repacked CPU inference kernel (no-grad calls in eval mode) refuses layers whose sizes
        # are not multiples of its blocks; the plain 4-bit path computes the same function at any size.
        layer.support_avx512bf16_for_cpu = False
    else:
        raise InputError(f"pretrained_model.quantize is {mode!r}; choose none, 8bit or 4bit")
    if bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.train(linear.training)


def _quantized_failure(mode: str, device: torch.device, compute_dtype: torch.dtype) -> str:
    """'' when this bitsandbytes runs a `mode` layer's forward and backward (to its input, as the
    slider's gradient flows) on `device`, else the first line of what went wrong."""
    try:
        layer = quantized_linear(torch.nn.Linear(64, 64), mode, compute_dtype).to(device)
        inputs = torch.randn(2, 64, device=device, dtype=compute_dtype, requires_grad=True)
        layer.eval()
        with torch.no_grad():  # as in partial denoising and the frozen predictions
            layer(inputs)
        layer(inputs).float().sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return "no finite gradient through the layer"
    except Exception as error:  # noqa: BLE001 - any failure of the library means it cannot run here
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return ""


def vae_factor(vae) -> int:
    """Pixels per latent cell, from the VAE's number of resolution levels."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


@dataclass
class Conditioning:
    """What the UNet is conditioned on, batched on the first axis. `pooled` and `time_ids` are SDXL's
    added conditioning; families without it (SD 1.x/2.x) leave them None."""

    embeds: torch.Tensor  # (B, L, D): SDXL: both encoders' penultimate states, concatenated (D1 + D2)
    pooled: torch.Tensor | None = None  # (B, P): SDXL encoder 2's projected pooled output
    time_ids: torch.Tensor | None = None  # (B, 6): original size, crop top-left, target size

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        return Conditioning(
            torch.cat([c.embeds for c in items]),
            _cat([c.pooled for c in items]),
            _cat([c.time_ids for c in items]),
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> "Conditioning":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, dtype)

        return Conditioning(self.embeds.to(device, dtype), move(self.pooled), move(self.time_ids))


@torch.no_grad()
def encode_prompts(
    tokenizers: Sequence, text_encoders: Sequence, prompts: Sequence[str], clip_skip: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{prompt: (embeds (L, D1+D2), pooled (P,))} for every distinct prompt, float32 on the CPU.

    Uses the penultimate hidden state of each encoder (SDXL's convention; `clip_skip` goes further
    back) and the projected pooled output of the second encoder.
    """
    unique = list(dict.fromkeys(prompts))
    layer = -((clip_skip or 0) + 2)
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        device = next(encoder.parameters()).device
        ids = tokenizer(
            unique,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[layer].float().cpu())
        if hasattr(output, "text_embeds"):
            pooled = output.text_embeds.float().cpu()
    if pooled is None:
        raise InputError("the second text encoder has no projection; the base model is not SDXL-shaped")
    embeds = torch.cat(states, dim=-1)
    return {text: (embeds[i], pooled[i]) for i, text in enumerate(unique)}


def time_ids(height: int, width: int, crop: tuple[int, int] = (0, 0), original: tuple[int, int] | None = None) -> torch.Tensor:
    """SDXL's six added time ids (original size, crop top-left, target size), shape (6,)."""
    original = original or (height, width)
    return torch.tensor([original[0], original[1], crop[0], crop[1], height, width], dtype=torch.float32)


def conditioning(
    embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]], prompt: str, ids: torch.Tensor | None,
    batch: int | None = None,
) -> Conditioning:
    """Conditioning for one prompt repeated over the batch of time ids `ids` (B, 6), or over `batch`
    for a family without time ids (`ids` None)."""
    embeds, pooled = embeddings[prompt]
    batch = ids.shape[0] if ids is not None else batch
    if pooled is None:
        return Conditioning(embeds.expand(batch, *embeds.shape))
    return Conditioning(embeds.expand(batch, *embeds.shape), pooled.expand(batch, *pooled.shape), ids)


def make_scheduler(name: str, v_pred: bool = False, zero_snr: bool = False):
    """The training noise scheduler: SD's betas (0.00085..0.012, scaled_linear), 1000 steps; `zero_snr`
    rescales them to zero terminal SNR (Lin et al. 2024), as v-prediction fine-tunes trained so need."""
    kwargs = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction" if v_pred else "epsilon",
    )
    if zero_snr:
        kwargs["rescale_betas_zero_snr"] = True
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, **kwargs)
    if name == "ddpm":
        return DDPMScheduler(clip_sample=False, **kwargs)
    if name == "lms":
        if zero_snr:
            raise InputError("this model uses zero-terminal-SNR betas, which the lms scheduler lacks; "
                             "set train.noise_scheduler to ddim, ddpm or euler_a")
        return LMSDiscreteScheduler(**kwargs)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler(**kwargs)
    raise InputError(f"noise scheduler {name!r} is unknown; choose ddim, ddpm, lms or euler_a")


def prediction_of(model_scheduler, v_pred: bool = False) -> tuple[bool, bool]:
    """(v-prediction, zero terminal SNR) of a model, from its own scheduler config; the official
    `v_pred` flag forces v-prediction (for single files that do not say)."""
    config = model_scheduler.config
    v = bool(v_pred) or config.get("prediction_type") == "v_prediction"
    return v, bool(config.get("rescale_betas_zero_snr", False))


def model_input(scheduler, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet expects them at `timestep`; stateless (does not touch the scheduler's step index)."""
    if not isinstance(scheduler, SIGMA_SCHEDULERS):
        return latents
    alpha_bar = scheduler.alphas_cumprod[int(timestep)]
    sigma_sq = (1 - alpha_bar) / alpha_bar
    return latents / (sigma_sq + 1) ** 0.5


def predict_noise(unet, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """The UNet's prediction, in the UNet's dtype; latents (B, C, h, w) and cond are batched alike."""
    dtype = unet.dtype
    cond = cond.to(latents.device, dtype)
    added = None if cond.pooled is None else {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    return unet(latents.to(dtype), timestep, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample


def guided_noise(unet, inputs: torch.Tensor, timestep: torch.Tensor, both: Conditioning, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance from one batched call on (uncond, cond): `u + g * (c - u)`, float32.
    `inputs` is the latents twice over, (2B, C, h, w); `both` the unconditional then the conditional."""
    noise_uncond, noise_cond = predict_noise(unet, inputs, timestep, both).float().chunk(2)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


@torch.no_grad()
def denoise_to(
    unet,
    scheduler,
    latents: torch.Tensor,
    steps: int,
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the first `steps` of a `total_steps` schedule from `latents` with classifier-free guidance.

    Each step is one batched UNet call on (uncond, cond); the result is float32.
    """
    return denoise_states(unet, scheduler, latents, [steps], total_steps, cond, uncond, guidance_scale, generator)[steps]


@torch.no_grad()
def denoise_states(
    unet,
    scheduler,
    latents: torch.Tensor,
    stops: Sequence[int],
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
    generator: torch.Generator | None = None,
) -> dict[int, torch.Tensor]:
    """{k: latents after the first k steps} for every k in `stops`, from one run of `max(stops)` steps
    of the `total_steps` schedule (what `denoise_to` gives for each k, from a single trajectory)."""
    scheduler.set_timesteps(total_steps, device=latents.device)
    # Stochastic samplers (DDPM, Euler ancestral) draw from `generator`; deterministic ones take none.
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    both = Conditioning.cat([uncond, cond])
    latents = latents.float()
    wanted = set(stops)
    states = {0: latents} if 0 in wanted else {}
    for index, timestep in enumerate(scheduler.timesteps[: max(stops)], start=1):
        inputs = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
        guided = guided_noise(unet, inputs, timestep, both, guidance_scale)
        latents = scheduler.step(guided, timestep, latents, **extra).prev_sample
        if index in wanted:
            states[index] = latents
    return states


def jump_plan(stops: Sequence[int], max_calls: int, spacing: str = "late") -> list[int]:
    """Schedule indices a coarse run visits: at most `max_calls` jumps from 0 to max(stops), plus
    every stop (each stop costs one more call where it is not already on the way). `even` jumps are
    of equal length; `late` ones shorten towards the end (positions end * (1 - (1 - i/n)^2)), so the
    last steps before x_k, which set its detail, are the finest."""
    end = max(stops)
    if end <= max_calls:
        visited = set(range(end + 1))
    elif spacing == "late":
        visited = {round(end * (1 - (1 - i / max_calls) ** 2)) for i in range(max_calls + 1)}
    else:
        visited = {round(end * i / max_calls) for i in range(max_calls + 1)}
    return sorted(visited | set(stops) | {0})


@torch.no_grad()
def denoise_jumps(
    unet,
    scheduler,
    latents: torch.Tensor,
    indices: Sequence[int],
    total_steps: int,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
) -> dict[int, torch.Tensor]:
    """{i: latents at schedule index i} for the increasing `indices` (starting at 0), one guided UNet
    call per jump, each a deterministic DDIM update (eta 0) from timestep `t_a` to `t_b` of the
    `total_steps` schedule: x0 = (x - sqrt(1 - a_a) eps) / sqrt(a_a), x_b = sqrt(a_b) x0 + sqrt(1 - a_b) eps.

    With jumps of one index this is what DDIMScheduler.step does, so longer jumps reach the same noise
    level as `denoise_to` in fewer calls, along a coarser path. Needs a scheduler in alpha space
    (DDIM, DDPM); epsilon or v prediction.
    """
    if isinstance(scheduler, SIGMA_SCHEDULERS):
        raise InputError("coarse partial denoising needs train.noise_scheduler ddim or ddpm")
    scheduler.set_timesteps(total_steps, device=latents.device)
    timesteps = scheduler.timesteps
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)
    v_pred = scheduler.config.prediction_type == "v_prediction"
    both = Conditioning.cat([uncond, cond])
    latents = latents.float()
    states = {indices[0]: latents}
    for here, there in zip(indices[:-1], indices[1:]):
        timestep = timesteps[here]
        guided = guided_noise(unet, torch.cat([latents, latents]), timestep, both, guidance_scale)
        a_here = alphas[int(timestep)]
        a_there = alphas[int(timesteps[there])]  # there <= total_steps - 1: never past the schedule
        latents = ddim_update(latents, guided, a_here, a_there, v_pred)
        states[there] = latents
    return states


def ddim_update(
    latents: torch.Tensor, model_output: torch.Tensor, a_here: torch.Tensor, a_there: torch.Tensor, v_pred: bool
) -> torch.Tensor:
    """One deterministic DDIM move (eta 0) of `latents` from the noise level with cumulative alpha
    `a_here` to the one with `a_there`, given the model's output at `a_here` (epsilon or v):
    x0 = (x - sqrt(1 - a_here) eps) / sqrt(a_here), x' = sqrt(a_there) x0 + sqrt(1 - a_there) eps.
    With `a_there` > `a_here` it denoises; with `a_there` < `a_here` it is a DDIM inversion step."""
    if v_pred:
        x0 = a_here.sqrt() * latents - (1 - a_here).sqrt() * model_output
        eps = a_here.sqrt() * model_output + (1 - a_here).sqrt() * latents
    else:
        x0 = (latents - (1 - a_here).sqrt() * model_output) / a_here.sqrt()
        eps = model_output
    return a_there.sqrt() * x0 + (1 - a_there).sqrt() * eps


def training_timestep(scheduler, step: int, total_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The timestep at which step `step` of `total_steps` is trained: entry int(step*1000/total) of the 1000-step schedule."""
    scheduler.set_timesteps(scheduler.config.num_train_timesteps, device=device)
    return scheduler.timesteps[int(step * scheduler.config.num_train_timesteps / total_steps)]


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
