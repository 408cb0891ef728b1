"""Tests for sliders.grids: the layout of `draw_grid`, and `make_grid` with a first column of input
images and rows labelled with text of the caller's choosing. Plain PIL images; no model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sliders.grids import LABEL_PAD, ROW_LABEL_WIDTH, draw_grid, make_grid
from sliders.sampling import Sample

SIZE = 32


def _image(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    # Mid-range colours: no pixel is white (the background) or near black (the text).
    pixels = np.random.default_rng(seed).integers(140, 230, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _samples() -> list[Sample]:
    """Two prompts x one seed x three scales of one slider."""
    return [Sample(p, f"prompt {p}", 7, (m,), _image(10 * p + int(m) + 1)) for p in range(2) for m in (-1.0, 0.0, 1.0)]


def _band(grid: Image.Image, rows: int) -> int:
    return grid.height - rows * SIZE


def test_inputs_fill_a_labelled_first_column_and_the_samples_move_one_column_right():
    samples = _samples()
    inputs = {(0, 7): _image(100), (1, 7): _image(101)}
    grid = make_grid(samples, ["age"], inputs=inputs)
    plain = make_grid(samples, ["age"])
    assert grid.width == ROW_LABEL_WIDTH + 4 * SIZE and grid.height == plain.height
    pixels, band = np.asarray(grid), _band(grid, 2)
    for r, key in enumerate(((0, 7), (1, 7))):
        y = band + r * SIZE
        assert np.array_equal(pixels[y : y + SIZE, ROW_LABEL_WIDTH : ROW_LABEL_WIDTH + SIZE], np.asarray(inputs[key]))
    for sample in samples:
        x = ROW_LABEL_WIDTH + (1 + (-1.0, 0.0, 1.0).index(sample.multipliers[0])) * SIZE
        y = band + sample.prompt_index * SIZE
        assert np.array_equal(pixels[y : y + SIZE, x : x + SIZE], np.asarray(sample.image))
    # The sample columns keep their labels; the first column has its own, and no label leaves it white.
    first = (slice(0, band), slice(ROW_LABEL_WIDTH, ROW_LABEL_WIDTH + SIZE))
    assert np.array_equal(pixels[:band, ROW_LABEL_WIDTH + SIZE :], np.asarray(plain)[:band, ROW_LABEL_WIDTH:])
    assert (pixels[first] < 128).any()
    unlabelled = np.asarray(make_grid(samples, ["age"], inputs=inputs, input_label=""))
    assert (unlabelled[first] == 255).all()
    assert not np.array_equal(np.asarray(make_grid(samples, ["age"], inputs=inputs, input_label="source"))[first],
                              pixels[first])


def test_every_row_needs_its_input():
    with pytest.raises(ValueError, match=r"no input image for the rows .*\(1, 7\)"):
        make_grid(_samples(), ["age"], inputs={(0, 7): _image(100)})


def test_row_labels_replace_prompt_and_seed_and_their_last_line_is_always_shown():
    samples = _samples()
    default = np.asarray(make_grid(samples, ["age"]))
    # The default labels are the prompt and "seed N": given explicitly, the same pixels.
    same = make_grid(samples, ["age"], row_labels={(0, 7): ("prompt 0", "seed 7"), (1, 7): ("prompt 1", "seed 7")})
    assert np.array_equal(np.asarray(same), default)
    band = _band(same, 2)

    long_text = "a long prompt that cannot fit beside one small image " * 4
    a = np.asarray(make_grid(samples, ["age"], row_labels={(0, 7): (long_text, "cat.png")}))
    b = np.asarray(make_grid(samples, ["age"], row_labels={(0, 7): (long_text, "dog.png")}))
    # Only row 0's label changed; row 1 keeps its prompt and seed, the images stay where they were.
    assert np.array_equal(a[band + SIZE :], default[band + SIZE :])
    assert np.array_equal(a[:, ROW_LABEL_WIDTH:], default[:, ROW_LABEL_WIDTH:])
    differs = np.argwhere((a != b).any(axis=-1))
    assert len(differs)  # the last line is drawn although the text alone would fill the row
    assert differs[:, 0].min() >= band and differs[:, 0].max() < band + SIZE
    assert differs[:, 1].max() < ROW_LABEL_WIDTH


def test_draw_grid_sizes_cells_by_the_largest_image_and_leaves_missing_cells_white():
    wide, tall = _image(1, (48, 20)), _image(2, (20, 40))
    grid = draw_grid({(0, 0): wide, (1, 1): tall}, [("first", "a.png"), ("second", "b.png")], ["input", "+1"])
    pixels = np.asarray(grid)
    band = grid.height - 2 * 40
    assert grid.width == ROW_LABEL_WIDTH + 2 * 48 and band > 0
    assert np.array_equal(pixels[band : band + 20, ROW_LABEL_WIDTH : ROW_LABEL_WIDTH + 48], np.asarray(wide))
    assert np.array_equal(pixels[band + 40 : band + 80, ROW_LABEL_WIDTH + 48 : ROW_LABEL_WIDTH + 68], np.asarray(tall))
    assert (pixels[band : band + 40, ROW_LABEL_WIDTH + 48 :] == 255).all()  # cell (0, 1): none given
    assert (pixels[band + 40 :, ROW_LABEL_WIDTH : ROW_LABEL_WIDTH + 48] == 255).all()  # cell (1, 0)


def test_draw_grid_keeps_a_long_last_line_inside_the_label_band():
    name = "a_very_long_file_name_of_an_input_image_that_goes_on_and_on.png"
    grid = np.asarray(draw_grid({(1, 0): _image(3)}, [("", name), ("x", "y")], ["input"]))
    band = grid.shape[0] - 2 * SIZE
    row = grid[band : band + SIZE]
    assert (row[:, : ROW_LABEL_WIDTH - LABEL_PAD] < 128).any()
    assert (row[:, ROW_LABEL_WIDTH - LABEL_PAD :] == 255).all()  # row 0 has no image: nothing spilled there


def test_draw_grid_refuses_cells_outside_its_labels_and_an_empty_table():
    with pytest.raises(ValueError, match=r"cell \(0, 2\) is outside the 1 rows and 2 columns"):
        draw_grid({(0, 2): _image(1)}, [("p", "seed 0")], ["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        draw_grid({}, [("p", "seed 0")], ["a"])
