"""The output folder of an image-making command: file names, atomic PNG writes, and what is kept.

Holds the names images are written under (`image_name` for generated images, `edit_name` for edits,
`distinct_stems` so that two sliders or inputs never share a label), `write_png` (a temporary file
renamed into place), `owned_output` (the folder checked, locked against a second run and cleared of a
killed run's leftovers) and `kept_on_interrupt` (Ctrl-C or SIGTERM writes the grid of what was made and
says what was kept). It draws no grid (see `grids`), generates nothing (see `generation`) and decides
nothing about a run (see `planning`); `sliders-sample`, `sliders-eval` and `sliders-edit` all write
through it.
"""

from __future__ import annotations

import re
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .errors import Interrupted, OutputError, Terminated
from .files import atomic_path
from .grids import make_grid
from .runs import RunLock, check_writable_folder, remove_leftovers

if TYPE_CHECKING:
    from PIL import Image

    from .generation import Sample

GRID_NAME = "grid.png"


# --------------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """`text` with every run of characters other than letters, digits, '.', '+' and '-' made one '_'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "slider"


def image_name(sample: "Sample", slider_names: Sequence[str]) -> str:
    """'p0_s42_age+2_smile-1.png': prompt index, seed, each slider's name and scale; filesystem-safe."""
    parts = [f"p{sample.prompt_index}", f"s{sample.seed}"]
    parts += [f"{safe_name(name)}{value:+g}" for name, value in zip(slider_names, sample.multipliers)]
    return "_".join(parts) + ".png"


def edit_name(image: str, multipliers: Sequence[float], slider_names: Sequence[str]) -> str:
    """'photo_age+2_smile-1.png': the input's name, then each slider's name and scale."""
    return "_".join([safe_name(image)] + [f"{safe_name(n)}{v:+g}" for n, v in zip(slider_names, multipliers)]) + ".png"


def distinct_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made distinct ('age', 'age_2') so labels and file names never collide."""
    names: list[str] = []
    for path in paths:
        name, count = path.stem, 2
        while name in names:
            name, count = f"{path.stem}_{count}", count + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_png(image: "Image.Image", path: Path) -> Path:
    """Save as PNG through a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def write_kept(image: "Image.Image", path: Path, kept: Sequence["Sample"]) -> Path:
    """`write_png`, with a failed write (disk full, folder removed) one `OutputError` saying what is kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_png(image, path)
    except OSError as error:
        raise OutputError(f"could not write '{path}' ({error.strerror or error}); kept the {len(kept)} images "
                          f"written before it in '{path.parent}'") from None


def check_output_folder(output: Path) -> Path:
    """An output folder that can be made and written, checked before any model loads (nothing is left behind)."""
    return check_writable_folder(output, "output folder", "choose another --output")


@contextmanager
def owned_output(output: Path, is_main: bool) -> Iterator[None]:
    """On the main process: check the output folder, then hold its lock for the block (a second
    sampler or evaluation on the same folder is refused, naming this one) and remove the temporary
    files a killed run left there. The other processes write nothing."""
    if not is_main:
        yield
        return
    check_output_folder(output)
    created = not output.exists()
    try:
        with RunLock(output, "output folder", "choose another --output"):
            remove_leftovers(output)
            yield
    finally:
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # a run that wrote nothing leaves no folder behind


@contextmanager
def kept_on_interrupt(samples: list["Sample"], names: Sequence[str], folder: Path, grid: Path,
                      write: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM in the block: write the grid of the `samples` made so far (their images are
    written already), or call `write` to write it, and raise `Interrupted` saying what was kept. A
    failed write says what was kept."""
    try:
        yield
    except KeyboardInterrupt as stop:
        number = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        if not samples:
            raise Interrupted("no image was written", number) from None
        try:
            if write is None:
                write_png(make_grid(samples, names), grid)
            else:
                write()
        except OSError as error:
            raise Interrupted(f"kept {len(samples)} images in '{folder}'; the grid could not be written "
                              f"({error.strerror or error})", number) from None
        raise Interrupted(f"kept {len(samples)} images in '{folder}' and their grid '{grid}'", number) from None
