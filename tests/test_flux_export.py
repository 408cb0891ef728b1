"""FLUX.1 sliders elsewhere: file names that ComfyUI and Forge map, `sliders-export` per UI, `sliders-convert`.

The UIs' rules are restated here from their source, not copied:

- ComfyUI, Comfy-Org/ComfyUI a125cd84 (2025-10-12): comfy/lora.py `model_lora_keys_unet` (every
  `diffusion_model.<path>.weight` of the loaded model is named `lora_unet_<path with _>`; for a Flux
  model `transformer.<diffusers path>` too, through comfy/utils.py `flux_to_diffusers`, which sends
  q, k, v (and the single blocks' proj_mlp) to row ranges of the fused BFL weight);
  comfy/weight_adapter/lora.py (the delta is `strength * alpha / rank * up @ down` reshaped to the
  weight, or to its row range); comfy/model_sampling.py `ModelSamplingFlux` (sigmas and
  `percent_to_sigma`); comfy/hooks.py `HookKeyframeGroup.prepare_current_keyframe`; comfy/samplers.py
  (the schedulers).
- Forge, lllyasviel/stable-diffusion-webui-forge dfdcbab6 (2025-06-26): backend/patcher/lora.py takes
  `model_lora_keys_unet` from packages_3rdparty/comfyui_lora_collection/lora.py (the webui collection
  is empty), the same rule as ComfyUI's for `lora_unet_` and, for a model whose repo names flux,
  `transformer.` keys; backend/diffusion_engine/flux.py (FLUX-dev's predictor at mu 1.15);
  modules/sd_schedulers.py (simple); LoRA Block Weight b403cb73 (`lbwf`, FLUXALL).

The BFL module names come from diffusers' own BFL -> diffusers converter
(`convert_flux_transformer_checkpoint_to_diffusers`), on a full-size FLUX.1-dev transformer built on
the meta device.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sliders.cli import convert_main, export_main, sample_main
from sliders.errors import InputError
from sliders.export import (FORGE_FLUX_SHIFT, comfyui_flux_start_percent, comfyui_flux_workflow, flux_shift,
                            flux_simple_sigmas, forge_flux_prompts, meta_unet)
from sliders.families import FLUX
from sliders.families.flux import FLUX_DEV_CONFIG
from sliders.network import SliderNetwork, load_slider, read_slider_file

from test_export import NODES, START_NOISES, _lbw_forge, comfyui_errors

MODEL = "builtin:tiny-flux"


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---------------------------------------------------------------- BFL names of a FLUX.1-dev transformer


def bfl_shapes(config) -> dict[str, tuple[int, ...]]:
    """The original (BFL) FLUX checkpoint's tensor names and shapes for a transformer config, restated:
    fused q/k/v (`img_attn.qkv`, `txt_attn.qkv`) and fused q/k/v/MLP-in (`linear1`) in the blocks."""
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    head, mlp = config["attention_head_dim"], 4 * hidden
    out = config["patch_size"] ** 2 * (config.get("out_channels") or config["in_channels"])
    shapes = {}

    def linear(name, fan_in, fan_out):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (fan_out, fan_in), (fan_out,)

    linear("img_in", config["in_channels"], hidden)
    linear("txt_in", config["joint_attention_dim"], hidden)
    for name, fan_in in (("time_in", 256), ("vector_in", config["pooled_projection_dim"]), ("guidance_in", 256)):
        if name == "guidance_in" and not config["guidance_embeds"]:
            continue
        linear(f"{name}.in_layer", fan_in, hidden)
        linear(f"{name}.out_layer", hidden, hidden)
    linear("final_layer.linear", hidden, out)
    linear("final_layer.adaLN_modulation.1", hidden, 2 * hidden)
    for i in range(config["num_layers"]):
        for stream in ("img", "txt"):
            prefix = f"double_blocks.{i}.{stream}"
            linear(f"{prefix}_mod.lin", hidden, 6 * hidden)
            linear(f"{prefix}_attn.qkv", hidden, 3 * hidden)
            linear(f"{prefix}_attn.proj", hidden, hidden)
            linear(f"{prefix}_mlp.0", hidden, mlp)
            linear(f"{prefix}_mlp.2", mlp, hidden)
            shapes[f"{prefix}_attn.norm.query_norm.scale"] = shapes[f"{prefix}_attn.norm.key_norm.scale"] = (head,)
    for i in range(config["num_single_layers"]):
        prefix = f"single_blocks.{i}"
        linear(f"{prefix}.linear1", hidden, 3 * hidden + mlp)
        linear(f"{prefix}.linear2", hidden + mlp, hidden)
        linear(f"{prefix}.modulation.lin", hidden, 3 * hidden)
        shapes[f"{prefix}.norm.query_norm.scale"] = shapes[f"{prefix}.norm.key_norm.scale"] = (head,)
    return shapes


@pytest.fixture(scope="module")
def flux_dev():
    """FLUX.1-dev's transformer on the meta device and its BFL tensor shapes, the BFL layout checked
    against diffusers' own converter: it turns exactly these names into the model's every tensor."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    model = meta_unet(FLUX_DEV_CONFIG)
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks)) == (19, 38)
    shapes = bfl_shapes(FLUX_DEV_CONFIG)
    checkpoint = {f"model.diffusion_model.{k}": torch.empty(shape, device="meta") for k, shape in shapes.items()}
    converted = convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    assert checkpoint == {}  # every BFL name was used
    state = model.state_dict()
    assert set(converted) == set(state)
    assert all(tuple(converted[k].shape) == tuple(state[k].shape) for k in state)
    return model, shapes


def comfyui_flux_key_map(shapes, hidden: int) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """ComfyUI's (and Forge's) LoRA key -> (model weight, row range or None) for a Flux model, restated.

    `lora_unet_<path with _>` for every `diffusion_model.<path>.weight`; `transformer.<diffusers path>`
    for the diffusers names flux_to_diffusers knows: q, k, v at rows [0, h), [h, 2h), [2h, 3h) of the
    fused qkv / linear1, the single blocks' proj_mlp at [3h, 7h), the other layers whole."""
    key_map = {}
    for key in shapes:
        if key.endswith(".weight"):
            key_map["lora_unet_" + key[: -len(".weight")].replace(".", "_")] = (f"diffusion_model.{key}", None)
    whole = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj", "norm1.linear": "img_mod.lin",
             "norm1_context.linear": "txt_mod.lin", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
             "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("double_blocks.")}
    singles = {int(k.split(".")[1]) for k in shapes if k.startswith("single_blocks.")}
    for i in blocks:
        for n, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            rows = (n * hidden, hidden)
            key_map[f"transformer.transformer_blocks.{i}.attn.{img}"] = (
                f"diffusion_model.double_blocks.{i}.img_attn.qkv.weight", rows)
            key_map[f"transformer.transformer_blocks.{i}.attn.{txt}"] = (
                f"diffusion_model.double_blocks.{i}.txt_attn.qkv.weight", rows)
        for ours, theirs in whole.items():
            key_map[f"transformer.transformer_blocks.{i}.{ours}"] = (f"diffusion_model.double_blocks.{i}.{theirs}.weight",
                                                                    None)
    for i in singles:
        fused = f"diffusion_model.single_blocks.{i}.linear1.weight"
        for n, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
            key_map[f"transformer.single_transformer_blocks.{i}.{name}"] = (fused, (n * hidden, hidden))
        key_map[f"transformer.single_transformer_blocks.{i}.proj_mlp"] = (fused, (3 * hidden, 4 * hidden))
        key_map[f"transformer.single_transformer_blocks.{i}.proj_out"] = (
            f"diffusion_model.single_blocks.{i}.linear2.weight", None)
        key_map[f"transformer.single_transformer_blocks.{i}.norm.linear"] = (
            f"diffusion_model.single_blocks.{i}.modulation.lin.weight", None)
    return key_map


def _layers(tensors) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """{file layer name: (down, up, alpha or None)} of a kohya- or PEFT-named file (ComfyUI's lookup)."""
    layers = {}
    for key in tensors:
        for down, up in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight")):
            if key.endswith(down):
                name = key[: -len(down)]
                alpha = tensors.get(f"{name}.alpha")
                layers[name] = (tensors[key], tensors[name + up], None if alpha is None else float(alpha))
    return layers


def _slider(model, method="full", network_type="c3lier", rank=4, seed=0, magnitude=0.1):
    network = SliderNetwork.create(model, network_type=network_type, training_method=method, rank=rank, alpha=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g) * magnitude)
    return network


@pytest.mark.parametrize("key_format", ["kohya", "peft"])
def test_full_flux_dev_slider_maps_completely_in_comfyui_and_forge(flux_dev, key_format):
    model, shapes = flux_dev
    hidden = FLUX_DEV_CONFIG["num_attention_heads"] * FLUX_DEV_CONFIG["attention_head_dim"]
    key_map = comfyui_flux_key_map(shapes, hidden)
    network = SliderNetwork.create(model, network_type="c3lier", training_method="full", rank=4, alpha=1)
    assert len(network.loras) == 19 * 12 + 38 * 5  # every attention and MLP Linear of the blocks
    layers = _layers(network.state_dict_for(key_format))
    unmapped = [name for name in layers if name not in key_map]
    assert unmapped == []
    for name, (down, up, _) in layers.items():
        target, rows = key_map[name]
        bfl = shapes[target[len("diffusion_model."):]]
        wanted = (bfl[0], bfl[1]) if rows is None else (rows[1], bfl[1])
        assert (up.shape[0], down.shape[1]) == wanted, name  # up @ down reshapes to the (row range of the) weight
    if key_format == "kohya":
        # Fused layers: the stacked up weight has the fused layer's out features.
        assert layers["lora_unet_double_blocks_0_img_attn_qkv"][1].shape == (3 * hidden, 3 * 4)
        assert layers["lora_unet_single_blocks_37_linear1"][1].shape == (7 * hidden, 4 * 4)
        # Every layer of every training method is a module of the BFL checkpoint.
        bfl_modules = {k.rsplit(".", 1)[0] for k in shapes}
        for method in ("full", "noxattn", "xattn", "xattn-strict", "selfattn"):
            names = _layers(SliderNetwork.create(model, network_type="c3lier", training_method=method, rank=1,
                                                 alpha=1).state_dict_for("kohya"))
            assert names and {key_map[n][0][len("diffusion_model."):-len(".weight")] for n in names} <= bfl_modules


def test_diffusers_path_names_map_nowhere_in_comfyui(flux_dev):
    """Why `sliders-export` refuses them: `lora_unet_<diffusers path>` (the official flux-sliders naming and
    our `diffusers` key format) is no key ComfyUI or Forge knows for a Flux model."""
    model, shapes = flux_dev
    key_map = comfyui_flux_key_map(shapes, 3072)
    names = _layers(SliderNetwork.create(model, network_type="lierla", training_method="xattn", rank=1,
                                         alpha=1).state_dict_for("diffusers"))
    assert names and not any(name in key_map for name in names)


def test_comfyui_deltas_are_the_slider_deltas_on_tiny_flux(sliders_home):
    """The weight change ComfyUI (and Forge) applies for each mapped key is the one our hooks add: fused rows
    stacked in order, zero for a part the slider does not adapt, alpha / rank as the scale."""
    from sliders.models import load_pipeline

    model = load_pipeline(MODEL).transformer
    config = dict(model.config)
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = bfl_shapes(config)
    key_map = comfyui_flux_key_map(shapes, hidden)
    network = _slider(model, method="noxattn")  # image stream + single blocks, MLPs: fused layers half adapted
    ours = {}  # BFL weight -> our delta, rows stacked as flux_to_diffusers places them
    for key, module in network.loras.items():
        dotted = network._dotted[key]
        delta = module.scale * module.lora_up.weight.detach() @ module.lora_down.weight.detach()
        peft_name = f"transformer.{dotted}"
        target, rows = key_map[peft_name]
        full = ours.setdefault(target, torch.zeros(shapes[target[len("diffusion_model."):]]))
        start, length = rows or (0, full.shape[0])
        full[start:start + length] += delta
    for key_format in ("kohya", "peft"):
        got = {}
        for name, (down, up, alpha) in _layers(network.state_dict_for(key_format)).items():
            target, rows = key_map[name]
            scale = 1.0 if alpha is None else alpha / down.shape[0]
            full = got.setdefault(target, torch.zeros(shapes[target[len("diffusion_model."):]]))
            start, length = rows or (0, full.shape[0])
            full[start:start + length] += scale * (up @ down).reshape(length, full.shape[1])
        assert set(got) == set(ours)
        for target in ours:
            torch.testing.assert_close(got[target], ours[target], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- ComfyUI: where the keyframe switches


def _comfyui_table(shift):
    t = torch.arange(1, 10001, 1) / 10000
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))  # float32, smallest first


def _comfyui_schedule(name, steps, shift):
    """ComfyUI's schedulers on ModelSamplingFlux (comfy/samplers.py), restated."""
    table = _comfyui_table(shift)
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    if name == "simple":
        stride = len(table) / steps
        return torch.tensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])
    if name in ("normal", "sgm_uniform"):
        # timestep(sigma) is sigma for Flux, and sigma(t) shifts t: ComfyUI shifts these sigmas again.
        ts = torch.linspace(sigma_max, sigma_min, steps + 1)[:-1] if name == "sgm_uniform" else \
            torch.linspace(sigma_max, sigma_min, steps)
        return torch.tensor([float(math.exp(shift) / (math.exp(shift) + (1 / t - 1))) for t in ts] + [0.0])
    if name == "karras":
        ramp = torch.linspace(0, 1, steps)
        low, high = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
        return torch.cat([(high + ramp * (low - high)) ** 7, torch.zeros(1)])
    raise ValueError(name)


def _keyframe_on(sigmas, percent, shift):
    """Per step, whether ComfyUI's second keyframe (strength 1 from `percent`) is current: from the first
    model call whose float32 sigma is at or below percent_to_sigma(percent), compared as float32."""
    start_t = 1.0 if percent <= 0 else 0.0 if percent >= 1 else math.exp(shift) / (
        math.exp(shift) + (1 / (1 - percent) - 1))
    on, result = False, []
    for sigma in sigmas[:-1].float():
        on = on or bool(torch.tensor(start_t, dtype=torch.float32) >= sigma)
        result.append(on)
    return result


@pytest.mark.parametrize("start_noise", START_NOISES)
def test_comfyui_flux_keyframe_switches_where_sliders_sample_does(start_noise):
    misses = naive_misses = 0
    for shift in (flux_shift(512, 512), flux_shift(1024, 1024), flux_shift(768, 1344)):
        for scheduler in ("simple", "normal", "sgm_uniform", "karras"):
            for steps in range(1, 61):
                sigmas = _comfyui_schedule(scheduler, steps, shift)
                wanted = [float(s) * 1000 <= start_noise for s in sigmas[:-1].float()]
                misses += _keyframe_on(sigmas, comfyui_flux_start_percent(start_noise, shift), shift) != wanted
                naive_misses += _keyframe_on(sigmas, 1 - start_noise / 1000, shift) != wanted
    assert misses == 0
    if start_noise in (500, 750, 800, 850):
        assert naive_misses  # the unshifted percent switches at other steps


def test_comfyui_flux_schedule_is_sliders_sample_schedule():
    """ModelSamplingFlux at the image size and the simple scheduler give FluxPipeline's sigmas (for step
    counts that divide ComfyUI's table), so the workflow's switch step is `sliders-sample`'s."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sliders.families.flux import set_flow_schedule

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    for size, steps in ((512, 25), (1024, 20), (512, 40), (768, 50)):
        set_flow_schedule(scheduler, steps, size // 8, size // 8, "cpu")
        ours = flux_simple_sigmas(steps, flux_shift(size, size))
        torch.testing.assert_close(ours[:-1], scheduler.sigmas[:-1].float(), rtol=0, atol=2e-6)
        assert float(ours[-1]) == 0.0
    assert flux_shift(1024, 1024) == pytest.approx(1.15) and flux_shift(256, 256) == pytest.approx(0.5)


def test_comfyui_flux_workflow_fits_comfyui_node_definitions():
    workflow = comfyui_flux_workflow("age.safetensors", 2.0, 750, steps=20, width=512, height=768)
    assert comfyui_errors(workflow) == []
    by_type = {node["class_type"]: node["inputs"] for node in workflow.values()}
    for kind in ("UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance", "ModelSamplingFlux",
                 "EmptySD3LatentImage"):
        assert kind in NODES["nodes"] and kind in by_type
    assert by_type["DualCLIPLoader"]["type"] == "flux" and by_type["KSampler"]["cfg"] == 1.0
    assert by_type["KSampler"]["scheduler"] == "simple" and by_type["KSampler"]["model"] == ["4", 0]
    sampling = by_type["ModelSamplingFlux"]
    assert (sampling["width"], sampling["height"]) == (512, 768)
    keyframes = sorted(n["inputs"]["start_percent"] for n in workflow.values() if n["class_type"] == "CreateHookKeyframe")
    assert keyframes == [0.0, comfyui_flux_start_percent(750, flux_shift(512, 768))]
    # The shift keeps sigma high for longer: 0.75 comes at t = 1 / (1 + e^mu / 3), not a quarter of the way in.
    assert keyframes[1] == pytest.approx(1 - 1 / (1 + math.exp(flux_shift(512, 768)) / 3)) and keyframes[1] > 0.35
    stale = json.loads(json.dumps(workflow))
    stale["2"]["inputs"]["type"] = "flux2"
    stale["11"]["inputs"]["guidance"] = 150.0
    assert len(comfyui_errors(stale)) == 2
    with pytest.raises(InputError, match="-20 to 20"):
        comfyui_flux_workflow("x.safetensors", 25.0, 750)


# ---------------------------------------------------------------- Forge


def _forge_flux_sigmas(steps):
    """Forge's FLUX-dev sampling (PredictionFlux at mu 1.15, the simple scheduler), restated."""
    t = torch.arange(1, 10001, 1) / 10000
    table = math.exp(1.15) / (math.exp(1.15) + (1 / t - 1))
    stride = len(table) / steps
    return [float(table[-(1 + int(x * stride))]) for x in range(steps)]


def test_forge_flux_syntax_switches_at_the_step_of_its_default_sampler():
    assert FORGE_FLUX_SHIFT == 1.15
    scale = 1.5
    for start_noise in START_NOISES:
        for steps in range(1, 61):
            first = next((i for i, s in enumerate(_forge_flux_sigmas(steps)) if s * 1000 <= start_noise), steps)
            syntax = forge_flux_prompts("age", scale, start_noise, steps)
            assert syntax["first_on"] == first, (start_noise, steps)
            start = int(re.search(r":start=(\d+)>", syntax["lbw"]).group(1))
            assert ":lbw=FLUXALL:" in syntax["lbw"]
            reach = min(2 if first == 1 else first, steps)  # the counter cannot tell step 1 from 2
            assert _lbw_forge(start, scale, steps) == [0.0] * reach + [scale] * (steps - reach), (start_noise, steps)
            assert syntax["lbw_first_on"] == reach


# ---------------------------------------------------------------- the commands on a tiny FLUX slider


@pytest.fixture(scope="module")
def flux_slider(sliders_home, tmp_path_factory):
    from sliders.models import load_pipeline

    model = load_pipeline(MODEL).transformer
    network = _slider(model, method="full", network_type="lierla", seed=3, magnitude=2.0)
    folder = tmp_path_factory.mktemp("flux_export")
    return network.save(folder / "age.safetensors", {"sliders_base_model": MODEL, "sliders_resolution": "64"})


def test_export_flux_to_comfyui_forge_and_a1111(flux_slider, capsys):
    assert export_main([str(flux_slider), "--ui", "comfyui", "--steps", "20", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "FLUX.1 ComfyUI" in out and "simple" in out
    workflow = json.loads(flux_slider.with_name("age_comfyui.json").read_text())
    assert comfyui_errors(workflow) == []
    by_type = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert by_type["UNETLoader"]["unet_name"] == "flux1-dev.safetensors"
    assert by_type["EmptySD3LatentImage"]["width"] == 64 and by_type["KSampler"]["seed"] == 5
    assert by_type["CreateHookLoraModelOnly"] == {"lora_name": "age.safetensors", "strength_model": 2.0}

    assert export_main([str(flux_slider), "--ui", "forge", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    syntax = forge_flux_prompts("age", 2.0, 750, 20)
    assert syntax["lbw"] in out and "Euler" in out and "Simple" in out and "lbw=ALL" not in out

    assert export_main([str(flux_slider), "--ui", "a1111"]) == 2
    assert "AUTOMATIC1111 has no FLUX.1" in _error_line(capsys)
    assert export_main([str(flux_slider), "--ui", "comfyui", "--resolution", "72"]) == 2
    assert "multiple of 16" in _error_line(capsys)


def test_export_refuses_diffusers_path_flux_names_for_uis(flux_slider, tmp_path, capsys):
    diffusers_path = tmp_path / "age_diffusers.safetensors"
    assert convert_main([str(flux_slider), str(diffusers_path), "--to", "diffusers"]) == 0
    assert any(k.startswith("lora_unet_transformer_blocks_") for k in load_file(str(diffusers_path)))
    for ui in ("comfyui", "forge"):
        assert export_main([str(diffusers_path), "--ui", ui]) == 2
        line = _error_line(capsys)
        assert "do not map" in line and "--to kohya" in line
    peft = tmp_path / "age_peft.safetensors"
    assert convert_main([str(flux_slider), str(peft), "--to", "peft"]) == 0
    assert "ComfyUI and Forge map it" in capsys.readouterr().out
    assert export_main([str(peft), "--ui", "comfyui"]) == 0  # ComfyUI maps transformer.<path> for Flux


def _png(folder: Path) -> np.ndarray:
    images = [p for p in folder.rglob("*.png") if "grid" not in p.name]
    assert len(images) == 1, images
    return np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.int16)


def test_flux_diffusers_snippet_runs_as_printed_and_makes_sliders_sample_image(flux_slider, tmp_path, capsys):
    pytest.importorskip("peft")
    # diffusers reads kohya's FLUX naming with FLUX.1's widths written into its converter (3072), which the
    # tiny model lacks; the PEFT naming it loads at any size, and FLUX.1 loads both.
    peft = tmp_path / "age_peft.safetensors"
    assert convert_main([str(flux_slider), str(peft), "--to", "peft"]) == 0
    capsys.readouterr()
    common = ["--steps", "6", "--start_noise", "750", "--prompt", "a large circle", "--seed", "3", "--scale", "2"]
    assert export_main([str(peft), "--ui", "diffusers", *common]) == 0
    snippet = capsys.readouterr().out
    assert "from diffusers import FluxPipeline" in snippet and "builtin:" not in snippet
    run = tmp_path / "run"
    run.mkdir()
    (run / "snippet.py").write_text(snippet)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "snippet.py"], cwd=run, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = np.asarray(Image.open(run / "slider.png").convert("RGB"), dtype=np.int16)

    def sample(start_noise, folder):
        assert sample_main(["--slider", str(flux_slider), "--scales", "2", "--prompt", "a large circle", "--seeds", "3",
                            "--steps", "6", "--start_noise", str(start_noise), "--device", "cpu",
                            "--output", str(folder)]) == 0
        return _png(folder)

    same = sample(750, tmp_path / "same")
    assert printed.shape == same.shape == (64, 64, 3)
    assert np.abs(printed - same).max() <= 1
    always_on = sample(1000, tmp_path / "always_on")
    # Without the switch it is another image (the tiny model's slider moves pixels by a few levels only).
    assert np.abs(printed - always_on).max() > 3 * np.abs(printed - same).max() + 2


# ---------------------------------------------------------------- sliders-convert


def _flux_inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    config = model.config
    from sliders.models import Conditioning

    latents = torch.randn(1, config.in_channels // 4, 8, 8, generator=g)
    cond = Conditioning(torch.randn(1, 5, config.joint_attention_dim, generator=g),
                        torch.randn(1, config.pooled_projection_dim, generator=g), None)
    return latents, torch.tensor(600.0), cond


def _flux_out(model, inputs):
    with torch.no_grad():
        return FLUX.predict(model, *inputs)


def test_convert_flux_between_kohya_and_peft_round_trips_exactly(flux_slider, tmp_path, sliders_home):
    from sliders.models import load_pipeline

    model = load_pipeline(MODEL).transformer
    inputs = _flux_inputs(model)
    loaded = load_slider(flux_slider, model)
    with loaded.scaled(1.5):
        expected = _flux_out(model, inputs)
    loaded.detach()
    peft, back = tmp_path / "peft.safetensors", tmp_path / "kohya.safetensors"
    assert convert_main([str(flux_slider), str(peft), "--to", "peft"]) == 0
    assert all(k.startswith("transformer.") for k in load_file(str(peft)))
    assert convert_main([str(peft), str(back), "--to", "kohya"]) == 0
    source, result = load_file(str(flux_slider)), load_file(str(back))
    assert set(result) == set(source) and any("_img_attn_qkv." in k for k in result)
    # PEFT has no alpha: alpha / rank went into the up weights (here 1/12 of a fused qkv: not a power of 2),
    # so kohya -> peft -> kohya gives the same downs and the same up * alpha / rank, to the last bit at
    # most (one rounding), with alpha = rank; peft -> kohya -> peft gives the PEFT file back bit for bit.
    for key in source:
        if key.endswith("lora_down.weight"):
            assert torch.equal(result[key], source[key]), key
        elif key.endswith("lora_up.weight"):
            layer = key[: -len(".lora_up.weight")]
            rank = source[f"{layer}.lora_down.weight"].shape[0]
            assert float(result[f"{layer}.alpha"]) == rank
            torch.testing.assert_close(result[key], source[key] * float(source[f"{layer}.alpha"]) / rank,
                                       rtol=1e-7, atol=0)
    peft_again = tmp_path / "peft_again.safetensors"
    assert convert_main([str(back), str(peft_again), "--to", "peft"]) == 0
    first, second = load_file(str(peft)), load_file(str(peft_again))
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert read_slider_file(back)[1]["sliders_family"] == "flux"
    for path in (peft, back):
        again = load_slider(path, model)
        with again.scaled(1.5):
            torch.testing.assert_close(_flux_out(model, inputs), expected, rtol=1e-5, atol=1e-6)
        again.detach()


def _official_flux_state(model, rank=4, dtype=torch.bfloat16, seed=7):
    """A state dict as the official flux-sliders code saves it (flux-sliders/utils/lora.py, rohitgandikota/
    sliders a4652945): torch.save of the LoRANetwork's state_dict in the weight dtype; a LoRA for every
    Linear child of each `Attention` module, named 'lora_unet' + '.' + module path + '.' + child with dots
    made underscores, holding lora_down.weight, lora_up.weight and an alpha buffer (torch.tensor(1))."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for path, module in model.named_modules():
        if not path.endswith(".attn"):
            continue
        for child, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear):
                name = f"lora_unet_{path}_{child}".replace(".", "_")
                state[f"{name}.lora_down.weight"] = (torch.randn(rank, layer.in_features, generator=g) * 0.1).to(dtype)
                state[f"{name}.lora_up.weight"] = (torch.randn(layer.out_features, rank, generator=g) * 0.1).to(dtype)
                state[f"{name}.alpha"] = torch.tensor(1).to(dtype)
    return state


def test_official_flux_pt_converts_to_kohya_naming(sliders_home, tmp_path):
    from sliders.models import load_pipeline

    model = load_pipeline(MODEL).transformer
    state = _official_flux_state(model)
    assert "lora_unet_transformer_blocks_0_attn_to_out_0.lora_down.weight" in state
    assert "lora_unet_single_transformer_blocks_1_attn_to_q.alpha" in state
    path = tmp_path / "slider_0.pt"
    torch.save(state, path)
    inputs = _flux_inputs(model)
    reference = SliderNetwork(model, [(p, m) for p, m in model.named_modules() if isinstance(m, torch.nn.Linear) and
                                      f"lora_unet_{p}".replace(".", "_") + ".alpha" in state], 4, 1.0)
    with torch.no_grad():
        for key, module in reference.loras.items():
            module.lora_down.weight.copy_(state[f"{key}.lora_down.weight"].float())
            module.lora_up.weight.copy_(state[f"{key}.lora_up.weight"].float())
    reference.attach()
    with reference.scaled(-2.0):
        expected = _flux_out(model, inputs)
    reference.detach()
    out = tmp_path / "slider_0.safetensors"
    assert convert_main([str(path), str(out), "--pretrained_model", MODEL]) == 0
    tensors, metadata = read_slider_file(out)
    assert metadata["sliders_family"] == "flux" and metadata["sliders_key_format"] == "kohya"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in tensors
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in tensors
    converted = load_slider(out, model)
    with converted.scaled(-2.0):
        torch.testing.assert_close(_flux_out(model, inputs), expected, rtol=1e-4, atol=1e-5)


def test_official_flux_pt_without_a_base_model_is_placed_in_flux_dev(flux_dev, tmp_path, capsys):
    """The official files record nothing: their names say FLUX, and FLUX.1-dev's layout places them."""
    model, _ = flux_dev
    state = {}
    for key in ("transformer_blocks.18.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
                "single_transformer_blocks.37.attn.to_v"):
        layer = model.get_submodule(key)
        name = f"lora_unet_{key}".replace(".", "_")
        state[f"{name}.lora_down.weight"] = torch.randn(2, layer.in_features).to(torch.bfloat16)
        state[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, 2).to(torch.bfloat16)
        state[f"{name}.alpha"] = torch.tensor(1).to(torch.bfloat16)
    path = tmp_path / "slider_0.pt"
    torch.save(state, path)
    out = tmp_path / "dev.safetensors"
    assert convert_main([str(path), str(out)]) == 0
    tensors = load_file(str(out))
    assert tensors["lora_unet_double_blocks_18_img_attn_qkv.lora_up.weight"].shape == (3 * 3072, 2)
    assert tensors["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (7 * 3072, 2)
    assert tensors["lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight"].shape == (2, 3072)
    # The wrong model for a file is one line, exit 2.
    assert convert_main([str(path), str(tmp_path / "x.safetensors"), "--pretrained_model", MODEL]) == 2
    line = _error_line(capsys)
    assert "lora_unet_transformer_blocks_18_attn_to_q" in line and "lacks" in line
