"""Command-line flags made from the config's field metadata (`config.flag`), and the config
overrides they give: a training flag is declared once, on its config field."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..config import config_field
from ..parsing import parse_names, parse_scales

if TYPE_CHECKING:
    from ..cli import _Parser

# What a field's `parse` names: the flag's text to the key's value (an `InputError` naming the flag).
_PARSERS = {"names": parse_names, "scales": parse_scales}
# The argparse type of a field's flag, by the field's annotation.
_TYPES = {"int": int, "float": float}


def add_config_flags(parser: _Parser, keys: Iterable[str],
                     defaults: Mapping[str, Any] | None = None) -> None:
    """Add the flags of these dotted config keys to `parser`, in this order.

    A flag's default is None (not given: the key stays as the config has it) unless `defaults` gives
    one for its key, for a command that uses the flag without a config.
    """
    for key in keys:
        field = config_field(key)
        options = dict(field.metadata)
        flag, text, parse = options.pop("flag"), options.pop("help"), options.pop("parse", None)
        base = str(field.type).replace("| None", "").strip()
        if parse is None and "action" not in options:
            if base == "bool":
                options["action"] = argparse.BooleanOptionalAction
            elif base in _TYPES:
                options["type"] = _TYPES[base]
        default = (defaults or {}).get(key)
        shown = default if default is not None else f"the config value, {field.default}"
        action = parser.add_argument(flag, default=default, help=text.format(key=key, default=shown), **options)
        parser.config_keys[key] = action.dest


def config_overrides(parser: _Parser, args: argparse.Namespace) -> dict[str, Any]:
    """The dotted-key overrides (`config.load_config`) of the config flags `parser` has; None: not given."""
    overrides = {}
    for key, dest in parser.config_keys.items():
        metadata = config_field(key).metadata
        value = getattr(args, dest)
        if value is not None and "parse" in metadata:
            value = _PARSERS[metadata["parse"]](value, metadata["flag"])
        overrides[key] = value
    return overrides
