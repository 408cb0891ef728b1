"""The one training loop that text and image sliders share.

Setup (seed, models, prompt embeddings, network, optimizer, LR schedule), the loop (one objective
step, slider predictions with backward inside the multiplier scope, optimizer and schedule steps,
progress bar, logging) and checkpoints. What a step trains on comes from `objectives.py`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config, config_to_dict, run_folder_name, save_config
from .data import LatentSource, PairedFolders
from .errors import InputError, TrainingError
from .models import DTYPES, encode_prompts, load_pipeline, make_scheduler, predict_noise, vae_factor
from .network import SliderNetwork
from .objectives import ImageObjective, TextObjective, image_prompts
from .prompts import PromptEntry, distinct_prompts
from .stats import RunStats

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    folder: Path
    last: Path
    checkpoints: list[Path]
    losses: list[float]


def run_folder(config: Config) -> Path:
    return Path(config.save.path) / run_folder_name(config)


def check_output(config: Config, overwrite: bool) -> Path:
    """Refuse to train over an earlier run's slider unless asked to; checked before any model loads."""
    folder = run_folder(config)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(
                f"'{parent}' is a file, so the run folder '{folder}' cannot be made there; "
                "choose another --output_dir (save.path) or --name"
            )
    last = folder / f"{config.save.name}_last.safetensors"
    if last.exists() and not overwrite:
        raise InputError(f"'{last}' already exists; choose another --name or --output_dir, or pass --overwrite")
    return folder


def parse_optimizer_args(text: str) -> dict:
    """'weight_decay=0.01 betas=0.9,0.99 decouple=True' -> keyword arguments."""
    kwargs = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InputError(f"train.optimizer_args entry {part!r} is not key=value; write e.g. 'weight_decay=0.01'")
        kwargs[key] = _literal(value)
    return kwargs


def _literal(value: str):
    if "," in value:
        return tuple(_literal(v) for v in value.split(",") if v)
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _optional(module: str, package: str, what: str, install: str | None = None):
    """Import an optional package chosen by a setting; missing, it is an InputError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{what} needs the package '{package}'; install it with: pip install {install or package}") from None


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float, args: str) -> torch.optim.Optimizer:
    """Optimizer by config name; optional packages are imported only when chosen."""
    kwargs = parse_optimizer_args(args)

    def bnb():
        return _optional("bitsandbytes", "bitsandbytes", f"optimizer '{name}'", "'sliders[8bit]'")

    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, **kwargs),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, **kwargs),
        "adamw8bit": lambda: bnb().optim.AdamW8bit(params, lr=lr, **kwargs),
        "adam8bit": lambda: bnb().optim.Adam8bit(params, lr=lr, **kwargs),
        "lion8bit": lambda: bnb().optim.Lion8bit(params, lr=lr, **kwargs),
        "lion": lambda: bnb().optim.Lion(params, lr=lr, **kwargs),
        "prodigy": lambda: _optional("prodigyopt", "prodigyopt", f"optimizer '{name}'").Prodigy(params, lr=lr, **kwargs),
        "dadaptadam": lambda: _optional("dadaptation", "dadaptation", f"optimizer '{name}'").DAdaptAdam(params, lr=lr, **kwargs),
        "dadaptlion": lambda: _optional("dadaptation", "dadaptation", f"optimizer '{name}'").DAdaptLion(params, lr=lr, **kwargs),
    }
    try:
        return builders[name]()
    except TypeError as error:
        raise InputError(f"train.optimizer_args {args!r} do not fit optimizer '{name}': {error}") from None


def make_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, iterations: int, lr: float):
    """The official code's schedules over `iterations` steps (SPEC section 4).

    `constant`; `cosine` from lr to lr/100 over the run; `cosine_with_restarts` from lr to lr/100 in
    cycles of T // 10 steps, each twice the last; `step`, lr times 0.999 every T // 100 steps;
    `linear`, a warm-up from lr/2 to lr over the first T // 100 steps, then lr (the official
    `LinearLR(factor=0.5)` call fails on current torch; this is what it meant). Periods that round to 0
    in short runs are 1 step.
    """
    sched = torch.optim.lr_scheduler
    floor = lr / 100
    tenth = max(1, iterations // 10)
    hundredth = max(1, iterations // 100)
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=floor)
    if name == "cosine_with_restarts":
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=tenth, T_mult=2, eta_min=floor)
    if name == "step":
        return sched.StepLR(optimizer, step_size=hundredth, gamma=0.999)
    if name == "linear":
        return sched.LinearLR(optimizer, start_factor=0.5, end_factor=1.0, total_iters=hundredth)
    raise InputError(f"lr scheduler {name!r} is unknown")


class _Loggers:
    """Optional TensorBoard and Weights & Biases scalars; silent when neither is configured."""

    def __init__(self, config: Config, folder: Path):
        self.writer = None
        self.wandb = None
        if config.logging.tensorboard_dir:
            tensorboard = _optional("torch.utils.tensorboard", "tensorboard", "logging.tensorboard_dir")
            self.writer = tensorboard.SummaryWriter(config.logging.tensorboard_dir)
        if config.logging.use_wandb:
            self.wandb = _optional("wandb", "wandb", "logging.use_wandb")
            self.wandb.init(project="sliders", name=config.save.name, config=config_to_dict(config), dir=str(folder))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


@dataclass
class Setup:
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    embeddings: dict
    network: SliderNetwork
    stats: RunStats  # started before the model loads, so its total includes setup


def setup(config: Config, prompts: Sequence[str], device: torch.device, *, keep_vae: bool) -> Setup:
    """Load the base model, embed every distinct prompt once, attach a fresh slider network."""
    stats = RunStats(device)
    dtype = DTYPES[config.train.precision]
    pipe = load_pipeline(config.pretrained_model.name_or_path, dtype=dtype, device="cpu")
    encoders = [pipe.text_encoder.to(device), pipe.text_encoder_2.to(device)]
    embeddings = encode_prompts([pipe.tokenizer, pipe.tokenizer_2], encoders, prompts, config.pretrained_model.clip_skip)
    for encoder in encoders:
        encoder.to("cpu")  # the text encoders are not needed again: free the device
    unet = pipe.unet.to(device).requires_grad_(False).eval()
    if config.train.gradient_checkpointing:
        # Recompute the UNet's activations during the slider's backward instead of keeping them: less
        # memory at 1024 px for more compute; the same gradients (the backward runs inside the
        # multiplier scope, so the recomputation sees the same multiplier).
        unet.enable_gradient_checkpointing()
    vae = pipe.vae.requires_grad_(False).eval()
    if keep_vae:
        # The SDXL VAE overflows in fp16; encode in fp32 (a few images, once).
        vae = vae.to(device, torch.float32)
    torch.manual_seed(config.train.seed)
    network = SliderNetwork.create(
        unet,
        network_type=config.network.type,
        training_method=config.network.training_method,
        rank=config.network.rank,
        alpha=config.network.alpha,
    ).attach()
    scheduler = make_scheduler(config.train.noise_scheduler, config.pretrained_model.v_pred)
    logger.info("slider on %d layers, %d parameters", len(network.loras), sum(p.numel() for p in network.parameters()))
    return Setup(unet, vae, scheduler, embeddings, network, stats)


def slider_metadata(config: Config, resolution: int, prompts: object) -> dict[str, str]:
    return {
        "sliders_base_model": config.pretrained_model.name_or_path,
        "sliders_resolution": str(resolution),
        "sliders_config": json.dumps(config_to_dict(config)),
        "sliders_prompts": json.dumps(prompts),
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_v2": "False",
        "ss_network_module": "sliders.network",
    }


def train_loop(config: Config, parts: Setup, objective, folder: Path, metadata: dict[str, str]) -> RunResult:
    """Run `train.iterations` steps of `objective`, saving checkpoints into `folder`."""
    network, unet = parts.network, parts.unet
    optimizer = make_optimizer(config.train.optimizer, network.trainable_parameters(), config.train.lr, config.train.optimizer_args)
    lr_scheduler = make_lr_scheduler(config.train.lr_scheduler, optimizer, config.train.iterations, config.train.lr)
    rng = random.Random(config.train.seed)
    generator = torch.Generator().manual_seed(config.train.seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder / "config.yaml")
    loggers = _Loggers(config, folder)
    name, checkpoints, losses = config.save.name, [], []
    stats = parts.stats
    stats.attach(unet)
    objective.stats = stats
    stats.start_loop()
    bar = tqdm(range(1, config.train.iterations + 1), desc=name, disable=False)
    try:
        for step in bar:
            terms = objective.step(rng, generator)
            with stats.phase("slider_forward_backward"):
                loss = _train_step(unet, network, terms)
            if not math.isfinite(loss):
                raise TrainingError(f"the loss is {loss} at step {step}; lower train.lr or train in fp32/bf16")
            with stats.phase("optimizer"):
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            stats.iterations = step
            losses.append(loss)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss:.5f}", lr=f"{lr:.2e}")
            loggers.log(step, {"loss": loss, "lr": lr})
            if step % config.save.per_steps == 0 and step < config.train.iterations:
                path = folder / f"{name}_{step}steps.safetensors"
                checkpoints.append(network.save(path, {**metadata, "sliders_step": str(step)}, config.save.precision))
    finally:
        loggers.close()
        stats.detach()
        describe = getattr(objective, "describe", None)
        stats.options = describe() if describe is not None else {}
        stats.write(folder / "stats.json")
    last = network.save(folder / f"{name}_last.safetensors", {**metadata, "sliders_step": str(config.train.iterations)}, config.save.precision)
    return RunResult(folder, last, checkpoints, losses)


def _train_step(unet, network: SliderNetwork, terms) -> float:
    """Slider predictions for each term, MSE to its target, backward inside the multiplier scope."""
    total = 0.0
    for term in terms:
        with network.scaled(term.multiplier):
            prediction = predict_noise(unet, term.latents, term.timestep, term.cond).float()
            loss = F.mse_loss(prediction, term.target)
            loss.backward()
        total += loss.item()
    return total


def prepare_text(config: Config, entries: Sequence[PromptEntry], device: torch.device):
    """Models, network, text objective and file metadata of a text slider: everything before the loop."""
    parts = setup(config, distinct_prompts(entries), device, keep_vae=False)
    objective = TextObjective(
        entries,
        parts.embeddings,
        parts.unet,
        parts.scheduler,
        parts.network,
        max_denoising_steps=config.train.max_denoising_steps,
        factor=vae_factor(parts.vae),
        device=device,
        bidirectional=config.train.bidirectional,
        fused_denoising=config.train.fused_denoising,
        xk_max_steps=config.train.xk_max_steps,
        trajectory_reuse=config.train.trajectory_reuse,
    )
    metadata = slider_metadata(config, entries[0].resolution, [dataclasses.asdict(e) for e in entries])
    return parts, objective, metadata


def prepare_image(config: Config, pairs: PairedFolders, entry: PromptEntry, device: torch.device):
    """Models, network, latent source (posteriors cached per data.cache_latents), image objective, metadata."""
    text_only = [key for key, on in (
        ("train.fused_denoising", config.train.fused_denoising),
        ("train.fast", config.train.fast),
        ("train.xk_max_steps", config.train.xk_max_steps is not None and not config.train.fast),
        ("train.trajectory_reuse", config.train.trajectory_reuse != 1),
    ) if on]
    if text_only:
        logger.warning("%s has no effect on image sliders: they train on noised images, "
                       "with no partial denoising to fold the slider into or to shorten", ", ".join(text_only))
    parts = setup(config, image_prompts(pairs, entry), device, keep_vae=True)
    latents = LatentSource(
        pairs, parts.vae, entry.resolution, cache=config.data.cache_latents, device=device
    )
    latents.prepare()
    if config.data.cache_latents:
        parts.vae.to("cpu")
    objective = ImageObjective(
        pairs,
        latents,
        entry,
        parts.embeddings,
        parts.scheduler,
        max_denoising_steps=config.train.max_denoising_steps,
        device=device,
        folders_per_step=config.data.folders_per_step,
    )
    prompts = {
        "entry": dataclasses.asdict(entry),
        "folders": list(pairs.folders),
        "scales": list(pairs.scales),
        "captions": pairs.captions is not None,
    }
    return parts, objective, slider_metadata(config, entry.resolution, prompts)


def train_text_slider(config: Config, entries: Sequence[PromptEntry], device: torch.device) -> RunResult:
    """Train a slider from prompt entries (SPEC section 2)."""
    parts, objective, metadata = prepare_text(config, entries, device)
    return train_loop(config, parts, objective, run_folder(config), metadata)


def train_image_slider(config: Config, pairs: PairedFolders, entry: PromptEntry, device: torch.device) -> RunResult:
    """Train a slider from paired image folders (SPEC section 3)."""
    parts, objective, metadata = prepare_image(config, pairs, entry, device)
    return train_loop(config, parts, objective, run_folder(config), metadata)
