"""The training configuration: one schema of nested dataclasses, validated once.

The YAML keys are those of the official Concept Sliders configs, so an official `config-xl.yaml`
loads unchanged. Precedence is defaults < YAML < overrides (command-line flags). This module knows
nothing of torch or models; it only reads, checks and writes settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import InputError
from .files import write_text_atomic

BUILTIN_MODEL = "builtin:shapes"  # the default: the shapes-world model shipped in sliders/assets
SHAPES_SD1_MODEL = "builtin:shapes-sd1"  # the shapes world on an SD 1.x-architecture model
SHAPES_FLUX_MODEL = "builtin:shapes-flux"  # ... and on a FLUX.1-architecture (flow-matching transformer) model
TINY_MODEL = "builtin:tiny-sdxl"  # random weights, built on first use: for tests

NETWORK_TYPES = ("lierla", "c3lier")
TRAINING_METHODS = (
    "full",
    "noxattn",
    "innoxattn",
    "selfattn",
    "xattn",
    "xattn-strict",
    "noxattn-hspace",
    "noxattn-hspace-last",
)
NOISE_SCHEDULERS = ("ddim", "ddpm", "lms", "euler_a")
QUANTIZE_MODES = ("none", "8bit", "4bit")  # pretrained_model.quantize (bitsandbytes; FLUX.1 only)
OPTIMIZERS = (
    "adam",
    "adamw",
    "adamw8bit",
    "adam8bit",
    "lion8bit",
    "lion",
    "prodigy",
    "dadaptadam",
    "dadaptlion",
)
# How slider files name their layers (sliders/formats.py writes and reads each).
KEY_FORMATS = ("kohya", "diffusers", "peft")
FAMILY_NAMES = ("sdxl", "sd1", "sd2", "flux")  # the model families of sliders.families, in its order
LR_SCHEDULERS = ("constant", "cosine", "cosine_with_restarts", "step", "linear")
# Bounds of values that pass as numbers but would fail (or fill the disk) only after the model loads.
MAX_RANK = 1024
MAX_TIMESTEPS = 1000  # the training noise schedule's steps: no schedule can have more
MAX_CLIP_SKIP = 10
MAX_ITERATIONS = 1_000_000  # the paper trains 1000 steps; also the bound of every "every N steps" setting
MAX_TRAJECTORY_REUSE = 1000  # each queued start point keeps its latents, in memory and in every checkpoint's state
MAX_RESOLUTION = 4096  # beyond this a step needs more memory than any GPU has
MAX_FOLDERS_PER_STEP = 64  # each folder of a step is one slider forward and backward
MAX_GUIDANCE = 100  # classifier-free guidance of 5 to 7.5 is usual; far beyond it an image is only noise
MAX_PREVIEW_IMAGES = 256  # prompts x seeds x scales of one preview grid, made every `sample.every` steps
MAX_SCALE = 100  # a slider far beyond its trained range (about -2 to 2) gives only noise; 1e30 a black image
MAX_NAME_LENGTH = 200
UNSAFE_NAME_CHARACTERS = '/\\:*?"<>|'
XK_SPACINGS = ("late", "even")
# What `train.fast` sets `train.xk_max_steps` to where the config leaves it unset (EVALUATION.md: at most
# 12 UNet samples per step instead of 54 on average; across three seeds the most predictable option).
FAST_XK_MAX_STEPS = 4
# The paper's SDEdit-style switch: sliders off while the timestep is above this (of MAX_TIMESTEPS). What
# previews, `generate` and a slider file's record use where nothing else is given (a family may
# recommend another: `sliders.families`, `Defaults.start_noise`).
DEFAULT_START_NOISE = 750
# Denoising steps of sliders-sample and sliders-eval (sliders-edit's are EDIT_STEPS below).
SAMPLE_STEPS = 50
EVAL_STEPS = 25
# sliders-edit: how real images are inverted (sliders.editing), and its defaults (the official
# notebook's: switch at 500, 50 DDIM steps, guidance 7.5, 10 null-text iterations per step).
INVERSIONS = ("direct", "null-text", "negative-prompt", "ddim", "guarded")
DEFAULT_INVERSION = "guarded"  # direct, falling back to no corrections for inputs the model cannot draw
EDIT_START_NOISE = 500
EDIT_STEPS = 50
EDIT_GUIDANCE = 7.5
NULL_TEXT_ITERATIONS = 10

# Official configs spell precisions out ("bfloat16"); both spellings mean the same dtype.
PRECISION_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}


def flag(default: Any, name: str, help: str, **options: Any) -> Any:
    """A config field with a command-line flag of the training commands (`sliders.commands.flags`).

    `help` is the flag's --help text, in which `{key}` stands for the dotted config key and `{default}`
    for the flag's default. `options` go to argparse as they are (`metavar`, `choices`, `action`,
    `type`); an int or float field's flag takes that type and a bool field's is --x/--no-x, unless
    `action` says otherwise. `parse="names"` or `parse="scales"` reads the flag's text as a comma
    separated list of names or of slider scales. A flag that is not given leaves the key as the YAML
    (or the default) has it.
    """
    return field(default=default, metadata={"flag": name, "help": help, **options})


@dataclass(frozen=True)
class PretrainedModelConfig:
    name_or_path: str = flag(BUILTIN_MODEL, "--pretrained_model",
                             "base model: a diffusers folder, hub id or single file (SDXL, SD 1.x/2.x, FLUX.1)")
    family: str | None = None  # sdxl, sd1, sd2; None: read from the model's files (sliders.families)
    v2: bool = False
    v_pred: bool = False
    clip_skip: int | None = None
    # FLUX.1 only: a single-file transformer (BFL naming, flux1-dev.safetensors) replacing name_or_path's;
    # the rest of the model and the transformer's config come from name_or_path (a folder or hub id).
    transformer: str | None = flag(
        None, "--transformer", "FLUX.1: a single-file transformer in BFL's naming (flux1-dev.safetensors) in place of "
        "the base model's; the rest comes from the base model ({key})", metavar="FILE")
    # FLUX.1 only: the frozen transformer's block Linears in 8bit (LLM.int8) or 4bit (NF4)
    quantize: str = flag(
        "none", "--quantize", "FLUX.1: the transformer's blocks in 8bit (LLM.int8) or 4bit (NF4) with bitsandbytes "
        "(default {default}; {key})", choices=QUANTIZE_MODES, type=str.lower)


@dataclass(frozen=True)
class NetworkConfig:
    type: str = "c3lier"
    rank: int = flag(4, "--rank", "LoRA rank ({key})")
    alpha: float = flag(1.0, "--alpha", "LoRA alpha ({key})")
    training_method: str = "noxattn"


@dataclass(frozen=True)
class TrainConfig:
    precision: str = "bf16"
    noise_scheduler: str = "ddim"
    iterations: int = flag(1000, "--iterations", "training steps ({key})")
    lr: float = flag(2e-4, "--lr", "learning rate ({key})")
    optimizer: str = "adamw"
    optimizer_args: str = ""
    lr_scheduler: str = "constant"
    max_denoising_steps: int = 50
    seed: int = flag(0, "--seed", "random seed ({key})")
    bidirectional: bool = False
    fused_denoising: bool = flag(
        False, "--fused_denoising", "fold the slider into the UNet weights for the no-grad partial denoising ({key})")
    # Fast text-slider options (docs/training.md, "Fast text sliders"); the defaults are the faithful path.
    # fast: the recommended option, xk_max_steps FAST_XK_MAX_STEPS (late spacing)
    fast: bool = flag(False, "--fast", f"the recommended fast option ({{key}}): each step's x_k in at most "
                                       f"{FAST_XK_MAX_STEPS} UNet calls")
    # reach x_k in at most this many UNet calls (DDIM jumps)
    xk_max_steps: int | None = flag(
        None, "--xk_max_steps", "reach each step's starting latents in at most this many UNet calls ({key})")
    # those jumps shorten towards x_k ("late") or are equal ("even")
    xk_spacing: str = flag("late", "--xk_spacing", "how those calls are spaced: shorter towards x_k (late, default) "
                                                   "or equal ({key})", choices=XK_SPACINGS)
    # one partial-denoising trajectory supplies x_k for this many steps
    trajectory_reuse: int = flag(
        1, "--trajectory_reuse", "one partial-denoising trajectory supplies this many steps ({key})")
    gradient_checkpointing: bool = flag(
        False, "--gradient_checkpointing", "recompute UNet activations in the slider's backward ({key})")
    # torch.compile the UNet for the no-grad calls (partial denoising, frozen)
    compile: bool = flag(
        False, "--compile", "torch.compile the UNet for the no-grad partial denoising and frozen calls ({key})")
    # FLUX (flow-matching families) only:
    flow_steps: int | None = None  # partial-denoising schedule length; None: the family's sampling steps (30)
    flow_guidance: float | None = None  # guidance embedding when training; None: the family's sampling value (3.5)
    flow_target_rescale: bool = False  # rescale the target to the positive prediction's norm (official code)
    # Image sliders: weight of a term on the difference of two folders' predictions
    # (docs/image-sliders.md); 0 is the paper's loss.
    pair_difference: float = flag(
        0.0, "--pair_difference", "add WEIGHT x the loss on two folders' prediction difference ({key}; default 0)",
        metavar="WEIGHT")
    # Other sliders present while this one trains, each 'file' (scale 1) or 'file:0,1,2' (one scale drawn
    # per step; docs/training.md, "Composing sliders"); empty: the base model alone, as the paper.
    with_sliders: tuple[str, ...] = flag(
        (), "--with_slider", "another slider present while this one trains, at one of SCALES per step (default 1); "
        "repeatable ({key})", action="append", metavar="FILE[:SCALES]")


@dataclass(frozen=True)
class SaveConfig:
    name: str = flag("slider", "--name", "slider name ({key})")
    path: str = flag("./models", "--output_dir", "where run folders go ({key})")
    per_steps: int = 500
    precision: str = "fp32"
    key_format: str = "kohya"  # kohya's SDXL names (every UI maps them), "diffusers" or "peft"


@dataclass(frozen=True)
class LoggingConfig:
    use_wandb: bool = False
    verbose: bool = False
    tensorboard_dir: str | None = None


@dataclass(frozen=True)
class OtherConfig:
    # Accepted for compatibility; PyTorch's scaled-dot-product attention is used either way.
    use_xformers: bool = False


@dataclass(frozen=True)
class DataConfig:
    """Image-pair sliders only: where the paired folders are and the multiplier of each."""

    folder_main: str = flag(".", "--folder_main", "folder holding the image sub-folders (default: current directory)")
    folders: tuple[str, ...] = flag((), "--folders", "sub-folders, comma separated, e.g. 'low,high'", parse="names")
    scales: tuple[float, ...] = flag((), "--scales", "one scale per folder, e.g. '-1,1' or '0.67,1,1.3,2'",
                                     parse="scales")
    folders_per_step: int | None = None
    cache_latents: bool = True
    # read folder_main/<stem>.txt and condition each pair on it
    captions: bool = flag(False, "--captions", "condition each pair on its caption, folder_main/<name>.txt (before "
                                               "the entry's prompt)", action="store_true")
    # Draw the training step only where its timestep lies in [low, high] (docs/image-sliders.md);
    # None: the whole schedule, as the paper.
    timestep_range: tuple[int, int] | None = flag(
        None, "--timestep_range", "train only at timesteps LOW..HIGH, e.g. 200,999 ({key}; default: all)",
        metavar="LOW,HIGH")


@dataclass(frozen=True)
class SampleConfig:
    """Previews while training: a grid of prompts x seeds at several slider scales, every `every` steps.

    `every` 0 turns previews off. No prompts: the slider's own (the first entry's target for a text
    slider, the entry's positive prompt for an image slider). `start_noise` as in `sliders-sample`.
    `steps` and `guidance_scale` None: 20 and 5.0, on FLUX.1 its sampling steps and guidance embedding
    (30, 3.5; `previews.preview_settings`).
    """

    every: int = flag(0, "--sample_every", "preview grid every N steps and at the end, into samples/ ({key}; 0: off)",
                      metavar="N")
    prompts: tuple[str, ...] = flag((), "--sample_prompt", "preview prompt ({key}; repeatable; default: the slider's own)",
                                    action="append", metavar="TEXT")
    seeds: tuple[int, ...] = (0,)
    scales: tuple[float, ...] = (-2.0, 0.0, 2.0)
    steps: int | None = None
    guidance_scale: float | None = None
    start_noise: float = float(DEFAULT_START_NOISE)
    resolution: int | None = None  # None: the training resolution


@dataclass(frozen=True)
class Config:
    prompts_file: str | None = flag(None, "--prompts_file",
                                    "YAML list of prompt entries (overrides {key} in the config)")
    pretrained_model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    other: OtherConfig = field(default_factory=OtherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


_SECTIONS = {
    "pretrained_model": PretrainedModelConfig,
    "network": NetworkConfig,
    "train": TrainConfig,
    "save": SaveConfig,
    "logging": LoggingConfig,
    "other": OtherConfig,
    "data": DataConfig,
    "sample": SampleConfig,
}


def config_field(key: str) -> dataclasses.Field:
    """The field of a dotted config key ("train.lr")."""
    section, _, name = key.rpartition(".")
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section] if section else Config)}
    return fields[name]


def flagged_keys() -> list[str]:
    """Every config key that has a command-line flag, in the order of the schema."""
    keys = []
    for top in dataclasses.fields(Config):
        if top.name in _SECTIONS:
            keys += [f"{top.name}.{f.name}" for f in dataclasses.fields(_SECTIONS[top.name]) if "flag" in f.metadata]
        elif "flag" in top.metadata:
            keys.append(top.name)
    return keys


def suggest(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or a list of the valid names."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(valid)


def _coerce(where: str, value: Any, annotation: str) -> Any:
    """Check one YAML value against a field's annotation (as a string) and convert it."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise InputError(f"config key '{where}' is empty; give it a value or remove the key")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise InputError(f"config key '{where}' must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"config key '{where}' must be a whole number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"config key '{where}' must be a whole number, got {value!r}") from None
        if not number.is_integer():
            raise InputError(f"config key '{where}' must be a whole number, got {value!r}")
        return int(number)
    if base == "float":
        if isinstance(value, bool):
            raise InputError(f"config key '{where}' must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"config key '{where}' must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InputError(f"config key '{where}' must be a finite number, got {value!r}")
        return number
    if base == "str":
        if isinstance(value, (dict, list)):
            raise InputError(f"config key '{where}' must be text, got {value!r}")
        return str(value)
    if base.startswith("tuple["):
        inner = "float" if "float" in base else "int" if "int" in base else "str"
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{where}' must be a list, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", item, inner) for i, item in enumerate(value))
    raise AssertionError(f"unhandled annotation {annotation}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise InputError(f"config section '{where}' must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise InputError(f"unknown config key '{dotted}': {suggest(str(key), list(fields))}")
        section = _SECTIONS.get(key) if cls is Config else None
        if section is not None:
            values[key] = _build(section, value or {}, dotted)
        else:
            values[key] = _coerce(dotted, value, str(fields[key].type))
    return cls(**values)


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    """Apply dotted-key overrides ("train.lr": 1e-4) to a nested dict, leaving `base` untouched."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        if section:
            merged.setdefault(section, {})
            merged[section] = {**merged[section], key: value}
        else:
            merged[key] = value
    return merged


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, line: int):
        super().__init__(f"key {key!r} appears twice (again at line {line})")
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last one
    silently, so a second `train:` section would drop the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file, turning a missing file or bad syntax into one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist; check the path")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as error:
        raise InputError(
            f"{what} '{path}' has the key {error.key!r} twice (again at line {error.line}); merge the two into one"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{what} '{path}' is not valid YAML{line}; fix the syntax") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} '{path}' is not UTF-8 text; save it as UTF-8 YAML") from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < YAML file at `path` (optional) < dotted-key `overrides`; validated.

    A relative `prompts_file` in the YAML is resolved against the working directory first and, when
    no such file exists there, against the config file's folder.
    """
    data: dict = {}
    if path is not None:
        loaded = read_yaml(path, "config file")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"config file '{path}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
        prompts = data.get("prompts_file")
        if isinstance(prompts, str) and not Path(prompts).is_absolute() and not Path(prompts).exists():
            beside = Path(path).parent / prompts
            if beside.exists():
                data = {**data, "prompts_file": str(beside)}
    merged = _merge(data, overrides or {})
    from .config_checks import _check
    return _check(_build(Config, merged, ""))


def config_to_dict(config: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON output."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def run_folder_name(config: Config) -> str:
    """`{name}_alpha{alpha}_rank{rank}_{method}`, the folder a run writes into."""
    return f"{config.save.name}_alpha{config.network.alpha}_rank{config.network.rank}_{config.network.training_method}"
