"""Prompt entries of a text slider: defaults, validation and preservation-attribute expansion.

A prompts file is a YAML list of entries (SPEC section 2). Defaults are filled in before anything
else, unknown keys are refused with the closest valid key, and `--attributes` repeats every entry
once per attribute. The `targets:` prompt files of ai-toolkit's slider trainer (also read by kohya's
`sdxl_train_leco.py`) are turned into the same entries. No torch here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import MAX_GUIDANCE, MAX_RESOLUTION, read_yaml, suggest
from .errors import InputError

ACTIONS = ("enhance", "erase")
MAX_BATCH_SIZE = 64
MAX_WEIGHT_RATIO = 100  # ai-toolkit target weights: each target's entries are repeated weight / smallest times


@dataclass(frozen=True)
class PromptEntry:
    target: str
    positive: str
    unconditional: str = ""
    neutral: str = ""
    action: str = "erase"
    guidance_scale: float = 1.0
    resolution: int = 512
    dynamic_resolution: bool = False
    batch_size: int = 1
    dynamic_crops: bool = False

    @property
    def sign(self) -> int:
        """+1 for enhance, -1 for erase: the `s` of the guided target `n + s * eta * (p - u)`."""
        return 1 if self.action == "enhance" else -1

    def roles(self) -> tuple[str, str, str, str]:
        return (self.target, self.positive, self.unconditional, self.neutral)


KEYS = tuple(f.name for f in dataclasses.fields(PromptEntry))


def _text(where: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise InputError(f"{where} must be text, got {value!r}")
    return str(value)


def _number(where: str, value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise InputError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{where} must be a finite number, got {value!r}")
    if kind is int:
        if not number.is_integer():
            raise InputError(f"{where} must be a whole number, got {value!r}")
        return int(number)
    return number


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    return value


def make_entry(raw: Any, where: str = "prompt entry") -> PromptEntry:
    """One validated entry from a mapping, with SPEC defaults filled in first."""
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping with at least 'target', got {raw!r}")
    for key in raw:
        if key not in KEYS:
            raise InputError(f"{where} has unknown key '{key}': {suggest(str(key), KEYS)}")
    if "target" not in raw or raw["target"] is None:
        raise InputError(f"{where} has no 'target'; add the concept the slider acts on, e.g. target: \"person\"")
    target = _text(f"{where} key 'target'", raw["target"])
    positive = _text(f"{where} key 'positive'", raw.get("positive", target))
    unconditional = _text(f"{where} key 'unconditional'", raw.get("unconditional", ""))
    neutral = _text(f"{where} key 'neutral'", raw.get("neutral", unconditional))
    action = _text(f"{where} key 'action'", raw.get("action", "erase")).lower()
    if action not in ACTIONS:
        raise InputError(f"{where} key 'action' is {action!r}; use 'enhance' or 'erase'")
    resolution = _number(f"{where} key 'resolution'", raw.get("resolution", 512), int)
    if resolution < 64 or resolution % 8 or resolution > MAX_RESOLUTION:
        raise InputError(f"{where} key 'resolution' is {resolution}; use a multiple of 8 from 64 to {MAX_RESOLUTION} "
                         "(SDXL sliders train at 512 to 1024)")
    batch_size = _number(f"{where} key 'batch_size'", raw.get("batch_size", 1), int)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InputError(f"{where} key 'batch_size' is {batch_size}; use 1 or more (at most {MAX_BATCH_SIZE})")
    guidance_scale = _number(f"{where} key 'guidance_scale'", raw.get("guidance_scale", 1.0), float)
    if not 0 <= guidance_scale <= MAX_GUIDANCE:
        raise InputError(f"{where} key 'guidance_scale' is {guidance_scale:g}; use 0 to {MAX_GUIDANCE} (the official "
                         "configs use 1 to 4; 'action' sets the direction)")
    return PromptEntry(
        target=target,
        positive=positive,
        unconditional=unconditional,
        neutral=neutral,
        action=action,
        guidance_scale=guidance_scale,
        resolution=resolution,
        dynamic_resolution=_flag(f"{where} key 'dynamic_resolution'", raw.get("dynamic_resolution", False)),
        batch_size=batch_size,
        dynamic_crops=_flag(f"{where} key 'dynamic_crops'", raw.get("dynamic_crops", False)),
    )


def load_prompts(path: str | Path) -> list[PromptEntry]:
    """Every entry of a prompts file, validated; an empty file is an error.

    A mapping with `targets:` (or `slider: {targets: ...}`) is an ai-toolkit/kohya slider prompt
    file, read by `entries_from_targets`.
    """
    data = read_yaml(path, "prompts file")
    if isinstance(data, dict) and isinstance(data.get("slider"), dict) and "targets" in data["slider"]:
        data = data["slider"]
    if isinstance(data, dict) and "targets" in data:
        return entries_from_targets(data, f"prompts file '{path}'")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise InputError(f"prompts file '{path}' must be a non-empty YAML list of entries with a 'target' each")
    return [make_entry(raw, f"prompts file '{path}' entry {i + 1}") for i, raw in enumerate(data)]


def parse_attributes(text: str | Sequence[str] | None) -> list[str]:
    """'male, female' -> ['male', 'female']; empty parts are dropped."""
    if text is None:
        return []
    parts: Iterable[str] = text.split(",") if isinstance(text, str) else text
    return [part.strip() for part in parts if part and part.strip()]


def expand_attributes(entries: Sequence[PromptEntry], attributes: Sequence[str]) -> list[PromptEntry]:
    """Repeat each entry once per attribute with "<attribute> " prefixed to all four prompt roles.

    This is the paper's disentanglement objective: training on "male person"/"female person" keeps
    an age slider from also changing gender. Without attributes the entries are returned unchanged.
    """
    if not attributes:
        return list(entries)

    def prefix(attribute: str, text: str) -> str:
        return f"{attribute} {text}".strip()

    return [
        dataclasses.replace(
            entry,
            target=prefix(attribute, entry.target),
            positive=prefix(attribute, entry.positive),
            unconditional=prefix(attribute, entry.unconditional),
            neutral=prefix(attribute, entry.neutral),
        )
        for entry in entries
        for attribute in attributes
    ]


def distinct_prompts(entries: Sequence[PromptEntry]) -> list[str]:
    """Every distinct prompt text of the entries, in first-seen order (each is encoded once)."""
    seen: dict[str, None] = {}
    for entry in entries:
        for text in entry.roles():
            seen.setdefault(text, None)
    return list(seen)


# ai-toolkit's slider prompt files (`targets:`), as kohya's LECO trainer also reads them.
TARGETS_FILE_KEYS = ("targets", "neutrals", "neutral", "guidance_scale", "resolution", "resolutions",
                     "dynamic_resolution", "batch_size", "dynamic_crops", "multiplier", "weight", "anchors")
TARGET_KEYS = ("target_class", "positive", "negative", "multiplier", "weight", "shuffle", "neutral", "neutrals",
               "guidance_scale", "resolution", "resolutions", "dynamic_resolution", "batch_size", "dynamic_crops")
_SHARED = ("guidance_scale", "dynamic_resolution", "batch_size", "dynamic_crops")


def _square(where: str, value: Any) -> Any:
    # kohya writes a resolution as one number or [width, height]; our entries are square.
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and value[0] == value[1]:
            return value[0]
        raise InputError(f"{where} is {value!r}; sliders train square images, give one number such as 512")
    return value


def entries_from_targets(data: dict, where: str) -> list[PromptEntry]:
    """Our entries from an ai-toolkit/kohya `targets:` slider file, with the meaning each field has there.

    Per target and per neutral prompt (the target's `neutrals`/`neutral`, else the file's, else ""):
    `target_class` is our `target`; with `positive` and `negative` the slider moves from `negative`
    towards `positive` (`positive`, `unconditional: negative`, `enhance`); with `positive` only it
    adds it (`enhance`), with `negative` only it takes it away (`positive: negative`, `erase`).
    Those trainers also train the -multiplier end with the sign flipped, which is our
    `train.bidirectional: true`. `multiplier: -1` swaps the direction; other multipliers are
    refused (sliders are trained at +-1 and scaled when used). `weight` (the loss weight there) is
    the number of times the target's entries are repeated, so each is sampled in proportion to its
    weight (the same expected gradient up to the learning rate); weights must be whole multiples of
    the smallest. `anchors` and `shuffle: true` have no counterpart and are refused.
    """
    for key in data:
        if key not in TARGETS_FILE_KEYS:
            raise InputError(f"{where} has unknown key '{key}': {suggest(str(key), TARGETS_FILE_KEYS)}")
    if data.get("anchors"):
        raise InputError(f"{where} has 'anchors', which sliders do not train; use --attributes to preserve concepts")
    targets = data["targets"]
    if not isinstance(targets, list) or not targets:
        raise InputError(f"{where} key 'targets' must be a non-empty list of targets with target_class/positive/negative")
    groups: list[tuple[list[PromptEntry], float]] = []
    for i, target in enumerate(targets):
        here = f"{where} target {i + 1}"
        if not isinstance(target, dict):
            raise InputError(f"{here} must be a mapping with target_class, positive and/or negative, got {target!r}")
        for key in target:
            if key not in TARGET_KEYS:
                raise InputError(f"{here} has unknown key '{key}': {suggest(str(key), TARGET_KEYS)}")
        if target.get("shuffle"):
            raise InputError(f"{here} has shuffle: true, which sliders do not do; remove it")
        merged = {**{k: data[k] for k in (*_SHARED, "resolution", "resolutions", "multiplier", "weight") if k in data},
                  **target}
        groups.append((_target_entries(merged, data, here), _number(f"{here} key 'weight'", merged.get("weight", 1.0), float)))
    return _weighted(groups, where)


def _target_entries(target: dict, data: dict, where: str) -> list[PromptEntry]:
    positive = _text(f"{where} key 'positive'", target.get("positive")).strip()
    negative = _text(f"{where} key 'negative'", target.get("negative")).strip()
    if not positive and not negative:
        raise InputError(f"{where} has neither 'positive' nor 'negative'; give the concept to add or to take away")
    multiplier = _number(f"{where} key 'multiplier'", target.get("multiplier", 1.0), float)
    if abs(multiplier) != 1.0:
        raise InputError(
            f"{where} key 'multiplier' is {multiplier:g}; sliders train at +1 (and -1 with train.bidirectional), "
            "use 1 or -1 and set the strength when sampling"
        )
    if positive and negative:
        role = {"positive": positive, "unconditional": negative, "action": "enhance"}
    elif positive:
        role = {"positive": positive, "unconditional": "", "action": "enhance"}
    else:
        role = {"positive": negative, "unconditional": "", "action": "erase"}
    if multiplier < 0:  # the slider's +1 end is their -1 end: the guided difference changes sign
        role["action"] = "erase" if role["action"] == "enhance" else "enhance"
    if "neutrals" in target:
        neutrals = target["neutrals"]
    elif "neutral" in target:
        neutrals = [target["neutral"]]
    elif "neutrals" in data:
        neutrals = data["neutrals"]
    else:
        neutrals = [data.get("neutral", "")]
    if not isinstance(neutrals, list) or not neutrals:
        raise InputError(f"{where} 'neutrals' must be a non-empty list of prompts")
    resolutions = target.get("resolutions", [target.get("resolution", 512)])
    if not isinstance(resolutions, list) or not resolutions:
        raise InputError(f"{where} 'resolutions' must be a non-empty list such as [512]")
    entries = []
    for neutral in neutrals:
        for resolution in resolutions:
            raw = {"target": _text(f"{where} key 'target_class'", target.get("target_class", "")), **role,
                   "neutral": _text(f"{where} neutral", neutral),
                   "resolution": _square(f"{where} resolution", resolution)}
            raw.update({k: target[k] for k in _SHARED if k in target})
            entries.append(make_entry(raw, where))
    return entries


def _weighted(groups: list[tuple[list[PromptEntry], float]], where: str) -> list[PromptEntry]:
    """Repeat each target's entries in proportion to its weight (uniform sampling then follows it)."""
    weights = [weight for _, weight in groups]
    if any(weight <= 0 for weight in weights):
        raise InputError(f"{where} has a target weight of 0 or less; every weight must be positive")
    smallest = min(weights)
    if max(weights) / smallest > MAX_WEIGHT_RATIO:
        raise InputError(f"{where} target weights {', '.join(f'{w:g}' for w in weights)} differ by more than "
                         f"{MAX_WEIGHT_RATIO} times (each target's prompts are repeated in that ratio); "
                         "use weights such as 1 and 2")
    entries = []
    for group, weight in groups:
        ratio = weight / smallest
        if abs(ratio - round(ratio)) > 1e-6:
            raise InputError(
                f"{where} target weights {', '.join(f'{w:g}' for w in weights)} are not whole multiples of the smallest; "
                "use weights such as 1 and 2"
            )
        entries.extend(group * int(round(ratio)))
    return entries
