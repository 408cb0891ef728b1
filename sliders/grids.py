"""Labelled image grids: images in rows and columns, a label band above the columns and one left of the rows.

Holds the layout (a fixed row-label width, column labels wrapped into a band as tall as the longest
needs), the font and its word wrap, `draw_grid`, which lays out any table of images, and `make_grid`,
which lays out generated samples the way `sliders-sample`, `sliders-eval` and the training previews
show them, optionally after a first column of given images (the inputs of an edit). It does not
generate images and does not write files (see `outputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from PIL import Image

    from .generation import Sample

# Layout, in pixels. The row-label band has a fixed width so a grid's size depends only on the image
# size, the number of cells and how many lines the column labels wrap to.
LABEL_PAD = 4
ROW_LABEL_WIDTH = 160
# Longer row texts are cut before wrapping: a whole prompt would not fit beside one image anyway.
ROW_LABEL_CHARS = 80
INPUT_LABEL = "input"


def combination_label(slider_names: Sequence[str], multipliers: Sequence[float]) -> str:
    """'age +2, smile -1' for a combination of scales ('no slider' when there are none)."""
    if not slider_names:
        return "no slider"
    return ", ".join(f"{name} {value:+g}" for name, value in zip(slider_names, multipliers))


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def drawable(text: str, font) -> str:
    """`text` as `font` can draw it: unchanged for FreeType fonts, Latin-1 with '?' for the bitmap font."""
    from PIL import ImageFont

    # The bitmap fallback font (Pillow without FreeType) only encodes Latin-1.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _line_height(font) -> int:
    return font.getbbox("Ag")[3] + 2


def _wrap(text: str, width: int, font, draw) -> list[str]:
    """Greedy word wrap to `width` pixels; words wider than a line are split by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for char in word:
            if current and draw.textlength(current + char, font=font) > width:
                lines.append(current)
                current = ""
            current += char
    if current:
        lines.append(current)
    return lines or [""]


def _fit(line: str, width: int, font, draw) -> str:
    """One line cut to `width` pixels, ending in '...' when cut."""
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "...", font=font) > width:
        line = line[:-1]
    return line + "..."


def _row_lines(text: str, last: str, height: int, width: int, font, draw) -> list[str]:
    """`text` cut and wrapped into the lines a row's height leaves, then `last`, which is always shown."""
    available = max(1, (height - 2 * LABEL_PAD) // _line_height(font))
    short = text if len(text) <= ROW_LABEL_CHARS else text[: ROW_LABEL_CHARS - 3].rstrip() + "..."
    lines = _wrap(drawable(short, font), width, font, draw) if short.strip() else []
    room = available - 1
    if len(lines) > room:
        lines = lines[:room]
        if lines:
            lines[-1] = lines[-1].rstrip(".") + "..."
    return lines + [_fit(drawable(last, font), width, font, draw)]


def draw_grid(
    cells: Mapping[tuple[int, int], "Image.Image"],
    row_labels: Sequence[tuple[str, str]],
    column_labels: Sequence[str],
) -> "Image.Image":
    """Images in a labelled table: `cells[(row, column)]` for rows and columns counted from 0.

    Each cell is as large as the largest image, which is pasted at its top left; a cell without an
    image stays white. A white band on top holds each column's label, wrapped to the cell width;
    a white band of ROW_LABEL_WIDTH pixels on the left holds each row's label `(text, last line)`:
    the text cut and wrapped into the lines the row's height leaves, then the last line, always
    shown (a prompt and "seed 7", or an input file's name and its seed).
    """
    from PIL import Image, ImageDraw

    if not cells:
        raise ValueError("draw_grid needs at least one image")
    for row, column in cells:
        if not (0 <= row < len(row_labels) and 0 <= column < len(column_labels)):
            raise ValueError(
                f"cell ({row}, {column}) is outside the {len(row_labels)} rows and {len(column_labels)} columns labelled"
            )
    cell_width = max(image.width for image in cells.values())
    cell_height = max(image.height for image in cells.values())
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _line_height(font)

    column_lines = [_wrap(drawable(label, font), cell_width - 2 * LABEL_PAD, font, measure) for label in column_labels]
    band = 2 * LABEL_PAD + line_height * max(len(lines) for lines in column_lines)
    size = (ROW_LABEL_WIDTH + cell_width * len(column_labels), band + cell_height * len(row_labels))
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(column_lines):
        for k, line in enumerate(lines):
            position = (ROW_LABEL_WIDTH + c * cell_width + LABEL_PAD, LABEL_PAD + k * line_height)
            draw.text(position, line, fill="black", font=font)
    for r, (text, last) in enumerate(row_labels):
        lines = _row_lines(text, last, cell_height, ROW_LABEL_WIDTH - 2 * LABEL_PAD, font, measure)
        for k, line in enumerate(lines):
            draw.text((LABEL_PAD, band + r * cell_height + LABEL_PAD + k * line_height), line, fill="black", font=font)
    for (r, c), image in cells.items():
        grid.paste(image.convert("RGB"), (ROW_LABEL_WIDTH + c * cell_width, band + r * cell_height))
    return grid


def make_grid(
    samples: Sequence["Sample"],
    slider_names: Sequence[str],
    *,
    row_labels: Mapping[tuple[int, int], tuple[str, str]] | None = None,
    inputs: Mapping[tuple[int, int], "Image.Image"] | None = None,
    input_label: str = INPUT_LABEL,
) -> "Image.Image":
    """The samples as a labelled grid: a column per scale combination, a row per prompt and seed.

    Columns are labelled with their combination ('age +2, smile -1'), rows with their prompt and
    seed; both follow the order in which they first appear in `samples`. Rows are keyed by
    `(prompt_index, seed)`: `row_labels` gives a row its own `(text, last line)` instead (an
    input file's name, say), and `inputs` puts an image before the samples of every row, in a
    first column labelled `input_label`.
    """
    if not samples:
        raise ValueError("make_grid needs at least one sample")
    rows = list(dict.fromkeys((s.prompt_index, s.seed) for s in samples))
    columns = list(dict.fromkeys(s.multipliers for s in samples))
    labels = [combination_label(slider_names, combo) for combo in columns]
    first = 0
    cells: dict[tuple[int, int], "Image.Image"] = {}
    if inputs is not None:
        missing = [key for key in rows if key not in inputs]
        if missing:
            raise ValueError(f"no input image for the rows (prompt index, seed) {missing}")
        labels.insert(0, input_label)
        first = 1
        cells.update(((r, 0), inputs[key]) for r, key in enumerate(rows))
    prompts = {(s.prompt_index, s.seed): s.prompt for s in samples}
    row_texts = [
        row_labels[key] if row_labels is not None and key in row_labels else (prompts[key], f"seed {key[1]}")
        for key in rows
    ]
    for sample in samples:
        cells[rows.index((sample.prompt_index, sample.seed)), first + columns.index(sample.multipliers)] = sample.image
    return draw_grid(cells, row_texts, labels)
