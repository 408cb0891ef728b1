"""Command-line entry points: `sliders-train`, `sliders-train-images`, `sliders-sample`, `sliders-eval`,
`sliders-edit`, `sliders-convert`, `sliders-export`.

With `sliders.commands`, the only code that reads argv, prints, or exits. This module holds what every
command shares: the parser that reports a bad flag as one line, the logging set-up, and `_run`, which
turns every way a command can end into one line on stderr and an exit code (an `InputError`: exit
code 2). Each command's flags and body are in its module of `sliders.commands`, imported when the
command runs; they too import torch and the models only after the flags are read, so `--help` and a
flag error stay quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from .errors import InputError, Interrupted, OutputError, PeerFailed, Terminated, TrainingError

logger = logging.getLogger("sliders")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2."""

    # Flags whose values often start with '-' ("--scales -2,0,2"), which argparse would read as a flag.
    NEGATIVE_VALUE_FLAGS = ("--scales",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # config key -> its flag's argparse dest, for the flags `commands.flags.add_config_flags` added
        self.config_keys: dict[str, str] = {}

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        joined = []
        i = 0
        while i < len(argv):
            if argv[i] in self.NEGATIVE_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
                joined.append(f"{argv[i]}={argv[i + 1]}")
                i += 2
            else:
                joined.append(argv[i])
                i += 1
        return super().parse_args(joined, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")


def _setup_logging(verbose: bool) -> None:
    """Our messages always; what a dependency logs or warns only with -v.

    Called before any heavy import, so what a dependency logs while it is imported (bitsandbytes'
    kernel notices, say) is already covered. The root logger's level is what every dependency's
    logger inherits; ours sets its own level, so it alone is heard. Warnings are routed through
    logging (the `py.warnings` logger), so the same level decides for them.
    """
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    logging.captureWarnings(True)
    logger.setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        # diffusers and transformers keep a level and a handler of their own: hand their records to
        # the root logger instead, at its level.
        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity(logging.NOTSET)
            library.disable_default_handler()
            library.enable_propagation()
            library.disable_progress_bar()  # "Loading weights" and pipeline-component bars


def _speaks() -> bool:
    """Whether this process prints: not one of the other processes of `accelerate launch` (its RANK is
    set by the launcher; `distributed.speaks`, without importing torch before logging is set up)."""
    return int(os.environ.get("RANK", "0")) == 0


def _terminate(signum, frame) -> None:
    raise Terminated()


def _run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a command; every way it can end is one line on stderr and an exit code.

    SIGTERM is raised as `Terminated` (a KeyboardInterrupt) so that it keeps work as Ctrl-C does.
    """
    previous = None
    if not _speaks():
        # A process other than the main one of `accelerate launch`: the main one prints, also the error
        # of another process (`distributed.Processes.check`).
        sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv)
    except PeerFailed:
        return 1
    except InputError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except TrainingError as error:
        sys.stderr.write(f"training stopped: {error}\n")
        return 1
    except OutputError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    except Interrupted as error:
        sys.stderr.write(f"interrupted: {error}\n")
        return error.exit_code
    except Terminated:
        sys.stderr.write("terminated\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "sliders.distributed" in sys.modules:  # only a command that set up processes has any to close
            sys.modules["sliders.distributed"].finish()


def train_main(argv: Sequence[str] | None = None) -> int:
    from .commands.train import train

    return _run(train, argv)


def train_images_main(argv: Sequence[str] | None = None) -> int:
    from .commands.train import train_images

    return _run(train_images, argv)


def sample_main(argv: Sequence[str] | None = None) -> int:
    from .commands.images import sample

    return _run(sample, argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    return _run(_eval, argv)


def _eval(argv: Sequence[str] | None) -> int:
    """sliders-eval without `_run`: what goes wrong raises."""
    from .commands.evaluate import evaluate

    return evaluate(argv)


def edit_main(argv: Sequence[str] | None = None) -> int:
    from .commands.images import edit

    return _run(edit, argv)


def convert_main(argv: Sequence[str] | None = None) -> int:
    from .commands.conversion import convert

    return _run(convert, argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    from .commands.conversion import export

    return _run(export, argv)


def console_train() -> None:
    sys.exit(train_main())


def console_train_images() -> None:
    sys.exit(train_images_main())


def console_sample() -> None:
    sys.exit(sample_main())


def console_eval() -> None:
    sys.exit(eval_main())


def console_edit() -> None:
    sys.exit(edit_main())


def console_convert() -> None:
    sys.exit(convert_main())


def console_export() -> None:
    sys.exit(export_main())
