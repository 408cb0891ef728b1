"""Prompt entries of a text slider: defaults, validation and preservation-attribute expansion.

A prompts file is a YAML list of entries (SPEC section 2). Defaults are filled in before anything
else, unknown keys are refused with the closest valid key, and `--attributes` repeats every entry
once per attribute. No torch here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import read_yaml, suggest
from .errors import InputError

ACTIONS = ("enhance", "erase")


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
    if resolution < 64 or resolution % 8:
        raise InputError(f"{where} key 'resolution' is {resolution}; use a multiple of 8 of at least 64")
    batch_size = _number(f"{where} key 'batch_size'", raw.get("batch_size", 1), int)
    if batch_size < 1:
        raise InputError(f"{where} key 'batch_size' is {batch_size}; use 1 or more")
    return PromptEntry(
        target=target,
        positive=positive,
        unconditional=unconditional,
        neutral=neutral,
        action=action,
        guidance_scale=_number(f"{where} key 'guidance_scale'", raw.get("guidance_scale", 1.0), float),
        resolution=resolution,
        dynamic_resolution=_flag(f"{where} key 'dynamic_resolution'", raw.get("dynamic_resolution", False)),
        batch_size=batch_size,
        dynamic_crops=_flag(f"{where} key 'dynamic_crops'", raw.get("dynamic_crops", False)),
    )


def load_prompts(path: str | Path) -> list[PromptEntry]:
    """Every entry of a prompts file, validated; an empty file is an error."""
    data = read_yaml(path, "prompts file")
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
