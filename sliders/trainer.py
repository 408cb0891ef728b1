"""The one training loop that text and image sliders share, and the set-up before it.

Setup (seed, models, prompt embeddings, network, previews) and the loop (one objective step, slider
predictions with backward inside the multiplier scope, optimizer and schedule steps, progress bar,
logging, checkpoints at their steps); SIGINT/SIGTERM save a resumable checkpoint at the current
step once a step is done, and before that stop at once, leaving the run folder as it was. What a
step trains on comes from `objectives/` (its `OBJECTIVES` table picks the objective); the
optimizer and LR schedule from `optim.py`; saving and resuming from `checkpoints.py`; TensorBoard
and W&B from `loggers.py`; the checks made before any model loads from `training_checks.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import Checkpoints, check_resume_state
from .companions import Companions
from .config import Config, config_to_dict, run_folder_name, save_config
from .data import LatentSource, PairedFolders
from .distributed import SINGLE, Processes, process_seed
from .errors import InputError, Interrupted, Terminated, TrainingError
from .families import SDXL, Family, family_of_pipe
from .loggers import Loggers
from .models import DTYPES, check_quantize, load_pipeline, make_scheduler, prediction_of, quantize_denoiser, vae_factor
from .network import SliderNetwork
from .objectives import ImagePairs, Objective, ObjectiveInputs, image_prompts, make_objective
from .optim import make_lr_scheduler, make_optimizer
from .previews import Previews, encode_preview_prompts, make_previews, preview_path
from .prompts import PromptEntry, distinct_prompts
from .runs import RunFolder, ResumePoint, prepare_run_folder
from .outputs import write_png
from .parsing import check_resolution
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


@dataclass
class Setup:
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    embeddings: dict
    network: SliderNetwork
    stats: RunStats = dataclasses.field(default_factory=RunStats)  # started before the model loads: its total includes setup
    previews: Previews | None = None  # with `sample.every`
    family: Family = SDXL
    companions: Companions | None = None  # with `train.with_sliders`


def setup(
    config: Config, prompts: Sequence[str], device: torch.device, *, keep_vae: bool,
    preview_prompts: Sequence[str] = (), resolution: int = 512, resolutions: Sequence[tuple[str, int]] = (),
) -> Setup:
    """Load the base model, embed every distinct prompt once, attach a fresh slider network.

    With `sample.every`, also the previews: their prompts (`sample.prompts`, else `preview_prompts`)
    are encoded with the training prompts, at `sample.resolution`, else `resolution`. `resolutions`
    ((key, value) pairs) are checked against the loaded model's latents before it does any work.
    """
    stats = RunStats(device)
    dtype = DTYPES[config.train.precision]
    model = config.pretrained_model
    pipe = load_pipeline(model.name_or_path, dtype=dtype, device="cpu", family=model.family, v2=model.v2,
                         transformer=model.transformer)
    family = family_of_pipe(pipe)
    check_quantize(model.quantize, family, device, dtype)  # before the prompts are encoded
    for what, value in resolutions:
        check_resolution(value, what, family, vae_factor(pipe.vae))
    clip_skip = model.clip_skip or 0
    tokenizers, encoders = family.text_encoders(pipe)
    depth = min(encoder.config.num_hidden_layers for encoder in encoders)
    if clip_skip > depth - 1:  # known only now: the encoders' depth comes with the model
        raise InputError(f"config key 'pretrained_model.clip_skip' is {clip_skip}, but this model's text encoders "
                         f"have {depth} layers; use at most {depth - 1}")
    encoders = [encoder.to(device) for encoder in encoders]
    embeddings = family.encode_prompts(tokenizers, encoders, prompts, model.clip_skip)
    preview_prompts = tuple(config.sample.prompts) or tuple(preview_prompts)
    preview_text = None
    if config.sample.every:  # encoded now, while the text encoders are on the device
        preview_text = encode_preview_prompts(pipe, preview_prompts, device, config.pretrained_model.clip_skip)
    for encoder in encoders:
        encoder.to("cpu")  # the text encoders are not needed again: free the device
    # Quantized layer by layer onto the device before the rest moves there: the float weights never do.
    quantize_denoiser(family.denoiser(pipe), model.quantize, device, family, dtype)
    unet = family.denoiser(pipe).to(device).requires_grad_(False).eval()
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
    companions = None
    if config.train.with_sliders:
        companions = Companions.load(config.train.with_sliders, unet, config.train.seed, model.name_or_path,
                                     family.name)
        companions.off()
    if family.flow_matching:  # the model's own flow-matching schedule; train.noise_scheduler is for UNets
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    else:
        scheduler = make_scheduler(config.train.noise_scheduler, *prediction_of(pipe.scheduler, model.v_pred))
    logger.info("slider on %d layers, %d parameters", len(network.loras), sum(p.numel() for p in network.parameters()))
    previews = make_previews(config.sample, pipe, unet, network, preview_prompts, resolution, device,
                             encoded=preview_text, name=config.save.name)
    return Setup(unet, vae, scheduler, embeddings, network, stats, previews, family, companions)


def slider_metadata(config: Config, resolution: int, prompts: object, parts: Setup) -> dict[str, str]:
    prediction = parts.scheduler.config.get("prediction_type", "flow_matching")
    v_pred = prediction == "v_prediction"
    return {
        "sliders_base_model": config.pretrained_model.name_or_path,
        "sliders_family": parts.family.name,
        "sliders_prediction_type": prediction,
        "sliders_start_noise": str(parts.family.defaults.start_noise),
        "sliders_resolution": str(resolution),
        "sliders_config": json.dumps(config_to_dict(config)),
        "sliders_prompts": json.dumps(prompts),
        "ss_base_model_version": parts.family.base_model_version(v_pred),
        "ss_v2": str(parts.family.name == "sd2"),
        "ss_network_module": "sliders.network",
    }


def train_loop(
    config: Config, parts: Setup, objective: Objective, folder: Path, metadata: dict[str, str],
    resume: ResumePoint | None = None, processes: Processes = SINGLE,
) -> RunResult:
    """Run `train.iterations` steps of `objective`, saving checkpoints into `folder`.

    Each step checkpoint has its training state beside it (`sliders.runs`), so `resume` (the latest
    one) continues the run exactly where it stopped: slider, optimizer, LR schedule, step and every
    random state. SIGINT and SIGTERM let the current step finish, save a resumable checkpoint at it
    and raise `Interrupted`. A non-finite loss keeps the last good weights and says where.

    With several `processes` (`accelerate launch`) each draws its own training points from
    `process_seed(train.seed, rank)` (rank 0: the seed itself, so one process trains as it always
    did); their gradients are averaged before each optimizer step (`Processes.average_gradients`),
    the progress bar shows the mean loss, and only the main process writes files. Every step ends in
    `Processes.check`, where an error or a stop signal in any process stops them all.
    """
    network, unet = parts.network, parts.unet
    optimizer = make_optimizer(config.train.optimizer, network.trainable_parameters(), config.train.lr, config.train.optimizer_args)
    lr_scheduler = make_lr_scheduler(config.train.lr_scheduler, optimizer, config.train.iterations, config.train.lr)
    seed = process_seed(config.train.seed, processes.rank)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    main = processes.is_main
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        save_config(config, folder / "config.yaml")
    saver = Checkpoints(config, folder, metadata, network, optimizer, lr_scheduler, rng, generator, objective)
    processes.check()  # every process has set up (an error in one stops all here)
    resume = processes.share(resume)  # found by the main process, which holds the run folder
    start = 0
    if resume is not None:
        start = saver.restore(resume)
        logger.info("resuming '%s' at step %d of %d", resume.checkpoint, start, config.train.iterations)
        if not main:  # the state holds the main process's random states: the others draw anew
            rng.seed(seed + start)
            generator.manual_seed((seed + start) % 2**64)
    processes.broadcast_parameters(network.trainable_parameters())
    loggers = Loggers(config, folder, enabled=main)
    previews = parts.previews
    name, losses = config.save.name, []
    stats = parts.stats
    stats.attach(unet)
    objective.stats = stats
    stats.start_loop()
    total = config.train.iterations
    bar = tqdm(range(start + 1, total + 1), desc=name, initial=start, total=total, disable=not main)
    completed = False
    try:
        with _Signals() as signals:
            for step in bar:
                failure, loss = None, 0.0
                try:
                    if parts.companions is not None:
                        parts.companions.draw(step)
                    terms = objective.step(rng, generator)
                    with stats.phase("slider_forward_backward"):
                        loss = _train_step(unet, network, terms, parts.family, config.train.pair_difference)
                except Exception as error:
                    if not processes.several:
                        raise
                    failure = error
                # One process: (signal received, its loss). Several: whether any was signalled, the mean loss.
                stop, loss = processes.check(failure, bool(signals.received), loss)
                if not math.isfinite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingError(saver.diverged(step, loss) if main else f"the loss is {loss} at step {step}")
                with stats.phase("gradient_averaging"):
                    processes.average_gradients(network.trainable_parameters())
                with stats.phase("optimizer"):
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                stats.iterations = step - start
                losses.append(loss)
                signals.armed = True  # from now on a signal waits for the step to finish
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss:.5f}", lr=f"{lr:.2e}")
                loggers.log(step, {"loss": loss, "lr": lr})
                if main and step < total and (step % config.save.per_steps == 0 or stop):
                    saver.save(step)
                if previews is not None and previews.due(step, total):
                    if parts.companions is not None:
                        parts.companions.off()  # previews show this slider alone
                    _preview(previews, step, folder, stats, unet, loggers, processes)
                if stop and step < total:
                    raise Interrupted(
                        f"saved the resumable checkpoint '{saver.latest}' at step {step} of {total}; "
                        "continue with the same command and --resume",
                        signals.received or signal.SIGINT,
                    )
            completed = True
    finally:
        bar.close()
        loggers.close()
        stats.detach()
        stats.options = objective.describe()
        stats.options["quantize"] = config.pretrained_model.quantize
        if parts.companions is not None:
            stats.options["with_sliders"] = parts.companions.describe()
        if completed:  # every process is here: the counts of all go into stats.json
            stats.combine(processes)
        if main:
            try:
                stats.write(folder / "stats.json")
            except OSError as error:
                logger.warning("could not write %s: %s", folder / "stats.json", error)
    last = saver.save_last(total) if main else folder / f"{config.save.name}_last.safetensors"
    processes.check()  # the last meeting point: a failure to save the slider stops every process
    return RunResult(folder, last, saver.checkpoints, losses)


def _preview(previews: Previews, step: int, folder: Path, stats: RunStats, unet, loggers: Loggers,
             processes: Processes) -> None:
    """Render the preview grid of `step` and write it (main process); its UNet calls are not training's."""
    stats.detach()
    try:
        with stats.phase("previews"):
            grid = previews.render(processes)
    finally:
        stats.attach(unet)
    if grid is None:
        return
    path = preview_path(folder, step)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(grid, path)
    except OSError as error:  # a preview is not worth stopping the training for
        logger.warning("could not write the preview %s: %s", path, error.strerror or error)
    loggers.image(step, "samples", grid)


class _Signals:
    """SIGINT and SIGTERM during the loop, once `armed` (a step is done): remembered, so the step in
    progress finishes and a checkpoint is saved.

    Before that (set-up, and the first step with its draws and partial denoising) there is nothing
    to save, and a signal stops at once, as does a second signal (KeyboardInterrupt, or Terminated
    for SIGTERM); the last periodic checkpoint is then what is kept. Outside the main thread signals
    cannot be caught and are left alone.
    """

    def __init__(self):
        self.received: int = 0
        self.armed = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received or not self.armed:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.received = signum

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _train_step(unet, network: SliderNetwork, terms, family: Family = SDXL, pair_difference: float = 0.0) -> float:
    """Slider predictions for each term, MSE to its target, backward inside the multiplier scope.

    With `pair_difference` > 0 (image sliders, `train.pair_difference`) the terms' graphs are kept and
    `pair_difference` times the MSE of every two terms' prediction difference to their target
    difference is added (`_pair_difference_step`)."""
    if pair_difference > 0 and len(terms) > 1:
        return _pair_difference_step(unet, network, terms, family, pair_difference)
    total = 0.0
    for term in terms:
        with network.scaled(term.multiplier):
            prediction = family.predict(unet, term.latents, term.timestep, term.cond, term.guidance).float()
            loss = F.mse_loss(prediction, term.target)
            loss.backward()
        total += loss.item()
    return total


def _pair_difference_step(unet, network: SliderNetwork, terms, family: Family, weight: float) -> float:
    """The faithful per-term losses plus `weight` x the mean over term pairs of
    MSE((p_i - p_j), (t_i - t_j)): with one noise shared by the folders the targets' difference is 0
    for epsilon (the clean images' difference for velocity targets), so this term carries only what
    tells the folders apart, free of the noise the denoising loss cannot explain.

    Each term's graph needs its own multiplier, so the pair term's gradient is taken through its exact
    derivative at the current predictions: a no-grad pass finds every p_i, then each term's backward
    (inside its multiplier scope) adds <dL_pair/dp_i, p_i>. One extra forward per term."""
    with torch.no_grad():
        values = []
        for term in terms:
            with network.scaled(term.multiplier):
                values.append(family.predict(unet, term.latents, term.timestep, term.cond, term.guidance).float())
    n, count = values[0].numel(), len(terms) * (len(terms) - 1) // 2
    residual = {(i, j): values[i] - values[j] - (terms[i].target - terms[j].target)
                for i in range(len(terms)) for j in range(i + 1, len(terms))}
    pair_loss = sum(float(r.pow(2).mean()) for r in residual.values()) / count
    total = weight * pair_loss
    for i, term in enumerate(terms):
        slope = sum(residual[(i, j)] if i < j else -residual[(j, i)] for j in range(len(terms)) if j != i)
        slope = slope * (2.0 * weight / (count * n))
        with network.scaled(term.multiplier):
            prediction = family.predict(unet, term.latents, term.timestep, term.cond, term.guidance).float()
            loss = F.mse_loss(prediction, term.target)
            (loss + (slope * prediction).sum()).backward()
        total += loss.item()
    return total


def prepare_text(config: Config, entries: Sequence[PromptEntry], device: torch.device):
    """Models, network, text objective and file metadata of a text slider: everything before the loop."""
    for key, on in (("train.pair_difference", config.train.pair_difference > 0),
                    ("data.timestep_range", config.data.timestep_range is not None)):
        if on:
            raise InputError(f"config key '{key}' is for image sliders (sliders-train-images); remove it from this "
                             "text slider's config")
    parts = setup(config, distinct_prompts(entries), device, keep_vae=False,
                  preview_prompts=[entries[0].target], resolution=entries[0].resolution,
                  resolutions=text_resolutions(entries))
    objective = make_objective("text", config, objective_inputs(parts, device), entries)
    return parts, objective, slider_metadata(config, entries[0].resolution, text_prompts_record(entries), parts)


def objective_inputs(parts: Setup, device: torch.device) -> ObjectiveInputs:
    """What the set-up made that the objective is built from (`sliders.objectives.make_objective`)."""
    return ObjectiveInputs(parts.unet, parts.scheduler, parts.network, parts.embeddings, parts.family,
                           vae_factor(parts.vae), device)


def text_resolutions(entries: Sequence[PromptEntry]) -> list[tuple[str, int]]:
    """(key, value) of each distinct training resolution of a text slider's prompt entries."""
    return [("prompts file key 'resolution'", value) for value in dict.fromkeys(e.resolution for e in entries)]


def text_prompts_record(entries: Sequence[PromptEntry]) -> list[dict]:
    """The prompt entries as a slider file records them (and a resumed run must match)."""
    return [dataclasses.asdict(e) for e in entries]


def image_prompts_record(pairs: PairedFolders, entry: PromptEntry) -> dict:
    """The entry and image folders as a slider file records them (and a resumed run must match)."""
    return {
        "entry": dataclasses.asdict(entry),
        "folders": list(pairs.folders),
        "scales": list(pairs.scales),
        "captions": pairs.captions is not None,
    }


def prepare_image(config: Config, pairs: PairedFolders, entry: PromptEntry, device: torch.device):
    """Models, network, latent source (posteriors cached per data.cache_latents), image objective, metadata."""
    text_only = [key for key, on in (
        ("train.fused_denoising", config.train.fused_denoising),
        ("train.fast", config.train.fast),
        ("train.xk_max_steps", config.train.xk_max_steps is not None and not config.train.fast),
        ("train.trajectory_reuse", config.train.trajectory_reuse != 1),
        ("train.compile", config.train.compile),
    ) if on]
    if text_only:
        logger.warning("%s has no effect on image sliders: they train on noised images, "
                       "with no partial denoising to fold the slider into or to shorten", ", ".join(text_only))
    parts = setup(config, image_prompts(pairs, entry), device, keep_vae=True,
                  preview_prompts=[entry.positive], resolution=entry.resolution,
                  resolutions=[("the image slider's resolution", entry.resolution)])
    latents = LatentSource(
        pairs, parts.vae, entry.resolution, cache=config.data.cache_latents, device=device
    )
    latents.prepare()
    if config.data.cache_latents:
        parts.vae.to("cpu")
    objective = make_objective("image", config, objective_inputs(parts, device), ImagePairs(pairs, latents, entry))
    return parts, objective, slider_metadata(config, entry.resolution, image_prompts_record(pairs, entry), parts)


def open_run(config: Config, prompts_record: object, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
    """Check, lock and clear the run folder before any model loads (`sliders.runs.prepare_run_folder`);
    with `resume`, find the checkpoint to continue from and check its training state (`check_resume_state`).
    Release it with `RunFolder.release()`."""
    run = prepare_run_folder(run_folder(config), config.save.name, config_to_dict(config), json.dumps(prompts_record),
                             overwrite=overwrite, resume=resume)
    if run.resume is not None:
        try:
            check_resume_state(config, run.resume)
        except BaseException:
            run.release()
            raise
    return run


@contextmanager
def _abandoned_when_stopped(run: RunFolder | None) -> Iterator[None]:
    """A run ended at once by Ctrl-C or SIGTERM (during set-up or its first step, or by a second
    signal) leaves its folder as it found it when it saved nothing there (`RunFolder.abandon`)."""
    try:
        yield
    except KeyboardInterrupt:
        if run is not None:
            run.abandon()
        raise


def train_text_slider(
    config: Config, entries: Sequence[PromptEntry], device: torch.device, run: RunFolder | None = None,
    processes: Processes = SINGLE,
) -> RunResult:
    """Train a slider from prompt entries (SPEC section 2), in `run` (from `open_run`) when given;
    as one of several `processes` (`distributed.start`), data-parallel (`train_loop`)."""
    with _abandoned_when_stopped(run):
        parts, objective, metadata = prepare_text(config, entries, device)
        return train_loop(config, parts, objective, run_folder(config), metadata, run.resume if run else None, processes)


def train_image_slider(
    config: Config, pairs: PairedFolders, entry: PromptEntry, device: torch.device, run: RunFolder | None = None,
    processes: Processes = SINGLE,
) -> RunResult:
    """Train a slider from paired image folders (SPEC section 3), in `run` (from `open_run`) when given;
    as one of several `processes` (`distributed.start`), data-parallel (`train_loop`)."""
    with _abandoned_when_stopped(run):
        parts, objective, metadata = prepare_image(config, pairs, entry, device)
        return train_loop(config, parts, objective, run_folder(config), metadata, run.resume if run else None, processes)
