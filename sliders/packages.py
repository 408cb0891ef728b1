"""Optional packages: import one that a setting asks for, or say how to install it.

Optimizers (bitsandbytes, prodigyopt, dadaptation) and loggers (tensorboard, wandb) live in extras
that a plain install lacks; the setting that chose one is named in the InputError with the pip
command. No torch here.
"""

from __future__ import annotations

import importlib

from .errors import InputError


def import_optional(module: str, package: str, what: str, install: str | None = None):
    """Import an optional package chosen by a setting; missing, it is an InputError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{what} needs the package '{package}'; install it with: pip install {install or package}") from None
