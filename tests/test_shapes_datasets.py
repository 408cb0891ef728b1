"""Shapes-world size datasets: valid paired folders whose measured size follows the folder's scale."""

import numpy as np
from PIL import Image

from sliders.data import scan_pairs
from sliders.shapes.datasets import LAYOUTS, write_size_pairs
from sliders.shapes.measure import measure
from sliders.shapes.world import size_word


def test_every_layout_is_a_valid_pair_set_ordered_by_scale(tmp_path):
    for layout, folders in LAYOUTS.items():
        root = write_size_pairs(tmp_path, layout, count=6, seed=1)
        names = [name for name, _ in folders]
        scales = [scale for _, scale in folders]
        pairs = scan_pairs(root, names, scales, captions=True)
        assert len(pairs.stems) == 6
        for stem in range(6):
            measured = [measure(Image.open(pairs.path(i, stem))) for i in range(len(names))]
            sizes = [m.size for m in measured]
            assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
            assert len({(m.colour, m.shape) for m in measured}) == 1  # only the size changes
            # The caption names what the pair shares, never the size.
            assert pairs.captions[stem] == f"a {measured[0].colour} {measured[0].shape}"
            centres = np.array([(m.cx, m.cy) for m in measured])
            assert np.abs(centres - centres[0]).max() < 1.0


def test_generation_is_deterministic(tmp_path):
    a = write_size_pairs(tmp_path / "a", "symmetric", count=3, seed=4)
    b = write_size_pairs(tmp_path / "b", "symmetric", count=3, seed=4)
    for path in sorted(a.rglob("*.png")):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()


def test_symmetric_pair_spans_small_to_large_around_medium(tmp_path):
    root = write_size_pairs(tmp_path, "symmetric", count=16, seed=2)
    pairs = scan_pairs(root, ["smaller", "larger"], [-1, 1])
    low, high = (
        np.mean([measure(Image.open(pairs.path(i, j))).size for j in range(16)]) for i in range(2)
    )
    # Geometric middle of the pair = the base radius, inside "medium" (0.18-0.26 of 64 px).
    assert 0.18 * 64 < np.sqrt(low * high) < 0.26 * 64
    assert size_word(low, 64) == "small" and size_word(high, 64) == "large"
