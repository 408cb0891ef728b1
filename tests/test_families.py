"""Model families: SD 1.x (epsilon) and SD 2.x (v-prediction) run the whole toolkit as SDXL does.

Each family's tiny pipeline (`sliders.tiny`) is saved as a diffusers folder and loaded through the
same `load_pipeline` as real weights. A text and an image slider train on each, then sample, edit,
load in diffusers, and convert; a slider of another family and an unknown architecture are refused
in one line before any model loads.
"""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.cli import convert_main, edit_main, export_main, sample_main, train_images_main, train_main
from sliders.errors import InputError
from sliders.families import SD1, SD2, SDXL, detect_family, family_of_slider, family_of_source
from sliders.network import SliderNetwork, load_slider, read_slider_file

FAMILIES = {"sd1": "builtin:tiny-sd1", "sd2": "builtin:tiny-sd2v"}


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from conftest import write_image_folders

    return write_image_folders(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory, images, sliders_home):
    """(family name, model, text slider, image slider), each trained for two iterations through the CLI."""
    from conftest import train_family_sliders

    name, model = request.param, FAMILIES[request.param]
    text, image = train_family_sliders(tmp_path_factory.mktemp(name), model, images)
    return name, model, text, image


def test_families_are_detected_from_the_model_files(sliders_home):
    from sliders.models import resolve_model

    assert family_of_source(resolve_model("builtin:tiny-sdxl")) is SDXL
    assert family_of_source(resolve_model("builtin:tiny-sd1")) is SD1
    assert family_of_source(resolve_model("builtin:tiny-sd2v")) is SD2
    assert family_of_source(resolve_model("builtin:shapes")) is SDXL
    # The official `v2` flag and the explicit family decide for a hub id that is not at hand.
    assert family_of_source("someone/some-model", v2=True) is SD2
    assert family_of_source("someone/some-model", family="sd1") is SD1
    assert family_of_source("someone/some-model") is None


def test_real_unet_configs_are_told_apart():
    sd15 = {"cross_attention_dim": 768, "use_linear_projection": False}
    sd21 = {"cross_attention_dim": 1024, "use_linear_projection": True}
    sdxl = {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}
    assert [detect_family(c) for c in (sd15, sd21, sdxl)] == [SD1, SD2, SDXL]
    assert detect_family(sd15, "StableDiffusionPipeline") is SD1
    with pytest.raises(InputError, match="does not support"):
        detect_family({"class_embed_type": "timestep"}, "StableDiffusionUpscalePipeline")


def test_single_files_are_recognised_from_their_tensor_names(tmp_path):
    from safetensors.torch import save_file

    names = {"sd1": "cond_stage_model.transformer.text_model.embeddings.position_ids",
             "sd2": "cond_stage_model.model.token_embedding.weight",
             "sdxl": "conditioner.embedders.1.model.token_embedding.weight"}
    for family, key in names.items():
        path = tmp_path / f"{family}.safetensors"
        save_file({key: torch.zeros(1), "model.diffusion_model.out.2.weight": torch.zeros(1)}, str(path))
        assert family_of_source(str(path)).name == family
    other = tmp_path / "other.safetensors"
    save_file({"transformer.x": torch.zeros(1)}, str(other))
    with pytest.raises(InputError, match="not an SDXL, SD 1.x, SD 2.x or FLUX.1 checkpoint"):
        family_of_source(str(other))


def test_an_unknown_architecture_is_one_line(tmp_path, capsys, sliders_home):
    from sliders.models import resolve_model

    folder = tmp_path / "upscaler"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"class_embed_type": "timestep"}))
    config = tmp_path / "c.yaml"
    config.write_text(f'pretrained_model:\n  name_or_path: "{folder}"\n', encoding="utf-8")
    prompts = tmp_path / "p.yaml"
    prompts.write_text('- target: "circle"\n', encoding="utf-8")
    assert train_main(["--config", str(config), "--prompts_file", str(prompts), "--device", "cpu",
                       "--output_dir", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert "StableDiffusionUpscalePipeline" in line and "does not support" in line
    assert resolve_model("builtin:tiny-sd1").endswith("tiny-sd1-v1")


def test_family_key_is_checked_with_the_v2_flag():
    from sliders.config import load_config

    assert load_config(None, {"pretrained_model.family": "SD1"}).pretrained_model.family == "sd1"
    with pytest.raises(InputError, match="did you mean 'sd2'"):
        load_config(None, {"pretrained_model.family": "sd3"})
    with pytest.raises(InputError, match="disagree"):
        load_config(None, {"pretrained_model.family": "sdxl", "pretrained_model.v2": True})


def test_sliders_record_their_family_and_use_kohya_sd_naming(trained):
    name, _, text, image = trained
    for path in (text, image):
        tensors, metadata = read_slider_file(path)
        assert metadata["sliders_family"] == name and family_of_slider(metadata).name == name
        # kohya names SD 1.x/2.x layers by diffusers paths (what A1111, Forge and ComfyUI map for them).
        assert all(k.startswith("lora_unet_") and "input_blocks" not in k for k in tensors)
        assert any(k.startswith("lora_unet_down_blocks_1_attentions_0_") for k in tensors)
    _, metadata = read_slider_file(text)
    expected = {"sd1": ("epsilon", "sd_v1", "False"), "sd2": ("v_prediction", "sd_v2_v", "True")}[name]
    assert (metadata["sliders_prediction_type"], metadata["ss_base_model_version"], metadata["ss_v2"]) == expected
    assert metadata["sliders_start_noise"] == "850"  # the official SD 1.x/2.x sampling default


def test_trained_sliders_sample_with_the_switch(trained, tmp_path, capsys):
    _, _, text, image = trained
    out = tmp_path / "samples"
    assert sample_main(["--slider", str(text), "--slider", f"{image}:0,1", "--scales=-1,1", "--steps", "3",
                        "--prompt", "circle", "--output", str(out), "--device", "cpu"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4 and (out / "grid.png").is_file()
    first = np.asarray(Image.open(out / pngs[0]))
    assert first.shape == (64, 64, 3)  # the slider's recorded resolution


def test_trained_sliders_edit_a_real_image(trained, images, tmp_path, capsys):
    _, _, text, _ = trained
    out = tmp_path / "edits"
    assert edit_main(["--image", str(images / "low" / "x.png"), "--slider", f"{text}:-1,0,1", "--steps", "3",
                      "--start_noise", "700", "--output", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "edits.json").read_text())
    assert len(report["images"]) == 1 and (out / "grid.png").is_file()


def test_trained_sliders_are_measured_by_sliders_eval(trained, tmp_path):
    from sliders.cli import eval_main

    _, _, text, image = trained
    out = tmp_path / "eval"
    assert eval_main(["--slider", str(text), "--slider", f"{image}:0,1", "--scales=-1,0,1", "--prompt", "circle",
                      "--seeds", "0", "--steps", "2", "--output", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 6 and report["settings"]["start_noise"] == 850.0  # the SD 1.x/2.x default


def test_sliders_load_in_diffusers_as_they_run_here(trained, tmp_path, sliders_home):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    from sliders.models import resolve_model

    _, model, text, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(model))
    unet = pipe.unet
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8)
    states = torch.randn(1, 5, unet.config.cross_attention_dim)
    network = load_slider(text, unet)
    with torch.no_grad():
        with network.scaled(1.0):
            ours = unet(latents, 500, encoder_hidden_states=states).sample
    network.detach()
    pipe.load_lora_weights(str(text), adapter_name="slider")
    assert sum(k.endswith("lora_A.slider.weight") for k in unet.state_dict()) == len(network.loras)
    pipe.set_adapters(["slider"], adapter_weights=[1.0])
    with torch.no_grad():
        theirs = unet(latents, 500, encoder_hidden_states=states).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_a_slider_of_another_family_is_refused_before_the_model_loads(trained, tmp_path, capsys, inject_loader):
    _, model, text, _ = trained

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    inject_loader(no_load)
    code = sample_main(["--slider", str(text), "--prompt", "circle", "--pretrained_model", "builtin:tiny-sdxl", "--output",
                        str(tmp_path / "s"), "--device", "cpu"])
    assert code == 2
    line = _error_line(capsys)
    assert re.search(r"made for Stable Diffusion [12]\.x .*is Stable Diffusion XL", line), line


def test_convert_keeps_the_family_naming(trained, tmp_path, capsys):
    _, _, text, _ = trained
    out = tmp_path / "converted.safetensors"
    assert convert_main([str(text), str(out), "--to", "kohya"]) == 0
    tensors, metadata = read_slider_file(out)
    original, _ = read_slider_file(text)
    assert tensors.keys() == original.keys() and metadata["sliders_family"] == read_slider_file(text)[1]["sliders_family"]


def test_exports_name_the_family_pipeline_and_run_as_printed(trained, tmp_path, capsys):
    import os
    import subprocess
    import sys

    pytest.importorskip("peft")
    name, _, text, _ = trained
    family = {"sd1": SD1, "sd2": SD2}[name]
    assert export_main([str(text), "--ui", "comfyui", "--output", str(tmp_path / "w.json")]) == 0
    workflow = json.loads((tmp_path / "w.json").read_text())
    assert workflow["1"]["inputs"]["ckpt_name"] == family.comfyui_checkpoint
    capsys.readouterr()
    assert export_main([str(text), "--ui", "diffusers", "--steps", "3", "--prompt", "circle", "--scale", "2"]) == 0
    snippet = capsys.readouterr().out
    assert "StableDiffusionPipeline.from_pretrained" in snippet and "START_NOISE = 850.0" in snippet
    (tmp_path / "snippet.py").write_text(snippet)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sample_main(["--slider", str(text), "--scales", "2", "--prompt", "circle", "--seeds", "0", "--steps", "3",
                        "--device", "cpu", "--output", str(tmp_path / "s")]) == 0
    ours = np.asarray(Image.open(next(p for p in (tmp_path / "s").glob("*.png") if p.name != "grid.png")), np.int16)
    theirs = np.asarray(Image.open(tmp_path / "slider.png").convert("RGB"), np.int16)
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("family", [SD1, SD2], ids=["sd1", "sd2"])
def test_full_size_sd_files_map_completely_in_a1111_and_comfyui(family):
    from test_formats import _a1111_lookup, ldm_modules

    from sliders.formats import NameMap, unet_config

    unet, modules = ldm_modules(family.unet_config)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=4, alpha=1)
    names = {key.rsplit(".", 2)[0] for key in network.state_dict_for("kohya") if key.endswith("down.weight")}
    assert all(name.startswith("lora_unet_") and "input_blocks" not in name for name in names)
    # A1111/Forge: their SD 1.x diffusers-to-LDM rule, looked up among the checkpoint's modules.
    a1111_layers = {name.replace(".", "_") for name in modules}
    a1111 = {name: _a1111_lookup(name, a1111_layers) for name in names}
    # ComfyUI: "lora_unet_" + the diffusers path of every LDM weight (its unet_to_diffusers map).
    to_diffusers = NameMap(unet_config(unet), ".")
    comfyui = {"lora_unet_" + to_diffusers.to_diffusers(m[len("diffusion_model."):]).replace(".", "_")
               for m in modules if to_diffusers.to_diffusers(m[len("diffusion_model."):])}
    counts = {"ours": len(names), "a1111": sum(v is not None for v in a1111.values()), "comfyui": len(names & comfyui)}
    assert counts == {"ours": len(network.loras), "a1111": 214, "comfyui": 214}, counts


# ---------------------------------------------------------------- SDXL v-prediction and few-step SDXL


def test_sdxl_v_prediction_trains_text_and_image_sliders(tmp_path, images, sliders_home):
    from sliders.config import load_config
    from sliders.trainer import setup

    config = load_config(None, {"pretrained_model.name_or_path": "builtin:tiny-sdxl-vpred", "train.precision": "fp32",
                                "network.rank": 2})
    parts = setup(config, ["circle"], torch.device("cpu"), keep_vae=False, resolution=64)
    # The training schedule is the model's: v-prediction on zero-terminal-SNR betas.
    assert parts.scheduler.config.prediction_type == "v_prediction"
    assert parts.scheduler.alphas_cumprod[-1].item() < 1e-6
    out = tmp_path / "models"
    prompts = tmp_path / "p.yaml"
    prompts.write_text('- target: "circle"\n  positive: "large circle"\n  unconditional: "small circle"\n'
                       "  resolution: 64\n", encoding="utf-8")
    common = ["--device", "cpu", "--output_dir", str(out), "--pretrained_model", "builtin:tiny-sdxl-vpred",
              "--iterations", "2", "--rank", "2"]
    assert train_main(["--prompts_file", str(prompts), "--name", "text", *common]) == 0
    assert train_images_main(["--folder_main", str(images), "--folders", "low,high", "--scales=-1,1",
                              "--resolution", "64", "--name", "image", *common]) == 0
    for name in ("text", "image"):
        _, metadata = read_slider_file(out / f"{name}_alpha1.0_rank2_noxattn" / f"{name}_last.safetensors")
        assert metadata["sliders_prediction_type"] == "v_prediction"
        assert metadata["ss_base_model_version"] == "sdxl_base_v1-0_v"


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_few_step_sampling_switches_at_the_first_step_at_or_below_start_noise(steps, guidance, sliders_home):
    from sliders.sampling import generate

    pipe = _few_step_pipe()
    network = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1).attach()
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append((float(args[1]), network.multiplier)))
    try:
        generate(pipe, [network], [[1.5]], ["circle"], [0], start_noise=600, steps=steps, guidance_scale=guidance,
                 height=64, width=64)
    finally:
        handle.remove()
        network.detach()
    pipe.scheduler.set_timesteps(steps)
    assert [t for t, _ in seen] == [float(t) for t in pipe.scheduler.timesteps]  # one UNet call a step (no CFG)
    # Trailing timesteps (999, 749, 499, ... for 4 steps): on from the first at or below 600, whatever the count.
    assert [m for _, m in seen] == [1.5 if t <= 600 else 0.0 for t, _ in seen]
    assert any(m for _, m in seen) == (steps > 1)


_PIPES = {}


def _few_step_pipe():
    from sliders.models import load_pipeline

    if "vpred" not in _PIPES:
        _PIPES["vpred"] = load_pipeline("builtin:tiny-sdxl-vpred")
    return _PIPES["vpred"]


def _official_sd1_config():
    """The official SD 1.x config (`trainscripts/textsliders/data/config.yaml`): the XL one's keys and
    values with the SD 1.x prompts file and model."""
    from test_config import OFFICIAL_XL

    return OFFICIAL_XL.replace("prompts-xl.yaml", "prompts.yaml").replace(
        "stabilityai/stable-diffusion-xl-base-1.0", "CompVis/stable-diffusion-v1-4")


def test_official_sd1_config_and_shims_run(tmp_path, images, sliders_home):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sliders.config import load_config

    (tmp_path / "official.yaml").write_text(_official_sd1_config(), encoding="utf-8")
    official = load_config(tmp_path / "official.yaml")
    assert official.pretrained_model.name_or_path == "CompVis/stable-diffusion-v1-4" and not official.pretrained_model.v2
    # The same file with a local SD 1.x model and a short run, through the official script names.
    text = _official_sd1_config().replace("CompVis/stable-diffusion-v1-4", "builtin:tiny-sd1").replace(
        "iterations: 1000", "iterations: 1").replace('"bfloat16"', '"float32"').replace(
        "max_denoising_steps: 50", "max_denoising_steps: 4")
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "prompts.yaml").write_text('- target: "circle"\n  resolution: 64\n', encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": ""}
    common = ["--config_file", str(tmp_path / "config.yaml"), "--alpha", "1", "--rank", "2", "--device", "cpu"]
    runs = {
        "textsliders/train_lora.py": [*common, "--name", "t", "--prompts_file", str(tmp_path / "prompts.yaml")],
        "imagesliders/train_lora-scale.py": [*common, "--name", "i", "--prompts_file", str(tmp_path / "prompts.yaml"),
                                             "--folder_main", str(images), "--folders", "low, high", "--scales", "-1, 1"],
    }
    for script, args in runs.items():
        done = subprocess.run([sys.executable, str(root / "trainscripts" / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    for name in ("t", "i"):
        _, metadata = read_slider_file(tmp_path / "models" / f"{name}_alpha1.0_rank2_noxattn" / f"{name}_last.safetensors")
        assert metadata["sliders_family"] == "sd1"


@pytest.mark.parametrize("steps, guidance", [(1, 0.0), (4, 1.0)])
def test_few_step_v_prediction_edits_and_exports(steps, guidance, images, tmp_path, capsys, sliders_home):
    """sliders-edit and sliders-export on a few-step schedule (trailing, v-prediction, zero terminal
    SNR): the edit runs and reconstructs at scale 0; the export's snippet names the step count."""
    pipe = _few_step_pipe()
    network = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.normal_(0, 0.05)
    slider = network.save(tmp_path / "s.safetensors", {"sliders_base_model": "builtin:tiny-sdxl-vpred",
                                                       "sliders_resolution": "64"})
    out = tmp_path / "edits"
    assert edit_main(["--image", str(images / "low" / "x.png"), "--slider", f"{slider}:-1,0,1", "--steps", str(steps),
                      "--guidance_scale", str(guidance), "--start_noise", "800", "--output", str(out),
                      "--device", "cpu"]) == 0
    report = json.loads((out / "edits.json").read_text())
    row = report["images"][0]
    assert np.isfinite(row["psnr_scale0_db"]) and row["psnr_scale0_db"] >= row["psnr_vae_db"] - 0.5
    capsys.readouterr()
    assert export_main([str(slider), "--ui", "diffusers", "--steps", str(steps)]) == 0
    assert f"STEPS = {steps}" in capsys.readouterr().out
