"""Using FLUX sliders on `builtin:tiny-flux`: real-image edits by inversion of the flow ODE, evaluation,
previews while training, resume, and resolutions that do not fit FLUX's 2x2-packed latents.

The tiny model's VAE is random (it reproduces an image at about 10 dB), so reconstruction is measured
against the VAE's own round trip (`psnr_vae_db`) and on latents, not against the input's pixels.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.cli import edit_main, eval_main, sample_main, train_images_main, train_main
from sliders.families import FLUX, SDXL
from sliders.network import read_slider_file

MODEL = "builtin:tiny-flux"


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _tensors(path):
    return read_slider_file(path)[0]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def pipe(sliders_home, one_thread):
    from sliders.models import load_pipeline

    return load_pipeline(MODEL)


@pytest.fixture(scope="module")
def cond(pipe):
    from sliders.models import Conditioning

    embeds, pooled, _ = pipe.encode_prompt("circle", None, max_sequence_length=32)
    return Conditioning(embeds, pooled)


@pytest.fixture(scope="module")
def text_slider(tmp_path_factory, sliders_home, one_thread):
    """A FLUX text slider trained for two iterations through the CLI, its up weights made 100 times larger
    so that its scales visibly change images of the random model."""
    folder = tmp_path_factory.mktemp("flux_use")
    config = _write_text_config(folder)
    assert train_main(["--config", str(config), "--device", "cpu"]) == 0
    path = next((folder / "models").glob("text_*/text_last.safetensors"))
    from safetensors.torch import save_file

    tensors, metadata = read_slider_file(path)
    for key, tensor in tensors.items():
        if key.endswith("lora_up.weight"):
            tensors[key] = tensor * 100
    strong = folder / "strong.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(strong), metadata)
    return strong


def _write_text_config(folder, *, model=MODEL, resolution=64, extra_train="", name="text", per_steps=10):
    prompts = folder / "prompts.yaml"
    prompts.write_text('- target: "circle"\n  positive: "large circle"\n  unconditional: "small circle"\n'
                       f"  action: enhance\n  guidance_scale: 2\n  resolution: {resolution}\n", encoding="utf-8")
    config = folder / f"{name}.yaml"
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{model}"\n'
                      "network:\n  rank: 2\n  training_method: full\n"
                      f"train:\n  precision: fp32\n  iterations: 2\n  flow_steps: 4\n  lr: 0.01\n{extra_train}"
                      f'save:\n  name: {name}\n  path: "{folder / "models"}"\n  per_steps: {per_steps}\n',
                      encoding="utf-8")
    return config


def _photo(path):
    """A 64 px image with some structure."""
    yy, xx = np.mgrid[0:64, 0:64]
    array = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# Inversion of the flow ODE
# --------------------------------------------------------------------------------------------------


def test_flow_regeneration_is_the_pipelines_own_sampler(pipe, cond):
    """From pure noise with no corrections, `regenerate_flow` takes exactly FluxPipeline's Euler steps on
    its shifted schedule: the edits regenerate on the sampler `sliders-sample` uses."""
    from sliders.inversion import Inversion, make_flow_schedule, regenerate_flow
    from sliders.families.flux import pack, unpack

    noise = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    schedule = make_flow_schedule(pipe.scheduler, 5, 32, 32)
    ours = regenerate_flow(pipe.transformer, FLUX, schedule, Inversion("ddim", 0, noise, cond, [], None), [], [],
                           start_noise=1000, guidance=3.5)
    with torch.no_grad():
        theirs = pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, latents=pack(noise), height=64,
                      width=64, num_inference_steps=5, guidance_scale=3.5, output_type="latent").images
    assert torch.allclose(ours, unpack(theirs, 32, 32), atol=1e-5)


@pytest.mark.parametrize("steps, ddim_bound", [(8, 0.06), (30, 0.02)])
def test_flow_inversion_reconstructs_at_scale_0(pipe, cond, steps, ddim_bound):
    """`direct` gives back the latents exactly (up to float rounding); `ddim` (the Euler step run
    backwards) closely, closer with more steps (measured 4% at 8 steps, 1.1% at 30 of the latents' rms),
    where starting from fresh noise is off by 140%. The latents are the model's own image."""
    from sliders.inversion import Inversion, invert_flow, make_flow_schedule, regenerate_flow

    model = pipe.transformer
    schedule = make_flow_schedule(pipe.scheduler, steps, 32, 32)
    noise = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    clean = regenerate_flow(model, FLUX, schedule, Inversion("ddim", 0, noise, cond, [], None), [], [],
                            start_noise=1000, guidance=3.5)

    def error(latents):
        return float((latents - clean).pow(2).mean().sqrt() / clean.pow(2).mean().sqrt())

    direct = invert_flow(model, FLUX, schedule, clean, cond, method="direct", start_noise=700, guidance=3.5)
    assert 0 < direct.start < steps and len(direct.corrections) == steps - direct.start
    assert 0 < direct.correction_ratio < 0.05
    out = regenerate_flow(model, FLUX, schedule, direct, [], [], start_noise=700, guidance=3.5)
    assert (out - clean).abs().max() < 1e-5
    ddim = invert_flow(model, FLUX, schedule, clean, cond, method="ddim", start_noise=700, guidance=3.5)
    assert ddim.corrections is None and ddim.start == direct.start
    reconstructed = error(regenerate_flow(model, FLUX, schedule, ddim, [], [], start_noise=700, guidance=3.5))
    other = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    unrelated = error(regenerate_flow(model, FLUX, schedule, Inversion("ddim", 0, other, cond, [], None), [], [],
                                      start_noise=1000, guidance=3.5))
    assert 0 < reconstructed < ddim_bound and unrelated > 1.0


def test_sliders_edit_on_flux_reconstructs_at_scale_0_and_edits_at_others(text_slider, tmp_path):
    image = _photo(tmp_path / "photo.png")

    def edit(inversion):
        out = tmp_path / inversion
        assert edit_main(["--image", str(image), "--slider", str(text_slider), "--scales=-2,0,2", "--steps", "6",
                          "--prompt", "circle", "--start_noise", "700", "--inversion", inversion, "--output", str(out),
                          "--device", "cpu"]) == 0
        report = json.loads((out / "edits.json").read_text())
        pngs = {p.name: np.asarray(Image.open(p)).astype(int) for p in out.glob("photo_*.png")}
        return report, pngs

    report, pngs = edit("direct")
    row = report["images"][0]
    assert report["settings"]["guidance_scale"] == 3.5  # FLUX's guidance embedding, not the UNet edits' 7.5
    assert row["inversion_used"] == "direct" and 0 < row["correction_ratio"] < 0.05
    # Exact at scale 0: the edit is the VAE's own round trip of the input.
    assert row["psnr_scale0_db"] == pytest.approx(row["psnr_vae_db"], abs=0.01)
    assert len(pngs) == 3
    zero, low, high = pngs["photo_strong+0.png"], pngs["photo_strong-2.png"], pngs["photo_strong+2.png"]
    assert np.abs(low - zero).max() > 0 and np.abs(high - zero).max() > 0
    # guarded: this random VAE reproduces nothing (about 10 dB), so plain inversion is chosen, with a warning.
    report, pngs = edit("guarded")
    row = report["images"][0]
    assert row["psnr_vae_db"] < 30 and row["inversion_used"] == "ddim"
    assert any("autoencoder" in warning for warning in row["warnings"])
    assert row["psnr_scale0_db"] == pytest.approx(row["psnr_vae_db"], abs=1.0)


def test_edit_refuses_what_flux_does_not_have(text_slider, tmp_path, capsys, inject_loader):
    """Inversions of the unconditional branch and a negative prompt: one line each, before the model loads."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded")

    inject_loader(forbidden)
    image = _photo(tmp_path / "photo.png")
    common = ["--image", str(image), "--slider", str(text_slider), "--device", "cpu", "--output", str(tmp_path / "e")]
    for method in ("null-text", "negative-prompt"):
        assert edit_main(common + ["--inversion", method]) == 2
        line = _error_line(capsys)
        assert method in line and "FLUX.1" in line and "guarded" in line
    assert edit_main(common + ["--negative_prompt", "blurry"]) == 2
    assert "--negative_prompt" in _error_line(capsys)
    # sliders-eval's edits of rendered scenes make the same check
    assert eval_main(["--slider", str(text_slider), "--edit_scenes", "1", "--scales=-1,0,1", "--inversion", "null-text",
                      "--device", "cpu", "--output", str(tmp_path / "v")]) == 2
    assert "null-text" in _error_line(capsys)


# --------------------------------------------------------------------------------------------------
# Evaluation and previews
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scales, reference", [("-1,1", "generated separately"), ("-1,0,1", "in the scale grid")])
def test_sliders_eval_runs_on_flux(text_slider, tmp_path, scales, reference):
    out = tmp_path / "eval"
    assert eval_main(["--slider", str(text_slider), "--prompt", "circle", "--seeds", "0-1", f"--scales={scales}",
                      "--steps", "3", "--output", str(out), "--device", "cpu", "--save_images"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file() and (out / "plot.png").is_file() and (out / "grid.png").is_file()
    assert reference in report["settings"]["reference"]
    assert report["settings"]["guidance_scale"] == 3.5 and report["settings"]["start_noise"] == 750
    assert sorted({row["multipliers"][0] for row in report["rows"]}) == [-1.0, 0.0, 1.0]
    assert len(report["rows"]) == 2 * 3
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 2 * 3
    distinct = {np.asarray(Image.open(p)).tobytes() for p in pngs}
    assert len(distinct) == 2 * 3  # every scale and seed gives its own image


def test_previews_while_training_flux_leave_the_training_unchanged(tmp_path):
    """`sample.every` renders grids through the family's preview pipeline (no text encoders); the slider
    trained with previews is the one trained without."""
    plain = _write_text_config(tmp_path, name="plain")
    shown = _write_text_config(tmp_path, name="shown")
    assert train_main(["--config", str(plain), "--device", "cpu"]) == 0
    assert train_main(["--config", str(shown), "--device", "cpu", "--sample_every", "1"]) == 0
    folder = next((tmp_path / "models").glob("shown_*"))
    grids = sorted(p.name for p in (folder / "samples").glob("*.png"))
    assert grids == ["step_1.png", "step_2.png"]
    grid = Image.open(folder / "samples" / "step_2.png")
    assert grid.width > 3 * 64 and grid.height > 64  # three scales of one 64 px image, with labels
    _assert_same(_tensors(folder / "shown_last.safetensors"),
                 _tensors(next((tmp_path / "models").glob("plain_*/plain_last.safetensors"))))


def test_flux_previews_use_the_familys_steps_and_guidance(tmp_path, monkeypatch):
    """Previews on FLUX.1 sample as sliders-sample does there: its 30 steps and guidance embedding 3.5
    where the config gives none, the config's values where it does."""
    import sliders.previews

    calls = []
    original = sliders.previews.generate

    def spy(*args, **kwargs):
        calls.append((kwargs["steps"], kwargs["guidance_scale"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(sliders.previews, "generate", spy)
    config = _write_text_config(tmp_path, name="defaults")
    assert train_main(["--config", str(config), "--device", "cpu", "--sample_every", "2"]) == 0
    given = _write_text_config(tmp_path, name="given")
    given.write_text(given.read_text() + "sample:\n  every: 2\n  steps: 4\n  guidance_scale: 2\n", encoding="utf-8")
    assert train_main(["--config", str(given), "--device", "cpu"]) == 0
    assert calls == [(FLUX.defaults.steps, FLUX.defaults.guidance_scale), (4, 2.0)] == [(30, 3.5), (4, 2.0)]


def test_preview_defaults_of_unet_families_are_unchanged():
    from sliders.config import SampleConfig
    from sliders.families import family_named
    from sliders.previews import preview_settings

    for name in ("sdxl", "sd1", "sd2"):
        settings = preview_settings(SampleConfig(), family_named(name))
        assert (settings.steps, settings.guidance_scale, settings.start_noise) == (20, 5.0, 750.0), name
    given = preview_settings(SampleConfig(steps=7, guidance_scale=0.0), FLUX)
    assert (given.steps, given.guidance_scale) == (7, 0.0)
    assert preview_settings(SampleConfig(steps=7), SDXL).steps == 7
    assert preview_settings(SampleConfig(), FLUX).steps == 30


def test_sample_and_eval_refuse_a_negative_prompt_on_flux(text_slider, tmp_path, capsys, inject_loader):
    """FLUX.1 has no classifier-free guidance: a negative prompt would be dropped without a word."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded")

    inject_loader(forbidden)
    common = ["--slider", str(text_slider), "--prompt", "circle", "--negative_prompt", "blurry", "--device", "cpu"]
    assert sample_main(common + ["--output", str(tmp_path / "s")]) == 2
    line = _error_line(capsys)
    assert "--negative_prompt" in line and "FLUX.1" in line and "remove it" in line
    assert eval_main(common + ["--output", str(tmp_path / "v")]) == 2
    assert "--negative_prompt" in _error_line(capsys)
    assert not (tmp_path / "s").exists() and not (tmp_path / "v").exists()


def test_image_slider_previews_on_flux(tmp_path):
    from conftest import write_image_folders

    images = write_image_folders(tmp_path / "pairs", ("low", "high"))
    assert train_images_main(["--folder_main", str(images), "--folders", "low,high", "--scales=-1,1", "--iterations",
                              "2", "--resolution", "64", "--device", "cpu", "--output_dir", str(tmp_path / "m"),
                              "--pretrained_model", MODEL, "--name", "image", "--rank", "2", "--sample_every",
                              "2"]) == 0
    assert [p.name for p in tmp_path.glob("m/image_*/samples/*.png")] == ["step_2.png"]


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


class _Stop(BaseException):
    """Stands in for a process killed outright: nothing in the run catches it."""


def _killed_at(monkeypatch, objective, call):
    original = objective.step
    calls = {"n": 0}

    def step(self, rng, generator):
        calls["n"] += 1
        if calls["n"] == call:
            raise _Stop()
        return original(self, rng, generator)

    monkeypatch.setattr(objective, "step", step)


def test_flux_text_slider_resumes_to_the_same_slider(tmp_path, monkeypatch):
    from sliders.objectives import FlowTextObjective

    config = _write_text_config(tmp_path, per_steps=2, extra_train="  lr_scheduler: cosine\n")
    common = ["--config", str(config), "--device", "cpu", "--iterations", "4", "--seed", "5"]
    assert train_main(common + ["--name", "whole"]) == 0
    with monkeypatch.context() as patch:
        _killed_at(patch, FlowTextObjective, 3)
        with pytest.raises(_Stop):
            train_main(common + ["--name", "part"])
    folder = next((tmp_path / "models").glob("part_*"))
    assert not (folder / "part_last.safetensors").exists() and (folder / "part_2steps.safetensors").exists()
    assert train_main(common + ["--name", "part", "--resume"]) == 0
    whole = next((tmp_path / "models").glob("whole_*"))
    _assert_same(_tensors(folder / "part_last.safetensors"), _tensors(whole / "whole_last.safetensors"))
    # A run that differs in its draws ends elsewhere: the comparison can fail.
    assert train_main(common[:-1] + ["6", "--name", "other"]) == 0
    other = _tensors(next((tmp_path / "models").glob("other_*/other_last.safetensors")))
    assert any(not torch.equal(other[k], v) for k, v in _tensors(whole / "whole_last.safetensors").items())


def test_flux_image_slider_resumes_to_the_same_slider(tmp_path, monkeypatch):
    from conftest import write_image_folders
    from sliders.objectives import FlowImageObjective

    images = write_image_folders(tmp_path / "pairs", ("low", "high"))
    per = tmp_path / "per.yaml"
    per.write_text("save:\n  per_steps: 2\ntrain:\n  precision: fp32\n  lr_scheduler: cosine\n  flow_steps: 4\n")
    common = ["--config", str(per), "--folder_main", str(images), "--folders", "low,high", "--scales=-1,1",
              "--iterations", "4", "--resolution", "64", "--device", "cpu", "--output_dir", str(tmp_path / "m"),
              "--pretrained_model", MODEL, "--seed", "3", "--rank", "2"]
    assert train_images_main(common + ["--name", "whole"]) == 0
    with monkeypatch.context() as patch:
        _killed_at(patch, FlowImageObjective, 3)
        with pytest.raises(_Stop):
            train_images_main(common + ["--name", "part"])
    assert train_images_main(common + ["--name", "part", "--resume"]) == 0
    _assert_same(_tensors(next(tmp_path.glob("m/part_*/part_last.safetensors"))),
                 _tensors(next(tmp_path.glob("m/whole_*/whole_last.safetensors"))))


# --------------------------------------------------------------------------------------------------
# Resolutions
# --------------------------------------------------------------------------------------------------


def test_flux_resolution_multiple_is_twice_the_vae_factor():
    from sliders.errors import InputError
    from sliders.sampling import check_resolution

    check_resolution(1024, "--resolution", FLUX, 8)
    check_resolution(1000, "--resolution", SDXL, 8)  # a UNet needs whole 8 px cells only
    with pytest.raises(InputError) as error:
        check_resolution(1000, "--resolution", FLUX, 8)
    assert str(error.value) == ("--resolution 1000 is not a multiple of 16, which FLUX.1 needs (8 px latent cells in "
                                "2x2 patches); pick 992 or 1008")


@pytest.fixture(scope="module")
def flux8(tmp_path_factory, sliders_home):
    """A tiny FLUX model whose VAE has FLUX's 8 px cells (four levels): its images need multiples of 16."""
    from diffusers import AutoencoderKL, FluxPipeline

    from sliders.tiny import build_tiny_flux_pipeline

    base = build_tiny_flux_pipeline()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=8, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    pipe = FluxPipeline(scheduler=base.scheduler, vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                        text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, transformer=base.transformer)
    folder = tmp_path_factory.mktemp("flux8") / "model"
    pipe.save_pretrained(folder)
    return folder


def test_resolution_not_fitting_flux_is_one_line_before_the_model_loads(flux8, text_slider, tmp_path, capsys,
                                                                         inject_loader):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded")

    inject_loader(forbidden)
    config = _write_text_config(tmp_path, model=flux8, resolution=72)
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert "'resolution' 72 is not a multiple of 16" in line and "pick 64 or 80" in line
    from conftest import write_image_folders

    images = write_image_folders(tmp_path / "pairs", ("low", "high"))
    assert train_images_main(["--folder_main", str(images), "--folders", "low,high", "--scales=-1,1",
                              "--resolution", "72", "--device", "cpu", "--output_dir", str(tmp_path / "m"),
                              "--pretrained_model", str(flux8)]) == 2
    assert "--resolution 72 is not a multiple of 16" in _error_line(capsys)
    image = _photo(tmp_path / "photo.png")
    for main, extra in ((sample_main, ["--prompt", "circle"]), (eval_main, ["--prompt", "circle"]),
                        (edit_main, ["--image", str(image)])):
        assert main(["--slider", str(text_slider), "--pretrained_model", str(flux8), "--resolution", "72",
                     "--device", "cpu", "--output", str(tmp_path / "out")] + extra) == 2
        line = _error_line(capsys)
        assert line == ("error: --resolution 72 is not a multiple of 16, which FLUX.1 needs (8 px latent cells in "
                        "2x2 patches); pick 64 or 80"), main
    # On the built-in tiny model (2 px VAE cells: multiples of 4, and 8 for the pipeline) 72 is fine.
    from sliders.models import injected_loader

    with injected_loader(None):  # the model loads for real again
        assert sample_main(["--slider", str(text_slider), "--resolution", "72", "--steps", "2", "--prompt", "circle",
                            "--scales=0", "--device", "cpu", "--output", str(tmp_path / "ok")]) == 0


def test_a_fitting_resolution_samples_on_an_8px_vae_flux(flux8, text_slider, tmp_path):
    out = tmp_path / "s"
    assert sample_main(["--slider", str(text_slider), "--pretrained_model", str(flux8), "--resolution", "32",
                        "--steps", "2", "--prompt", "circle", "--scales=0", "--device", "cpu", "--output",
                        str(out)]) == 0
    (png,) = [p for p in out.glob("*.png") if p.name != "grid.png"]
    assert Image.open(png).size == (32, 32)
