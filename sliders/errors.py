"""The exception types the command line reports as one line: bad input, and a failed training run.

Raised at the edges (config, prompt files, image folders, slider files, command-line values) with
the key or path, the bad value and the fix. The command-line layer turns it into a single line on
stderr and exit code 2; nothing else catches it.
"""


class InputError(ValueError):
    """A problem with what the user gave us, stated with its fix."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example, the loss is no longer finite)."""
