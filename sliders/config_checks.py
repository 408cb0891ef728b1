"""What a loaded config must satisfy: known choices, numbers in range, a safe slider name.

`_check` runs once on every config `load_config` builds (defaults < YAML < overrides) and returns
it with its choices normalised (case, "-" or "_", precision aliases such as "float16" -> "fp16").
Each broken rule raises one `InputError` whose single line names the config key, the value found
and what to use instead (a close match for a misspelt choice, the bound and why it exists for a
number out of range). The schema, its constants and the YAML reading are ``sliders.config``.
"""

from __future__ import annotations

import dataclasses
import difflib

from .config import (
    FAMILY_NAMES,
    FAST_XK_MAX_STEPS,
    KEY_FORMATS,
    LR_SCHEDULERS,
    MAX_CLIP_SKIP,
    MAX_FOLDERS_PER_STEP,
    MAX_GUIDANCE,
    MAX_ITERATIONS,
    MAX_NAME_LENGTH,
    MAX_PREVIEW_IMAGES,
    MAX_RANK,
    MAX_RESOLUTION,
    MAX_SCALE,
    MAX_TIMESTEPS,
    MAX_TRAJECTORY_REUSE,
    NETWORK_TYPES,
    NOISE_SCHEDULERS,
    OPTIMIZERS,
    PRECISION_ALIASES,
    QUANTIZE_MODES,
    TRAINING_METHODS,
    UNSAFE_NAME_CHARACTERS,
    XK_SPACINGS,
    Config,
    DataConfig,
    SampleConfig,
    TrainConfig,
)
from .errors import InputError


def check_name(name: str) -> str:
    """A slider name that is one safe file name on every system, short enough for the files made from it."""
    if not name or name.strip() != name or name in (".", "..") or name.startswith("."):
        raise InputError(f"config key 'save.name' must be a plain file name (not empty, no leading dot or spaces), "
                         f"got {name!r}")
    bad = sorted({ch for ch in name if ch in UNSAFE_NAME_CHARACTERS or ord(ch) < 32 or ord(ch) == 127})
    if bad:
        raise InputError(f"config key 'save.name' {name!r} has {', '.join(repr(ch) for ch in bad)}, which file names "
                         "cannot hold everywhere; use letters, digits, '-' and '_'")
    if len(name) > MAX_NAME_LENGTH:
        raise InputError(f"config key 'save.name' is {len(name)} characters long; use at most {MAX_NAME_LENGTH} "
                         "(the run folder and checkpoint names add to it)")
    return name


def _plain(value: float) -> str:
    """1000000 rather than 1e+06; 1e+39 and 0.0002 as they are."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _check(config: Config) -> Config:
    """Validate choices and ranges; return the config with names normalised."""
    network, train, save = config.network, config.train, config.save

    def choice(where: str, value: str, valid: tuple[str, ...]) -> str:
        normal = value.lower().replace("-", "_") if where.endswith(("optimizer", "lr_scheduler")) else value.lower()
        lookup = {v.replace("-", "_") if where.endswith(("optimizer", "lr_scheduler")) else v: v for v in valid}
        if normal not in lookup:
            close = difflib.get_close_matches(normal, list(lookup), n=1, cutoff=0.5)
            hint = f"did you mean '{lookup[close[0]]}'?" if close else "choose one of " + ", ".join(valid)
            raise InputError(f"config key '{where}' has unknown value {value!r}: {hint}")
        return lookup[normal]

    def precision(where: str, value: str) -> str:
        if value.lower() not in PRECISION_ALIASES:
            raise InputError(f"config key '{where}' has unknown value {value!r}: choose fp32, fp16 or bf16")
        return PRECISION_ALIASES[value.lower()]

    def at_most(where: str, value: float, maximum: float, why: str) -> None:
        if value > maximum:
            raise InputError(f"config key '{where}' must be at most {_plain(maximum)}, got {_plain(value)}; {why}")

    def positive(where: str, value: float, minimum: float = 0.0, strict: bool = True) -> None:
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise InputError(f"config key '{where}' must be {relation} {minimum}, got {value}")

    positive("network.rank", network.rank)
    positive("network.alpha", network.alpha, strict=False)
    positive("train.iterations", train.iterations)
    positive("train.lr", train.lr)
    positive("train.max_denoising_steps", train.max_denoising_steps, minimum=1)
    positive("save.per_steps", save.per_steps)
    if config.data.folders_per_step is not None:
        positive("data.folders_per_step", config.data.folders_per_step)
    positive("train.trajectory_reuse", train.trajectory_reuse)
    positive("train.pair_difference", train.pair_difference, strict=False)
    at_most("train.pair_difference", train.pair_difference, 100.0, "3 is the measured weight (docs/image-sliders.md)")
    at_most("train.iterations", train.iterations, MAX_ITERATIONS, "the paper trains 1000 steps")
    at_most("save.per_steps", save.per_steps, MAX_ITERATIONS,
            f"a value above train.iterations ({train.iterations}) already saves no step checkpoint")
    _check_reuse(train)
    _check_data(config.data)
    at_most("network.rank", network.rank, MAX_RANK, "LoRA ranks of 4 to 64 are usual")
    # alpha / rank scales the slider's change; past the largest rank the scale only blows up the loss.
    at_most("network.alpha", network.alpha, MAX_RANK, "alpha is usually 1 or the rank (0 means the rank)")
    at_most("train.lr", train.lr, 1.0, "slider learning rates are around 1e-4; adaptive optimizers use 1.0")
    at_most("train.max_denoising_steps", train.max_denoising_steps, MAX_TIMESTEPS,
            f"the noise schedule has {MAX_TIMESTEPS} steps")
    if train.flow_steps is not None and not 2 <= train.flow_steps <= MAX_TIMESTEPS:
        raise InputError(f"config key 'train.flow_steps' is {train.flow_steps}; use 2 to {MAX_TIMESTEPS} (FLUX-dev "
                         "samples in 30 steps, schnell in 4)")
    if train.flow_guidance is not None and not 0 <= train.flow_guidance <= 100:
        raise InputError(f"config key 'train.flow_guidance' is {train.flow_guidance:g}; use 0 to 100 (FLUX-dev: 3.5)")
    if not 0 <= train.seed < 2**64:
        raise InputError(f"config key 'train.seed' must be a whole number from 0 to 2**64-1, got {train.seed}")
    clip_skip = config.pretrained_model.clip_skip
    if clip_skip is not None and not 0 <= clip_skip <= MAX_CLIP_SKIP:
        raise InputError(f"config key 'pretrained_model.clip_skip' must be from 0 to {MAX_CLIP_SKIP} (layers skipped "
                         f"before SDXL's penultimate one), got {clip_skip}")
    xk_max_steps = train.xk_max_steps
    if xk_max_steps is None and train.fast:
        xk_max_steps = FAST_XK_MAX_STEPS
    if xk_max_steps is not None:
        positive("train.xk_max_steps", xk_max_steps)
        if train.xk_max_steps is not None:  # what train.fast sets fits any schedule: a jump per step at most
            at_most("train.xk_max_steps", xk_max_steps, train.max_denoising_steps,
                    f"x_k is at most train.max_denoising_steps ({train.max_denoising_steps}) denoising steps away, "
                    "so more calls than that is the faithful path: remove the key for it")
        if train.noise_scheduler.lower() not in ("ddim", "ddpm"):
            raise InputError(
                f"train.xk_max_steps (and so train.fast) reaches x_k by DDIM jumps, which needs train.noise_scheduler "
                f"ddim or ddpm, not {train.noise_scheduler!r}; change the scheduler or drop the fast option"
            )
    if train.compile and train.fused_denoising:
        raise InputError(
            "train.compile and train.fused_denoising both speed up the no-grad UNet calls and do not combine "
            "(a compiled graph would not see the folded weights); choose one"
        )
    if train.fused_denoising and precision("train.precision", train.precision) != "fp32":
        raise InputError(
            "train.fused_denoising folds the slider into the UNet weights, which in "
            f"{train.precision} would round the slider's change away; use it with train.precision fp32 or turn it off"
        )
    check_name(save.name)
    _check_sample(config.sample)
    family = config.pretrained_model.family
    if family is not None:
        family = choice("pretrained_model.family", family, FAMILY_NAMES)
        if config.pretrained_model.v2 and family != "sd2":
            raise InputError(f"config keys 'pretrained_model.v2' (SD 2.x) and 'pretrained_model.family' ({family!r}) "
                             "disagree; drop one of them")
    return dataclasses.replace(
        config,
        pretrained_model=dataclasses.replace(
            config.pretrained_model, family=family,
            quantize=choice("pretrained_model.quantize", str(config.pretrained_model.quantize), QUANTIZE_MODES),
        ),
        network=dataclasses.replace(
            network,
            type=choice("network.type", network.type, NETWORK_TYPES),
            training_method=choice("network.training_method", network.training_method, TRAINING_METHODS),
        ),
        train=dataclasses.replace(
            train,
            precision=precision("train.precision", train.precision),
            noise_scheduler=choice("train.noise_scheduler", train.noise_scheduler, NOISE_SCHEDULERS),
            optimizer=choice("train.optimizer", train.optimizer, OPTIMIZERS),
            lr_scheduler=choice("train.lr_scheduler", train.lr_scheduler, LR_SCHEDULERS),
            xk_max_steps=xk_max_steps,
            xk_spacing=choice("train.xk_spacing", train.xk_spacing, XK_SPACINGS),
        ),
        save=dataclasses.replace(
            save,
            precision=precision("save.precision", save.precision),
            key_format=choice("save.key_format", save.key_format, KEY_FORMATS),
        ),
    )


def _check_reuse(train: TrainConfig) -> None:
    """`train.trajectory_reuse`: one trajectory serves at most the run's steps (and MAX_TRAJECTORY_REUSE)."""
    limit = min(train.iterations, MAX_TRAJECTORY_REUSE)
    if train.trajectory_reuse > limit:
        why = (f"train.iterations is {train.iterations}, and one trajectory cannot serve more steps than the run has"
               if limit == train.iterations else
               "each queued start point keeps its latents in memory and in every checkpoint's training state")
        raise InputError(f"config key 'train.trajectory_reuse' must be at most {limit}, got {train.trajectory_reuse}: "
                         f"{why}; lower it (12 is the benchmarked value, docs/training.md \"Fast text sliders\")")


def _check_data(data: DataConfig) -> None:
    """The numbers of the `data:` section (image sliders): folders per step and the folders' scales."""
    if data.folders_per_step is not None:
        limit = min(len(data.folders) or MAX_FOLDERS_PER_STEP, MAX_FOLDERS_PER_STEP)
        if data.folders_per_step > limit:
            what = f"there are {len(data.folders)} data.folders" if data.folders else "each is a slider forward and backward"
            raise InputError(f"config key 'data.folders_per_step' must be at most {limit}, got {data.folders_per_step} "
                             f"({what}); lower it, or remove it to train on every folder each step")
    if data.timestep_range is not None:
        bounds = data.timestep_range
        if (len(bounds) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in bounds)
                or not 0 <= bounds[0] < bounds[1] <= MAX_TIMESTEPS - 1):
            raise InputError(f"config key 'data.timestep_range' must be two whole timesteps low < high from 0 to "
                             f"{MAX_TIMESTEPS - 1}, got {list(bounds)}; e.g. [200, 999], or remove it for the whole schedule")
    for scale in data.scales:
        if abs(scale) > MAX_SCALE:
            raise InputError(f"config key 'data.scales' has {scale:g}; use scales from -{MAX_SCALE} to "
                             f"{MAX_SCALE} (image sliders train at about -2 to 2, e.g. -1,1 or 0.67,1,1.3,2)")


def _check_sample(sample: SampleConfig) -> None:
    """The `sample:` section (training previews): ranges, and no seed or scale twice."""
    if not 0 <= sample.every <= MAX_ITERATIONS:
        raise InputError(f"config key 'sample.every' must be from 0 (no previews) to {MAX_ITERATIONS}, got {sample.every}")
    if not sample.seeds:
        raise InputError("config key 'sample.seeds' is empty; give at least one seed, e.g. [0]")
    for seed in sample.seeds:
        if not 0 <= seed < 2**64:
            raise InputError(f"config key 'sample.seeds' has {seed}; use whole numbers from 0 to 2**64-1")
    if len(set(sample.seeds)) != len(sample.seeds):
        raise InputError(f"config key 'sample.seeds' {list(sample.seeds)} repeats a seed; give each seed once")
    if not sample.scales:
        raise InputError("config key 'sample.scales' is empty; give at least one scale, e.g. [-2, 0, 2]")
    for scale in sample.scales:
        if abs(scale) > MAX_SCALE:
            raise InputError(f"config key 'sample.scales' has {scale:g}; slider scales from -{MAX_SCALE} to "
                             f"{MAX_SCALE} are meaningful (sliders are trained at about -2 to 2)")
    if len({f"{s:+g}" for s in sample.scales}) != len(sample.scales):
        raise InputError(f"config key 'sample.scales' {list(sample.scales)} repeats a scale; give each scale once")
    if sample.steps is not None and not 1 <= sample.steps <= MAX_TIMESTEPS:
        raise InputError(f"config key 'sample.steps' must be from 1 to {MAX_TIMESTEPS}, got {sample.steps}")
    if not 0 <= sample.start_noise <= MAX_TIMESTEPS:
        raise InputError(f"config key 'sample.start_noise' must be from 0 to {MAX_TIMESTEPS}, got {sample.start_noise:g}")
    if sample.resolution is not None and (sample.resolution < 64 or sample.resolution % 64
                                          or sample.resolution > MAX_RESOLUTION):
        raise InputError(f"config key 'sample.resolution' must be a multiple of 64 from 64 to {MAX_RESOLUTION} "
                         f"(e.g. 512), got {sample.resolution}")
    if sample.guidance_scale is not None and not 0 <= sample.guidance_scale <= MAX_GUIDANCE:
        raise InputError(f"config key 'sample.guidance_scale' must be from 0 to {MAX_GUIDANCE}, got "
                         f"{sample.guidance_scale:g}; 5 to 7.5 is usual")
    images = max(len(sample.prompts), 1) * len(sample.seeds) * len(sample.scales)
    if images > MAX_PREVIEW_IMAGES:
        raise InputError(f"config keys 'sample.prompts', 'sample.seeds' and 'sample.scales' make {images} preview images "
                         f"({max(len(sample.prompts), 1)} x {len(sample.seeds)} x {len(sample.scales)}) in each grid; "
                         f"use at most {MAX_PREVIEW_IMAGES}: fewer prompts, seeds or scales")
