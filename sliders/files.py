"""Writing output files atomically, with the permissions any other file of the user gets.

A file is written under a hidden temporary name in its own folder and renamed into place, so a
reader never sees half a file. `tempfile.mkstemp` creates that file readable by its owner only
(0600); it is given the usual mode (0666 less the umask) before the rename, so sliders, images and
reports can be read by whoever could read any other file the user writes. safetensors reports a
failed write (a full disk) as its own `SafetensorError`, not an `OSError`: `atomic_tensor_path`
raises it as the `OSError` it wraps, so one `except OSError` catches every failed write. No torch
here.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _usual_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path` to write; on success it becomes `path`, else it is removed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, _usual_mode())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_path`; returns the path."""
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return Path(path)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextmanager
def atomic_tensor_path(path: str | Path) -> Iterator[str]:
    """`atomic_path` for a safetensors writer: a write the system refused is raised as an `OSError`.

    safetensors wraps the system's error in a `SafetensorError` ("I/O error: No space left on
    device (os error 28)"); that one becomes `OSError(28, ...)` (EIO when no number is given). A
    `SafetensorError` about the tensors themselves is raised unchanged: it is not a failed write.
    """
    from safetensors import SafetensorError

    with atomic_path(path) as temporary:
        try:
            yield temporary
        except SafetensorError as error:
            text = str(error)
            number = _OS_ERROR.search(text)
            if number is None and "I/O error" not in text:
                raise
            code = int(number.group(1)) if number else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from error
