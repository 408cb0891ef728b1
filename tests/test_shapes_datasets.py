"""Shapes-world size datasets: valid paired folders whose measured size follows the folder's scale."""

import numpy as np
from PIL import Image

from sliders.data import scan_pairs
from sliders.shapes.datasets import LAYOUTS, write_size_pairs
from sliders.shapes.measure import measure
from sliders.shapes.world import SIZE_RANGE, size_word


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


def test_symmetric_folders_together_cover_the_worlds_size_range(tmp_path):
    root = write_size_pairs(tmp_path, "symmetric", count=32, seed=0)
    pairs = scan_pairs(root, ["smaller", "larger"], [-1, 1])
    low, high = (
        np.array([measure(Image.open(pairs.path(i, j))).size for j in range(32)]) for i in range(2)
    )
    # Each pair is one scene at base / 1.4 and base * 1.4 (measured within rendering tolerance).
    np.testing.assert_allclose(high / low, 1.4**2, rtol=0.03)
    # Together the folders reach both ends of the world's 0.10-0.34 range, and never leave it, so
    # the slider has somewhere to take a shape the model draws small or large.
    lo, hi = SIZE_RANGE[0] * 64, SIZE_RANGE[1] * 64
    assert lo - 0.2 < low.min() < lo + 1.5 and hi - 1.5 < high.max() < hi + 0.2
    assert size_word(float(low.mean()), 64) == "small" and size_word(float(high.mean()), 64) == "large"
