"""The exception types the command line reports as one line: bad input, and a failed training run.

Raised at the edges (config, prompt files, image folders, slider files, command-line values) with
the key or path, the bad value and the fix. The command-line layer turns it into a single line on
stderr and exit code 2; nothing else catches it.
"""


class InputError(ValueError):
    """A problem with what the user gave us, stated with its fix."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example, the loss is no longer finite)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; the command exits with 143."""


class Interrupted(Exception):
    """A run stopped by a signal after keeping its work; the message says what was kept and where."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class OutputError(RuntimeError):
    """An output could not be written (disk full, folder removed); the message says what was kept and where."""


class PeerFailed(RuntimeError):
    """Another process of a multi-process run failed; the main process reports it, this one stops quietly."""
