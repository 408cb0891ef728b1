"""The start_noise switch in each UI: ComfyUI hook keyframes, A1111 extension syntax, and a diffusers
snippet that runs (on the tiny model) and switches the adapter where sliders-sample does."""

import json

import numpy as np
import pytest
import torch

from sliders.cli import export_main
from sliders.errors import InputError
from sliders.export import a1111_prompts, comfyui_workflow, diffusers_snippet, first_on_step, recommended
from sliders.network import SliderNetwork, read_slider_file
from sliders.sampling import multipliers_at

# Inputs of the nodes used, as ComfyUI declares them (nodes.py; comfy_extras/nodes_hooks.py).
COMFYUI_INPUTS = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CreateHookLoraModelOnly": {"lora_name", "strength_model", "prev_hooks"},
    "CreateHookKeyframe": {"strength_mult", "start_percent", "prev_hook_kf"},
    "SetHookKeyframes": {"hooks", "hook_kf"},
    "CLIPTextEncode": {"text", "clip"},
    "PairConditioningSetProperties": {"positive_NEW", "negative_NEW", "strength", "set_cond_area", "opt_mask",
                                      "opt_hooks", "opt_timesteps"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "KSampler": {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                 "latent_image", "denoise"},
    "VAEDecode": {"samples", "vae"},
    "SaveImage": {"images", "filename_prefix"},
}
# Outputs per node type (index -> type), for checking links.
COMFYUI_OUTPUTS = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CreateHookLoraModelOnly": ["HOOKS"],
    "CreateHookKeyframe": ["HOOK_KEYFRAMES"], "SetHookKeyframes": ["HOOKS"], "CLIPTextEncode": ["CONDITIONING"],
    "PairConditioningSetProperties": ["CONDITIONING", "CONDITIONING"], "EmptyLatentImage": ["LATENT"],
    "KSampler": ["LATENT"], "VAEDecode": ["IMAGE"], "SaveImage": [],
}


@pytest.fixture
def slider_file(unet, tmp_path):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.normal_(0, 0.05)
    return network.save(tmp_path / "age.safetensors", {"sliders_base_model": "builtin:tiny-sdxl"})


def test_saved_files_record_start_noise_and_scales(slider_file):
    _, metadata = read_slider_file(slider_file)
    assert metadata["sliders_start_noise"] == "750"
    assert json.loads(metadata["sliders_scales"]) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert recommended(metadata, None, None) == (750.0, 2.0)
    assert recommended({**metadata, "sliders_start_noise": "600"}, None, -1.5) == (600.0, -1.5)
    with pytest.raises(InputError, match="start_noise"):
        recommended(metadata, 1200.0, None)


def test_comfyui_workflow_uses_hook_keyframes(slider_file, tmp_path, capsys):
    assert export_main([str(slider_file), "--ui", "comfyui", "--steps", "25"]) == 0
    path = slider_file.with_name("age_comfyui.json")
    assert str(path) in capsys.readouterr().out
    workflow = json.loads(path.read_text())
    for node_id, node in workflow.items():
        kind = node["class_type"]
        assert set(node["inputs"]) <= COMFYUI_INPUTS[kind], kind
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [node id, output index]
                assert value[0] in workflow and value[1] < len(COMFYUI_OUTPUTS[workflow[value[0]]["class_type"]])
    by_type = {}
    for node in workflow.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert by_type["CreateHookLoraModelOnly"] == [{"lora_name": "age.safetensors", "strength_model": 2.0}]
    keyframes = sorted((k["start_percent"], k["strength_mult"]) for k in by_type["CreateHookKeyframe"])
    assert keyframes == [(0.0, 0.0), (0.25, 1.0)]  # off, then on from 1 - 750/1000
    sampler = by_type["KSampler"][0]
    assert sampler["steps"] == 25 and sampler["positive"] == ["8", 0] and sampler["negative"] == ["8", 1]
    assert comfyui_workflow("x.safetensors", 1.0, 500)["4"]["inputs"]["start_percent"] == 0.5


def _loractl_weight(syntax, step, steps):
    """sd-webui-loractl's reading of a 'w@s,...' list: np.interp over the points; positions above 1
    are absolute steps, else fractions of the run."""
    points = sorted(([float(v) for v in part.split("@")] for part in syntax.split(",")), key=lambda p: p[1])
    weights, positions = zip(*points)
    x = step if positions[-1] > 1 else step / max(steps - 2, 1)
    return float(np.interp(x, positions, weights))


@pytest.mark.parametrize("steps,start_noise,first", [(30, 750, 8), (20, 750, 5), (4, 750, 1), (10, 1000, 0), (10, 0, 10)])
def test_a1111_syntax_switches_at_the_right_step(steps, start_noise, first):
    assert first_on_step(steps, start_noise) == first
    syntax = a1111_prompts("age", 2.0, start_noise, steps)
    schedule = syntax["loractl"][len("<lora:age:"):-1]
    weights = [_loractl_weight(schedule, s, steps) if "@" in schedule else float(schedule) for s in range(steps)]
    assert weights == [0.0] * first + [2.0] * (steps - first)
    assert syntax["lbw"] == f"<lora:age:2:lbw=ALL:start={first + 1}>"


def test_a1111_export_prints_the_syntax(slider_file, capsys):
    assert export_main([str(slider_file), "--ui", "a1111", "--steps", "30", "--scale", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "<lora:age:0@0,0@7,1.5@8>" in out and "<lora:age:1.5:lbw=ALL:start=9>" in out


def test_export_rejects_an_unknown_ui(slider_file, capsys):
    assert export_main([str(slider_file), "--ui", "invokeai"]) == 2
    assert "comfyui, a1111, diffusers" in capsys.readouterr().err


def test_diffusers_snippet_runs_and_switches_like_sliders_sample(slider_file, tiny_model_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline

    assert export_main([str(slider_file), "--ui", "diffusers", "--steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "callback_on_step_end=switch_slider" in printed and "set_adapters" in printed
    # The test runs the same snippet on the tiny model, on the CPU, small.
    snippet = diffusers_snippet(str(slider_file), 2.0, 750, model=str(tiny_model_dir), steps=6, height=64, width=64,
                                output=str(tmp_path / "out.png"), device="cpu", dtype="torch.float32")
    weights = []
    original = StableDiffusionXLPipeline.set_adapters

    def recording(self, names, adapter_weights=None):
        weights.append(list(adapter_weights))
        return original(self, names, adapter_weights=adapter_weights)

    monkeypatch.setattr(StableDiffusionXLPipeline, "set_adapters", recording)
    namespace = {}
    exec(compile(snippet, "snippet.py", "exec"), namespace)
    assert (tmp_path / "out.png").is_file()
    timesteps = namespace["pipe"].scheduler.timesteps
    expected = [list(multipliers_at(float(t), [2.0], 750)) for t in timesteps]
    # load (off), the first step's weight, then one per following step.
    assert weights == [[0.0]] + expected
    assert expected[0] == [0.0] and expected[-1] == [2.0]


def test_export_of_a_pt_file_says_to_convert_first(unet, tmp_path, capsys):
    path = tmp_path / "official.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, path)
    assert export_main([str(path), "--ui", "comfyui"]) == 2
    assert "sliders-convert" in capsys.readouterr().err
