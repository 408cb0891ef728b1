"""Tests for the shapes world: rendered attributes must come back out of the pixels.

Recovery is checked on 200 random scenes from a fixed seed, clean and with pixel noise. The
tolerances are stated next to each check; they are what the measurement is claimed to achieve.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sliders.errors import InputError
from sliders.shapes import (
    BACKGROUND,
    MARGIN_PX,
    PALETTE,
    SHAPES,
    SIZE_WORDS,
    Scene,
    caption,
    centroid_shift,
    measure,
    outside_change,
    random_scene,
    render,
    render_dataset,
    shape_bounds,
    shape_mask,
    size_bounds,
    size_word,
)

N_SCENES = 200
SEED = 1234

# Stated tolerances. Size is the equal-area radius in pixels; centroid in pixels.
SHAPE_MIN_ACCURACY = 0.98
SIZE_REL_TOL = 0.05  # |measured - true| <= 5% of the true size ...
SIZE_ABS_TOL = 0.5  # ... or 0.5 px, whichever is larger
CENTROID_TOL_PX = 0.5
NOISE = 8  # uniform integer noise in [-8, 8] per channel, whole image


@pytest.fixture(scope="module")
def dataset():
    return render_dataset(N_SCENES, SEED)


def _size_ok(measured: float, true: float) -> bool:
    return abs(measured - true) <= max(SIZE_REL_TOL * true, SIZE_ABS_TOL)


def _check_recovery(images, scenes):
    measurements = [measure(image) for image in images]
    colour_hits = [m.colour == s.colour for m, s in zip(measurements, scenes)]
    shape_hits = [m.shape == s.shape for m, s in zip(measurements, scenes)]
    size_bad = [(s, m.size) for m, s in zip(measurements, scenes) if not _size_ok(m.size, s.size)]
    centre_err = [math.hypot(m.cx - s.cx, m.cy - s.cy) for m, s in zip(measurements, scenes)]
    assert all(colour_hits), f"colour wrong on {colour_hits.count(False)} of {len(scenes)}"
    assert np.mean(shape_hits) >= SHAPE_MIN_ACCURACY, f"shape accuracy {np.mean(shape_hits):.3f}"
    assert not size_bad, f"size out of tolerance on {len(size_bad)} scenes, e.g. {size_bad[:3]}"
    assert max(centre_err) <= CENTROID_TOL_PX, f"centroid off by up to {max(centre_err):.2f} px"


def test_dataset_covers_every_attribute(dataset):
    scenes = [s for _, s, _ in dataset]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(PALETTE)
    assert {size_word(s) for s in scenes} == set(SIZE_WORDS)


def test_measure_recovers_clean_renders(dataset):
    _check_recovery([image for image, _, _ in dataset], [s for _, s, _ in dataset])


def test_measure_recovers_noisy_renders(dataset):
    rng = np.random.default_rng(7)
    noisy = []
    for image, _, _ in dataset:
        arr = np.asarray(image).astype(np.int16)
        arr = arr + rng.integers(-NOISE, NOISE + 1, size=arr.shape)
        noisy.append(np.clip(arr, 0, 255).astype(np.uint8))
    _check_recovery(noisy, [s for _, s, _ in dataset])


def test_measure_recovers_off_grey_background(dataset):
    # A constant tint over the whole image: the background is no longer BACKGROUND exactly.
    tint = np.array([-7, 3, 8])
    tinted = [
        np.clip(np.asarray(image).astype(np.int16) + tint, 0, 255).astype(np.uint8)
        for image, _, _ in dataset[:50]
    ]
    _check_recovery(tinted, [s for _, s, _ in dataset[:50]])


def test_measured_size_gives_the_same_word_mostly(dataset):
    words = [
        size_word(measure(image).size, s.resolution) == size_word(s) for image, s, _ in dataset
    ]
    # Only scenes within a hair of a bin edge may flip.
    assert np.mean(words) >= 0.97


def test_other_resolution():
    rng = np.random.default_rng(3)
    for _ in range(10):
        scene = random_scene(rng, resolution=128)
        m = measure(render(scene))
        assert render(scene).size == (128, 128)
        assert (m.colour, m.shape) == (scene.colour, scene.shape)
        assert _size_ok(m.size, scene.size)
        assert math.hypot(m.cx - scene.cx, m.cy - scene.cy) <= CENTROID_TOL_PX


def test_pil_and_array_inputs_agree(dataset):
    image = dataset[0][0]
    assert measure(image) == measure(np.asarray(image))
    assert measure(image.convert("RGBA")) == measure(image)


def test_captions_have_the_right_words():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for colour in PALETTE:
            for word in SIZE_WORDS:
                scene = random_scene(rng, shape=shape, colour=colour, size_word=word)
                assert caption(scene) == f"a {word} {colour} {shape}"
                lo, hi = size_bounds(word, scene.resolution)
                assert lo <= scene.size <= hi


def test_caption_example():
    scene = Scene(shape="circle", colour="red", size=7.0, cx=32.0, cy=32.0)
    assert caption(scene) == "a small red circle"


def test_size_bins_are_ordered_and_contiguous():
    bounds = [size_bounds(word, 64) for word in SIZE_WORDS]
    for (lo, hi), (next_lo, _) in zip(bounds, bounds[1:]):
        assert lo < hi
        assert hi == pytest.approx(next_lo)
    assert bounds[-1][0] < bounds[-1][1]
    sizes = np.linspace(bounds[0][0] + 1e-6, bounds[-1][1] - 1e-6, 50)
    indices = [SIZE_WORDS.index(size_word(s, 64)) for s in sizes]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2}
    # Out-of-range sizes go to the end bins.
    assert size_word(0.5, 64) == "small"
    assert size_word(60.0, 64) == "large"


def test_size_word_needs_resolution_for_bare_size():
    with pytest.raises(InputError):
        size_word(10.0)


def test_render_is_deterministic(dataset):
    image, scene, _ = dataset[3]
    assert render(scene).tobytes() == render(scene).tobytes() == image.tobytes()
    again = render_dataset(5, SEED)
    for (a, sa, ca), (b, sb, cb) in zip(again, dataset[:5]):
        assert sa == sb and ca == cb and a.tobytes() == b.tobytes()


def test_render_is_rgb_and_sized(dataset):
    image, scene, _ = dataset[0]
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB" and image.size == (scene.resolution, scene.resolution)


def test_scenes_never_leave_the_image(dataset):
    rng = np.random.default_rng(11)
    scenes = [s for _, s, _ in dataset]
    # The largest shapes are the ones that could fall out.
    scenes += [
        random_scene(rng, shape=shape, size_word="large") for shape in SHAPES for _ in range(30)
    ]
    for scene in scenes:
        x0, y0, x1, y1 = shape_bounds(scene)
        assert x0 >= MARGIN_PX - 1e-9 and y0 >= MARGIN_PX - 1e-9
        assert x1 <= scene.resolution - MARGIN_PX + 1e-9
        assert y1 <= scene.resolution - MARGIN_PX + 1e-9
    for image, _, _ in dataset:
        arr = np.asarray(image)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        assert (border == np.array(BACKGROUND, dtype=np.uint8)).all()


def test_fixing_one_attribute_keeps_the_others():
    free = random_scene(np.random.default_rng(5))
    other = next(s for s in SHAPES if s != free.shape)
    fixed = random_scene(np.random.default_rng(5), shape=other)
    assert fixed.shape == other
    assert (fixed.colour, fixed.size) == (free.colour, free.size)


def test_empty_background_measures_as_none():
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    m = measure(blank)
    assert m.colour == "none" and m.shape == "none"
    assert m.area == 0.0 and m.size == 0.0
    assert (m.cx, m.cy) == (32.0, 32.0)
    assert not shape_mask(blank).any()


def test_shape_mask_matches_the_shape(dataset):
    for image, scene, _ in dataset:
        mask = shape_mask(image)
        x0, y0, x1, y1 = shape_bounds(scene)
        ys, xs = np.nonzero(mask)
        # Only pixels the shape's box touches.
        assert xs.min() >= math.floor(x0) and xs.max() < math.ceil(x1)
        assert ys.min() >= math.floor(y0) and ys.max() < math.ceil(y1)
        # Edge pixels join once about a quarter covered, so the mask holds at least the shape's
        # area (2% slack) and at most one extra pixel per unit of the box's perimeter.
        area = math.pi * scene.size**2
        perimeter = 2 * ((x1 - x0) + (y1 - y0))
        assert 0.98 * area <= mask.sum() <= area + perimeter


def test_outside_change():
    scene = Scene(shape="square", colour="blue", size=10.0, cx=32.0, cy=32.0)
    image = render(scene)
    mask = shape_mask(image)
    assert outside_change(image, image.copy(), mask) == 0.0

    # Recolouring the shape alone leaves the outside untouched.
    recoloured = render(Scene(shape="square", colour="red", size=10.0, cx=32.0, cy=32.0))
    assert outside_change(image, recoloured, mask | shape_mask(recoloured)) < 0.01

    altered = np.asarray(image).copy()
    altered[:8, :, :] = 0  # black band across the top background
    change = outside_change(image, altered, mask)
    expected = (8 * 64 * 3 * 235) / (255.0 * 3 * (~mask).sum())
    assert change > 0
    assert change == pytest.approx(expected, rel=1e-6)
    assert outside_change(image, altered, np.ones((64, 64), dtype=bool)) == 0.0


def test_centroid_shift():
    a = Scene(shape="circle", colour="green", size=9.0, cx=30.0, cy=30.0)
    b = Scene(shape="circle", colour="green", size=9.0, cx=33.0, cy=34.0)
    assert centroid_shift(measure(render(a)), measure(render(b))) == pytest.approx(5.0, abs=0.3)
    assert centroid_shift(measure(render(a)), measure(render(a))) == 0.0


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError):
        Scene(shape="hexagon", colour="red", size=5.0, cx=10.0, cy=10.0)
    with pytest.raises(InputError):
        Scene(shape="circle", colour="purple", size=5.0, cx=10.0, cy=10.0)
    with pytest.raises(InputError):
        random_scene(np.random.default_rng(0), size_word="huge")
    with pytest.raises(InputError):
        measure(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(InputError):
        outside_change(
            np.zeros((8, 8, 3), np.uint8), np.zeros((9, 9, 3), np.uint8), np.zeros((8, 8), bool)
        )
