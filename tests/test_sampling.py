"""Tests for sliders.sampling: argument parsing, the start_noise switch, same-seed latents, the
cartesian product of scales, the grid, and run_sampling end to end.

All on the built-in tiny SDXL-shaped model at 64x64 with 2-4 steps, built once per module in a
temporary SLIDERS_HOME; no downloads, no GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sliders import sampling
from sliders.config import TINY_MODEL
from sliders.errors import InputError
from sliders.models import load_pipeline
from sliders.network import SliderNetwork, load_slider
from sliders.sampling import (
    GRID_NAME,
    ROW_LABEL_WIDTH,
    GenerationSettings,
    Sample,
    SliderSpec,
    generate,
    initial_latents,
    make_grid,
    parse_scales,
    parse_slider_arg,
    run_sampling,
)

SIZE = 64
PROMPT = "a photo of a person"
META = {"sliders_base_model": TINY_MODEL, "sliders_resolution": str(SIZE)}


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """This module's own SLIDERS_HOME, offline, for the whole module (so the tiny model is built once)."""
    folder = tmp_path_factory.mktemp("slh_sampling")
    # One thread: these models are tiny, and on a busy machine OpenMP workers spinning against
    # other processes made each image tens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLIDERS_HOME", str(folder))
            patch.setenv("HF_HUB_OFFLINE", "1")
            yield folder
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(home):
    pipeline = load_pipeline(TINY_MODEL)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _make_slider_file(pipe, path: Path, seed: int, metadata=META) -> Path:
    torch.manual_seed(seed)
    net = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1.0)
    for module in net.loras.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.5)
    return net.save(path, metadata)


@pytest.fixture(scope="module")
def slider_files(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slider_files")
    age = _make_slider_file(pipe, folder / "age.safetensors", 1)
    smile = _make_slider_file(pipe, folder / "smile.safetensors", 2)
    return age, smile


@pytest.fixture
def attached(pipe, slider_files):
    """Both sliders attached to the shared pipeline for one test, detached afterwards."""
    nets = [load_slider(path, pipe.unet) for path in slider_files]
    yield nets
    for net in nets:
        net.detach()


def _run(pipe, sliders, scale_lists, *, prompts=(PROMPT,), seeds=(3,), steps=4, **kwargs):
    return generate(
        pipe, sliders, scale_lists, list(prompts), list(seeds), steps=steps, height=SIZE, width=SIZE, **kwargs
    )


def _pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.image)


def _timesteps(pipe, steps):
    import copy

    schedule = copy.deepcopy(pipe.scheduler)
    schedule.set_timesteps(steps)
    return [float(t) for t in schedule.timesteps]


class RecordingPipe:
    """A transparent stand-in for the pipeline that records the `latents` of every call."""

    def __init__(self, pipe, fail_on_call: int | None = None):
        self._pipe = pipe
        self.latents: list[torch.Tensor] = []
        self.fail_on_call = fail_on_call

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.latents.append(kwargs["latents"].clone())
        if self.fail_on_call is not None and len(self.latents) == self.fail_on_call:
            raise RuntimeError("boom")
        return self._pipe(**kwargs)


# --------------------------------------------------------------------------------------------------
# parse_scales / parse_slider_arg
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("-2,0,2", (-2.0, 0.0, 2.0)),
        (" 1.5 , -0.5 ", (1.5, -0.5)),
        ("+3", (3.0,)),
        ("1e1", (10.0,)),
    ],
)
def test_parse_scales(text, expected):
    values = parse_scales(text)
    assert values == expected
    assert all(isinstance(v, float) for v in values)


def test_parse_scales_negative_zero_becomes_zero():
    (value,) = parse_scales("-0")
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


@pytest.mark.parametrize("text", ["", "  ", "a", "1,,2", "1,", "nan", "inf", "-inf", "1;2", "2,x"])
def test_parse_scales_rejects(text):
    with pytest.raises(InputError) as error:
        parse_scales(text, what="--my-scales")
    message = str(error.value)
    assert "--my-scales" in message and "\n" not in message


def test_parse_slider_arg_plain_path():
    assert parse_slider_arg("models/age.safetensors") == SliderSpec(Path("models/age.safetensors"), None)


def test_parse_slider_arg_with_scales():
    assert parse_slider_arg("age.safetensors:-2,0,2") == SliderSpec(Path("age.safetensors"), (-2.0, 0.0, 2.0))


def test_parse_slider_arg_colons_in_path_are_kept():
    # Only the last ':' can separate scales, and only when the rest parses as scales.
    assert parse_slider_arg("C:/sliders/age.safetensors") == SliderSpec(Path("C:/sliders/age.safetensors"), None)
    assert parse_slider_arg("a:b/age.safetensors:1,2") == SliderSpec(Path("a:b/age.safetensors"), (1.0, 2.0))


@pytest.mark.parametrize("text", ["age.safetensors:", "age.safetensors:2,x", "age.safetensors:nan", "", "  "])
def test_parse_slider_arg_rejects(text):
    with pytest.raises(InputError):
        parse_slider_arg(text)


# --------------------------------------------------------------------------------------------------
# generate: scale 0, non-zero scales, the switch, latents, products, cleanup
# --------------------------------------------------------------------------------------------------


def test_scale_zero_equals_no_slider_bit_for_bit(pipe, attached):
    plain = _run(pipe, [], [])
    with_slider = _run(pipe, attached[:1], [[0.0]])
    assert len(plain) == len(with_slider) == 1
    assert plain[0].multipliers == ()
    assert np.array_equal(_pixels(plain[0]), _pixels(with_slider[0]))


def test_nonzero_scales_change_the_image(pipe, attached):
    samples = _run(pipe, attached[:1], [[-2.0, 0.0, 2.0]])
    assert [s.multipliers for s in samples] == [(-2.0,), (0.0,), (2.0,)]
    minus, zero, plus = (_pixels(s) for s in samples)
    assert not np.array_equal(minus, zero)
    assert not np.array_equal(plus, zero)
    assert not np.array_equal(minus, plus)
    assert all(s.image.size == (SIZE, SIZE) for s in samples)


@pytest.mark.parametrize("start_noise", [0, 500, 501, 750, 1000])
def test_switch_off_above_start_noise_on_after(pipe, attached, start_noise):
    """The multiplier each UNet call actually saw is 0 for t > start_noise and the scale otherwise."""
    slider = attached[0]
    seen: list[tuple[float, float]] = []

    def record(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append((float(timestep), slider.multiplier))

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(pipe, [slider], [[2.0]], start_noise=start_noise)
    finally:
        handle.remove()
    timesteps = _timesteps(pipe, 4)
    assert [t for t, _ in seen] == timesteps  # one (batched CFG) UNet call per step
    assert seen == [(t, 0.0 if t > start_noise else 2.0) for t in timesteps]
    assert slider.multiplier == 0.0


def test_switch_schedule_has_both_sides(pipe):
    # The switch test above is only meaningful if the schedule straddles its start_noise values.
    timesteps = _timesteps(pipe, 4)
    assert max(timesteps) > 750 and min(timesteps) > 0
    assert 501 in timesteps


def test_start_noise_extremes(pipe, attached):
    slider = attached[0]
    assert min(_timesteps(pipe, 4)) > 0
    zero = _run(pipe, [slider], [[0.0]])[0]
    # Every timestep of this schedule is above 0, so with start_noise=0 the slider never acts.
    never = _run(pipe, [slider], [[2.0]], start_noise=0)[0]
    assert np.array_equal(_pixels(never), _pixels(zero))
    default = _run(pipe, [slider], [[2.0]], start_noise=750)[0]
    always = _run(pipe, [slider], [[2.0]], start_noise=1000)[0]
    assert not np.array_equal(_pixels(default), _pixels(zero))
    assert not np.array_equal(_pixels(always), _pixels(default))
    assert not np.array_equal(_pixels(always), _pixels(zero))


def test_same_seed_same_latents_across_scales(pipe, attached):
    recorder = RecordingPipe(pipe)
    samples = _run(recorder, attached[:1], [[-1.0, 0.0, 1.0]], seeds=(5, 6), steps=2)
    assert [s.seed for s in samples] == [5, 5, 5, 6, 6, 6]
    channels, factor = pipe.unet.config.in_channels, 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    for i, seed in enumerate((5, 6)):
        expected = torch.randn(
            (1, channels, SIZE // factor, SIZE // factor), generator=torch.Generator("cpu").manual_seed(seed)
        )
        for latents in recorder.latents[3 * i : 3 * i + 3]:
            assert torch.equal(latents, expected)
    assert not torch.equal(recorder.latents[0], recorder.latents[3])
    assert torch.equal(initial_latents(5, channels, SIZE // factor, SIZE // factor), recorder.latents[0])


def test_two_sliders_give_the_product_and_the_grid_fits(pipe, attached):
    ages, smiles = [-1.0, 1.0], [0.0, 2.0, 3.0]
    prompts = (PROMPT, "a dog")
    samples = _run(pipe, attached, [ages, smiles], prompts=prompts, seeds=(1,), steps=2)
    assert len(samples) == len(prompts) * len(ages) * len(smiles)
    combos = [(a, s) for a in ages for s in smiles]
    for p in range(len(prompts)):
        block = samples[p * len(combos) : (p + 1) * len(combos)]
        assert [s.multipliers for s in block] == combos
        assert {(s.prompt_index, s.prompt, s.seed) for s in block} == {(p, prompts[p], 1)}

    grid = make_grid(samples, ["age", "smile"])
    columns, rows = len(combos), len(prompts)
    band = grid.height - rows * SIZE
    assert grid.width == ROW_LABEL_WIDTH + columns * SIZE
    assert band > 0
    pixels = np.asarray(grid)
    for sample in samples:
        r, c = sample.prompt_index, combos.index(sample.multipliers)
        x, y = ROW_LABEL_WIDTH + c * SIZE, band + r * SIZE
        assert np.array_equal(pixels[y : y + SIZE, x : x + SIZE], _pixels(sample))
    # The label bands are white with dark text in them.
    top, left = pixels[:band, ROW_LABEL_WIDTH:], pixels[band:, :ROW_LABEL_WIDTH]
    for part in (top, left):
        assert (part == 255).mean() > 0.5 and (part < 128).any()
    assert all(not n.multiplier for n in attached)


def test_grid_labels_wrap_into_a_taller_band(pipe):
    image = Image.new("RGB", (SIZE, SIZE), "red")
    short = make_grid([Sample(0, "p", 0, (1.0,), image)], ["a"])
    long = make_grid([Sample(0, "p", 0, (1.0, 2.0, 3.0), image)], ["a_long_slider", "another_long_one", "third"])
    assert short.width == long.width == ROW_LABEL_WIDTH + SIZE
    assert long.height > short.height > SIZE


def test_multipliers_are_zero_after_sampling_and_after_errors(pipe, attached):
    for net in attached:
        net.multiplier = 0.7  # whatever was set before
    _run(pipe, attached, [[2.0], [-1.0]], steps=2)
    assert [n.multiplier for n in attached] == [0.0, 0.0]
    failing = RecordingPipe(pipe, fail_on_call=2)
    with pytest.raises(RuntimeError, match="boom"):
        _run(failing, attached, [[2.0, 3.0], [-1.0]], steps=2, start_noise=1000)
    assert [n.multiplier for n in attached] == [0.0, 0.0]


@pytest.mark.parametrize("start_noise", [750, 1000])
def test_fused_sampling_gives_the_hooked_images_and_restores_the_unet(pipe, attached, start_noise):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    grid = [[-2.0, 0.0, 2.0], [0.0, 1.5]]
    hooked = _run(pipe, attached, grid, start_noise=start_noise)
    seen: list[tuple[float, float]] = []  # (slider multiplier, its first LoRA module's) at each UNet call

    def record(module, args, kwargs):
        seen.append((attached[0].multiplier, next(iter(attached[0].loras.values())).multiplier))

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        fused = _run(pipe, attached, grid, start_noise=start_noise, fused=True)
    finally:
        handle.remove()
    assert [s.multipliers for s in fused] == [s.multipliers for s in hooked]
    for a, b in zip(hooked, fused):
        assert np.abs(_pixels(a).astype(int) - _pixels(b).astype(int)).max() <= 1  # rounding at most
    assert not np.array_equal(_pixels(fused[-1]), _pixels(fused[2]))  # the sliders did act
    # While a slider is on, its hooks are idle (module multiplier 0): the fold does the work.
    assert (2.0, 0.0) in seen and all(module == 0.0 for _, module in seen)
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [n.multiplier for n in attached] == [0.0, 0.0]
    # The fold is entered inside the pipeline's no_grad and left after it: gradients stay on.
    assert torch.is_grad_enabled()


def test_fused_sampling_restores_the_unet_after_an_error(pipe, attached):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    calls = []

    def fail_on_third_call(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    handle = pipe.unet.register_forward_pre_hook(fail_on_third_call, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _run(pipe, attached, [[2.0], [-1.0]], start_noise=1000, fused=True)
    finally:
        handle.remove()
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [n.multiplier for n in attached] == [0.0, 0.0]
    assert all(m.multiplier == 0.0 for n in attached for m in n.loras.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"start_noise": -1},
        {"start_noise": 1001},
        {"guidance_scale": float("nan")},
        {"height": 60},
        {"seeds": ()},
        {"prompts": ()},
    ],
)
def test_generate_rejects_bad_settings(pipe, kwargs):
    args = {"prompts": [PROMPT], "seeds": [0], "height": SIZE, "width": SIZE, "steps": 2, **kwargs}
    with pytest.raises(InputError):
        generate(pipe, [], [], args.pop("prompts"), args.pop("seeds"), **args)


# --------------------------------------------------------------------------------------------------
# run_sampling
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_load(inject_loader):
    """Any attempt to load a model fails the test: validation must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    inject_loader(forbidden)


def test_run_sampling_end_to_end(slider_files, tmp_path):
    age, smile = slider_files
    out = tmp_path / "out"
    specs = [SliderSpec(age, None), SliderSpec(smile, (0.0, 1.5))]
    images, grid_path = run_sampling(specs, [-2.0, 2.0], [PROMPT, "a dog"], [7],
                                     settings=GenerationSettings(output=out, steps=1, device="cpu"))
    assert len(images) == 2 * 2 * 2
    assert grid_path == out / GRID_NAME
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in images] + [GRID_NAME])
    assert images[0].name == "p0_s7_age-2_smile+0.png"
    assert images[-1].name == "p1_s7_age+2_smile+1.5.png"
    for path in images:
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)  # resolution came from the slider's metadata
    with Image.open(grid_path) as grid:
        assert grid.width == ROW_LABEL_WIDTH + 4 * SIZE
        assert grid.height > 2 * SIZE


def test_run_sampling_missing_slider_fails_before_loading(no_model_load, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_sampling([SliderSpec(tmp_path / "nope.safetensors", None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"scales": []},
        {"scales": [1.0, float("inf")]},
        {"scales": [1.0, 1.0]},
        {"prompts": []},
        {"seeds": []},
        {"seeds": ["x"]},
        {"seeds": [1, 1]},
        {"seeds": [-1]},
        {"steps": 0},
        {"start_noise": 1200},
        {"guidance_scale": float("inf")},
        {"resolution": 60},
        {"precision": "fp8"},
        {"device": "nonsense"},
    ],
)
def test_run_sampling_validates_before_loading(no_model_load, slider_files, tmp_path, change):
    args = {"scales": [1.0], "prompts": [PROMPT], "seeds": [0], "output": tmp_path / "o", **change}
    with pytest.raises(InputError) as error:
        spec = SliderSpec(slider_files[0], None)
        run_sampling([spec], args.pop("scales"), args.pop("prompts"), args.pop("seeds"),
                     settings=GenerationSettings(**args))
    assert "\n" not in str(error.value)


def test_run_sampling_rejects_non_safetensors_and_file_output(no_model_load, slider_files, tmp_path):
    pickle_like = tmp_path / "age.ckpt"
    pickle_like.write_bytes(b"not a slider")
    with pytest.raises(InputError, match="safetensors"):
        run_sampling([SliderSpec(pickle_like, None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=tmp_path / "o"))
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="readable"):
        run_sampling([SliderSpec(garbage, None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=tmp_path / "o"))
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        run_sampling([SliderSpec(slider_files[0], None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=a_file))


def test_run_sampling_needs_a_base_model(no_model_load, pipe, tmp_path):
    path = _make_slider_file(pipe, tmp_path / "anon.safetensors", 3, metadata={})
    with pytest.raises(InputError, match="--pretrained_model"):
        run_sampling([SliderSpec(path, None)], [1.0], [PROMPT], [0], settings=GenerationSettings(output=tmp_path / "o"))


def test_run_sampling_slider_that_does_not_fit(slider_files, tmp_path):
    # One key names a layer the tiny UNet lacks: the slider belongs to another base model.
    foreign = tmp_path / "foreign.safetensors"
    save_file(
        {
            "lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_no_such_layer.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_no_such_layer.alpha": torch.tensor(1.0),
        },
        str(foreign),
        metadata=META,
    )
    with pytest.raises(InputError, match="lacks"):
        run_sampling([SliderSpec(foreign, None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=tmp_path / "o", steps=1))
    # A key that exists but with the wrong shape.
    from safetensors.torch import load_file

    tensors = load_file(str(slider_files[0]))
    key = next(k for k in tensors if k.endswith("lora_down.weight") and tensors[k].ndim == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    misfit = tmp_path / "misfit.safetensors"
    save_file(tensors, str(misfit), metadata=META)
    with pytest.raises(InputError, match="shape"):
        run_sampling([SliderSpec(misfit, None)], [1.0], [PROMPT], [0],
                     settings=GenerationSettings(output=tmp_path / "o2", steps=1))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_write_png_leaves_nothing_on_error(tmp_path):
    class Broken:
        def save(self, path, format):
            with open(path, "wb") as stream:
                stream.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        sampling._write_png(Broken(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    sampling._write_png(Image.new("RGB", (4, 4)), tmp_path / "y.png")
    assert [p.name for p in tmp_path.iterdir()] == ["y.png"]


def test_written_files_get_the_usual_permissions_and_leave_no_temporary(tmp_path):
    import os
    import stat

    from PIL import Image

    from sliders.sampling import write_png

    previous = os.umask(0o022)
    try:
        path = write_png(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
