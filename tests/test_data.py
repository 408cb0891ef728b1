"""Tests for sliders.data: folder scanning and validation, image loading, VAE latents.

Everything is built in tmp_path with small PIL images and a tiny locally initialised VAE; no
downloads, no GPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.data import IMAGE_EXTENSIONS, LatentSource, PairedFolders, load_image, scan_pairs
from sliders.errors import InputError


def _save(path, mode="RGB", size=(40, 30), color=(200, 100, 50), **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **kwargs)
    return path


def _make_set(root, folders=("low", "mid", "high"), stems=("b", "a", "c"), ext=".png"):
    for k, folder in enumerate(folders):
        for j, stem in enumerate(stems):
            _save(root / folder / f"{stem}{ext}", color=(20 * k, 30 * j, 90))
    return root


# --------------------------------------------------------------------------------------------------
# scan_pairs: valid sets
# --------------------------------------------------------------------------------------------------


def test_valid_set_scans_sorted(tmp_path):
    _make_set(tmp_path)
    pairs = scan_pairs(tmp_path, ["low", "mid", "high"], [-1, 0.5, 2])
    assert isinstance(pairs, PairedFolders)
    assert pairs.root == tmp_path
    assert pairs.folders == ("low", "mid", "high")
    assert pairs.scales == (-1.0, 0.5, 2.0)
    assert all(isinstance(s, float) for s in pairs.scales)
    assert pairs.stems == ("a", "b", "c")
    for i, folder in enumerate(pairs.folders):
        for j, stem in enumerate(pairs.stems):
            assert pairs.files[i][j] == tmp_path / folder / f"{stem}.png"
            assert pairs.path(i, j) == pairs.files[i][j]


def test_mixed_case_extensions_and_ignored_files(tmp_path):
    _save(tmp_path / "low" / "x.PNG")
    _save(tmp_path / "low" / "y.JpG")
    _save(tmp_path / "low" / "z.webp")
    _save(tmp_path / "high" / "x.png")
    _save(tmp_path / "high" / "y.jpeg")
    _save(tmp_path / "high" / "z.WEBP")
    # None of these count as images.
    (tmp_path / "low" / "notes.txt").write_text("caption")
    (tmp_path / "high" / ".DS_Store").write_bytes(b"\x00\x01")
    _save(tmp_path / "high" / ".hidden.png")
    (tmp_path / "low" / "w.gif").write_bytes(b"GIF89a")
    (tmp_path / "low" / "sub.png").mkdir()
    pairs = scan_pairs(tmp_path, ["low", "high"], [-1, 1])
    assert pairs.stems == ("x", "y", "z")
    assert [p.name for p in pairs.files[0]] == ["x.PNG", "y.JpG", "z.webp"]
    assert [p.name for p in pairs.files[1]] == ["x.png", "y.jpeg", "z.WEBP"]
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".webp"}


def test_str_path_accepted_and_tuple_inputs(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    pairs = scan_pairs(str(tmp_path), ("low", "high"), (-2.0, 2.0))
    assert pairs.folders == ("low", "high")


# --------------------------------------------------------------------------------------------------
# scan_pairs: every bad input is one InputError naming what is wrong
# --------------------------------------------------------------------------------------------------


def _error(tmp_path, folders, scales) -> str:
    with pytest.raises(InputError) as info:
        scan_pairs(tmp_path, folders, scales)
    return str(info.value)


def test_missing_folder_main(tmp_path):
    message = _error(tmp_path / "nope", ["low", "high"], [-1, 1])
    assert "nope" in message and "folder_main" in message


def test_folder_main_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "not a folder" in _error(tmp_path / "file", ["low"], [1])


def test_missing_folder(tmp_path):
    _make_set(tmp_path, folders=("low",))
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert "'high'" in message and "does not exist" in message


def test_stem_missing_names_lacking_and_holding_folder(tmp_path):
    _make_set(tmp_path)
    (tmp_path / "high" / "b.png").unlink()
    message = _error(tmp_path, ["low", "mid", "high"], [-1, 1, 2])
    assert "folder 'high' has no file 'b'" in message
    assert "'low'" in message
    assert "same file names" in message


def test_stem_missing_with_two_folders(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    (tmp_path / "high" / "c.png").unlink()
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert message.startswith("folder 'high' has no file 'c' (present in 'low' as 'c.png')")


def test_extra_file_in_one_folder_only(tmp_path):
    _make_set(tmp_path)
    _save(tmp_path / "mid" / "extra.jpg")
    message = _error(tmp_path, ["low", "mid", "high"], [-1, 1, 2])
    assert "'mid'" in message and "extra.jpg" in message and "no other folder" in message


def test_two_files_with_one_stem(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    _save(tmp_path / "low" / "a.jpg")
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert "'low'" in message and "a.jpg" in message and "a.png" in message


def test_corrupt_image_named(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    (tmp_path / "high" / "c.png").write_bytes(b"this is not a png")
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert "'high'" in message and "c.png" in message


def test_truncated_image_named(tmp_path):
    _make_set(tmp_path, folders=("low", "high"), ext=".jpg")
    path = tmp_path / "low" / "a.jpg"
    # Keep only the header: it opens, but the pixel data is missing.
    path.write_bytes(path.read_bytes()[:200])
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert "'low'" in message and "a.jpg" in message


def test_count_mismatch(tmp_path):
    _make_set(tmp_path)
    message = _error(tmp_path, ["low", "mid", "high"], [-1, 1])
    assert "3 folders" in message and "2 scales" in message


@pytest.mark.parametrize("bad", [0, 0.0, -0.0])
def test_zero_scale(tmp_path, bad):
    _make_set(tmp_path, folders=("low", "high"))
    message = _error(tmp_path, ["low", "high"], [-1, bad])
    assert "'high'" in message and "0" in message


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_scale(tmp_path, bad):
    _make_set(tmp_path, folders=("low", "high"))
    message = _error(tmp_path, ["low", "high"], [bad, 1])
    assert "'low'" in message and "finite" in message


@pytest.mark.parametrize("bad", ["1", None, True])
def test_non_number_scale(tmp_path, bad):
    _make_set(tmp_path, folders=("low", "high"))
    assert "'high'" in _error(tmp_path, ["low", "high"], [-1, bad])


def test_duplicate_folder_names(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    message = _error(tmp_path, ["low", "high", "low"], [-1, 1, -2])
    assert "'low'" in message and "twice" in message


def test_same_folder_by_two_spellings(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    message = _error(tmp_path, ["low", "high", "low/."], [-1, 1, -2])
    assert "same folder" in message


def test_empty_folder(tmp_path):
    _make_set(tmp_path, folders=("low",))
    (tmp_path / "high").mkdir()
    (tmp_path / "high" / "readme.txt").write_text("no images here")
    message = _error(tmp_path, ["low", "high"], [-1, 1])
    assert "'high'" in message and "no images" in message


def test_folders_given_as_string(tmp_path):
    _make_set(tmp_path, folders=("low", "high"))
    assert "list" in _error(tmp_path, "low", [1])


def test_empty_folders_list(tmp_path):
    assert "empty" in _error(tmp_path, [], [])


def test_captions_read_per_stem_in_stem_order(tmp_path):
    _make_set(tmp_path)
    for stem, text in (("a", "a red circle\n"), ("b", "  a blue\n square "), ("c", "a cat")):
        (tmp_path / f"{stem}.txt").write_text(text, encoding="utf-8")
    pairs = scan_pairs(tmp_path, ["low", "high"], [-1, 1], captions=True)
    assert pairs.stems == ("a", "b", "c")
    assert pairs.captions == ("a red circle", "a blue square", "a cat")  # whitespace folded to one line
    assert scan_pairs(tmp_path, ["low", "high"], [-1, 1]).captions is None  # off unless asked


@pytest.mark.parametrize(
    "write, expected",
    [
        ({"a": "x", "b": "y"}, "caption file '.*c.txt' for image name 'c' does not exist.*turn data.captions off"),
        ({"a": "x", "b": "y", "c": " \n "}, "caption file '.*c.txt' is empty"),
        ({"a": "x", "b": "y", "c": b"\xff\xfe\x00bad"}, "caption file '.*c.txt' cannot be read as UTF-8"),
    ],
)
def test_caption_problems_name_the_file(tmp_path, write, expected):
    _make_set(tmp_path)
    for stem, text in write.items():
        path = tmp_path / f"{stem}.txt"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=expected):
        scan_pairs(tmp_path, ["low", "high"], [-1, 1], captions=True)


# --------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------


def _check_tensor(tensor, resolution):
    assert isinstance(tensor, torch.Tensor)
    assert tensor.shape == (3, resolution, resolution)
    assert tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


@pytest.mark.parametrize(
    "mode, color",
    [
        ("RGB", (10, 20, 30)),
        ("RGBA", (10, 20, 30, 128)),
        ("L", 77),
        ("P", 5),
        ("LA", (77, 200)),
        ("CMYK", (10, 20, 30, 40)),
        ("1", 1),
    ],
)
def test_modes_load_as_rgb(tmp_path, mode, color):
    ext = ".jpg" if mode == "CMYK" else ".png"
    path = _save(tmp_path / f"img{ext}", mode=mode, color=color)
    _check_tensor(load_image(path, 16), 16)


def test_rgba_composited_on_white(tmp_path):
    path = _save(tmp_path / "clear.png", mode="RGBA", color=(0, 0, 0, 0))
    tensor = load_image(path, 8)
    assert torch.allclose(tensor, torch.ones_like(tensor))


def test_sixteen_bit_grayscale_rescaled(tmp_path):
    values = np.zeros((30, 40), dtype=np.uint16)
    values[:, 20:] = 65535
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    path = tmp_path / "deep.png"
    image.save(path)
    tensor = load_image(path, 30)
    _check_tensor(tensor, 30)
    # Left of the crop is black, right is white: PIL's plain convert would clip it all to white.
    assert tensor[:, :, 2].max() < -0.99
    assert tensor[:, :, -3].min() > 0.99


def test_non_square_is_centre_cropped(tmp_path):
    image = Image.new("RGB", (90, 30), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 30, 30))
    image.paste((0, 0, 255), (60, 0, 90, 30))
    path = tmp_path / "flag.png"
    image.save(path)
    tensor = load_image(path, 30)
    _check_tensor(tensor, 30)
    assert torch.allclose(tensor, torch.ones_like(tensor), atol=1e-6)
    # At a smaller resolution the middle is still white (edges may blend a little with the filter).
    small = load_image(path, 10)
    assert small[:, :, 2:-2].min() > 0.95


def test_tall_image_keeps_middle_and_upscales(tmp_path):
    image = Image.new("RGB", (10, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 10, 10, 20))
    path = tmp_path / "tall.png"
    image.save(path)
    tensor = load_image(path, 40)
    _check_tensor(tensor, 40)
    # Lanczos rings a little at the black/white edges, so only the rows clear of them are exact.
    assert tensor[:, 10:-10, :].min() > 0.99
    assert tensor[:, 2:-2, :].mean() > 0.9


def test_exif_orientation_applied(tmp_path):
    # 40 wide, 20 tall: top half red, bottom half blue. Orientation 6 means "rotate 90 degrees
    # clockwise to display", so the displayed image is 20 wide, 40 tall: left blue, right red.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 10, 40, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as check:
        assert check.size == (40, 20)
        assert check.getexif()[0x0112] == 6
    tensor = load_image(path, 20)
    _check_tensor(tensor, 20)
    # The centre crop of a 20x40 displayed image is its middle 20 rows: left blue, right red.
    left, right = tensor[:, :, :8], tensor[:, :, -8:]
    assert left[2].mean() > 0.8 and left[0].mean() < -0.8
    assert right[0].mean() > 0.8 and right[2].mean() < -0.8


def test_load_image_corrupt_file_is_input_error(tmp_path):
    path = tmp_path / "high" / "broken.png"
    path.parent.mkdir()
    path.write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.png"):
        load_image(path, 8)


@pytest.mark.parametrize("bad", [0, -8, 8.5, "64"])
def test_load_image_bad_resolution(tmp_path, bad):
    path = _save(tmp_path / "a.png")
    with pytest.raises(InputError, match="resolution"):
        load_image(path, bad)


# --------------------------------------------------------------------------------------------------
# LatentSource
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    return vae.eval()


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("low", "high"):
        for stem in ("a", "b"):
            pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            path = tmp_path / folder / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return scan_pairs(tmp_path, ["low", "high"], [-1, 1])


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _posterior(tiny_vae, pairs, folder_index, stem_index, resolution=16):
    """The VAE posterior of one image, encoded by hand."""
    image = load_image(pairs.path(folder_index, stem_index), resolution).unsqueeze(0)
    with torch.no_grad():
        return tiny_vae.encode(image).latent_dist


def test_latent_shape(tiny_vae, pairs):
    factor = 2 ** (len(tiny_vae.config.block_out_channels) - 1)
    resolution = 16
    source = LatentSource(pairs, tiny_vae, resolution, cache=False)
    latents = source.get(0, 0, _generator())
    assert latents.shape == (1, tiny_vae.config.latent_channels, resolution // factor, resolution // factor)
    assert latents.dtype == torch.float32
    assert latents.device == torch.device("cpu")


def test_every_call_draws_a_fresh_posterior_sample(tiny_vae, pairs):
    for cache in (True, False):
        source = LatentSource(pairs, tiny_vae, 16, cache=cache)
        generator = _generator(3)
        first = source.get(0, 0, generator)
        assert not torch.equal(source.get(0, 0, generator), first)
        assert torch.equal(source.get(0, 0, _generator(3)), first)  # the generator alone decides the sample


def test_cached_equals_uncached_for_the_same_generator(tiny_vae, pairs):
    cached = LatentSource(pairs, tiny_vae, 16, cache=True)
    cached.prepare()
    uncached = LatentSource(pairs, tiny_vae, 16, cache=False)
    uncached.prepare()  # a no-op
    cached_generator, uncached_generator = _generator(3), _generator(3)
    for _ in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(cached.get(i, j, cached_generator), uncached.get(i, j, uncached_generator))


def test_the_sample_is_drawn_from_the_posterior(tiny_vae, pairs):
    posterior = _posterior(tiny_vae, pairs, 1, 0)
    scaling = tiny_vae.config.scaling_factor
    source = LatentSource(pairs, tiny_vae, 16)
    # One draw is `(mean + std * e) * scaling` with `e` the generator's next standard normal...
    generator = _generator(5)
    noise = torch.randn(posterior.mean.shape, generator=_generator(5))
    torch.testing.assert_close(source.get(1, 0, generator), (posterior.mean + posterior.std * noise) * scaling)
    # ...so many draws average to the posterior mean, with its spread.
    draws = torch.cat([source.get(1, 0, generator) for _ in range(4000)])
    error = (draws.mean(0) - posterior.mean[0] * scaling).abs()
    assert bool((error < 5 * posterior.std[0] * scaling / math.sqrt(len(draws))).all())
    torch.testing.assert_close(draws.std(0), posterior.std[0] * scaling, rtol=0.1, atol=0.0)


def test_cache_not_corrupted_by_caller(tiny_vae, pairs):
    source = LatentSource(pairs, tiny_vae, 16)
    first = source.get(1, 1, _generator())
    expected = first.clone()
    first.mul_(0)
    assert torch.equal(source.get(1, 1, _generator()), expected)


def test_different_images_and_generators_differ(tiny_vae, pairs):
    source = LatentSource(pairs, tiny_vae, 16, cache=False)
    assert not torch.equal(source.get(0, 0, _generator()), source.get(0, 1, _generator()))
    assert not torch.equal(source.get(0, 0, _generator()), source.get(1, 0, _generator()))
    assert not torch.equal(source.get(0, 0, _generator()), source.get(0, 0, _generator(1)))


def test_latent_formula_with_scaling_and_shift(tiny_vae, pairs):
    # Same encode as LatentSource, done by hand: the shift factor is subtracted before scaling.
    source = LatentSource(pairs, tiny_vae, 16, cache=False)
    plain = source.get(0, 0, _generator())
    scaling = tiny_vae.config.scaling_factor

    class ShiftedConfig(dict):
        __getattr__ = dict.get

    shifted_vae = type("Shifted", (), {})()
    shifted_vae.config = ShiftedConfig(dict(tiny_vae.config), shift_factor=0.25)
    shifted_vae.encode = tiny_vae.encode
    shifted_vae.parameters = tiny_vae.parameters
    shifted = LatentSource(pairs, shifted_vae, 16, cache=False).get(0, 0, _generator())
    assert torch.allclose(shifted, plain - 0.25 * scaling, atol=1e-6)


def test_resolution_not_multiple_of_factor(tiny_vae, pairs):
    with pytest.raises(InputError, match="multiple"):
        LatentSource(pairs, tiny_vae, 15)
