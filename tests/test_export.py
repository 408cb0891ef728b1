"""The start_noise switch in each UI, checked against models of the UIs themselves:

- ComfyUI: the exported workflow against ComfyUI's node definitions (tests/data/comfyui_nodes.json, read
  from its source), and its hook keyframe against a model of ComfyUI's schedulers and keyframe logic
  (tests/comfyui_model.py) on every scheduler, 1-60 steps.
- AUTOMATIC1111/Forge: the prompt syntax against models of sd-webui-loractl's and LoRA Block Weight's
  step counters on each webui's default SDXL sampler.
- diffusers: the printed snippet, run as printed, makes sliders-sample's image.
And the file checks both commands make before they work."""

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

import comfyui_model
from sliders.cli import convert_main, export_main, sample_main
from sliders.errors import InputError
from sliders.export import (COMFYUI_SOURCE, WEBUIS, a1111_prompts, comfyui_start_percent, comfyui_workflow,
                            diffusers_snippet, extension_counter, recommended, webui_first_on_step)
from sliders.network import SliderNetwork, read_slider_file

NODES = json.loads((Path(__file__).parent / "data" / "comfyui_nodes.json").read_text())
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "COMBO", "BOOLEAN"}
START_NOISES = (0, 500, 750, 800, 850, 999, 1000)


@pytest.fixture
def slider_file(unet, tmp_path):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.normal_(0, 0.3)
    return network.save(tmp_path / "age.safetensors",
                        {"sliders_base_model": "builtin:tiny-sdxl", "sliders_resolution": "64"})


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_saved_files_record_start_noise_and_scales(slider_file):
    _, metadata = read_slider_file(slider_file)
    assert metadata["sliders_start_noise"] == "750"
    assert json.loads(metadata["sliders_scales"]) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert recommended(metadata, None, None) == (750.0, 2.0)
    assert recommended({**metadata, "sliders_start_noise": "600"}, None, -1.5) == (600.0, -1.5)
    with pytest.raises(InputError, match="start_noise"):
        recommended(metadata, 1200.0, None)


# ---------------------------------------------------------------- ComfyUI: node definitions


def comfyui_errors(workflow: dict) -> list[str]:
    """What ComfyUI's node definitions say is wrong with an API-format workflow: unknown nodes, missing
    required inputs, inputs a node does not declare (ComfyUI's validation ignores them and the node
    then fails when it runs), links to a missing node or output or of another type than the input's,
    and widget values of the wrong kind, out of range or not among a combo's options."""
    errors = []
    for node_id, node in workflow.items():
        kind = node["class_type"]
        spec = NODES["nodes"].get(kind)
        if spec is None:
            errors.append(f"{node_id}: unknown node {kind}")
            continue
        declared = {**spec["required"], **spec["optional"]}
        errors += [f"{node_id} {kind}: required input {name} missing" for name in spec["required"]
                   if name not in node["inputs"]]
        for name, value in node["inputs"].items():
            where = f"{node_id} {kind}.{name}"
            if name not in declared:
                errors.append(f"{where}: not an input of {kind}")
                continue
            info = declared[name]
            if isinstance(value, list):  # a link: [node id, output index]
                source = workflow.get(value[0]) if len(value) == 2 and isinstance(value[0], str) else None
                outputs = NODES["nodes"].get(source["class_type"], {}).get("return_types", []) if source else []
                if not isinstance(value[1], int) or not 0 <= value[1] < len(outputs):
                    errors.append(f"{where}: link {value} to no output")
                elif outputs[value[1]] != info["type"]:
                    errors.append(f"{where}: link gives {outputs[value[1]]}, input takes {info['type']}")
                continue
            if info["type"] not in WIDGET_TYPES:
                errors.append(f"{where}: {info['type']} must come from a link, got {value!r}")
            elif info["type"] == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
                errors.append(f"{where}: {value!r} is not an INT")
            elif info["type"] == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                errors.append(f"{where}: {value!r} is not a FLOAT")
            elif info["type"] in ("STRING", "COMBO") and not isinstance(value, str):
                errors.append(f"{where}: {value!r} is not text")
            elif info["type"] == "COMBO" and "options" in info and value not in info["options"]:
                errors.append(f"{where}: {value!r} is not one of its options")
            elif ("min" in info and value < info["min"]) or ("max" in info and value > info["max"]):
                errors.append(f"{where}: {value!r} is outside {info['min']}..{info['max']}")
    return errors


def test_comfyui_workflow_fits_comfyui_node_definitions(slider_file, capsys):
    assert export_main([str(slider_file), "--ui", "comfyui", "--steps", "25", "--seed", "7"]) == 0
    path = slider_file.with_name("age_comfyui.json")
    out = capsys.readouterr().out
    assert str(path) in out and COMFYUI_SOURCE in out and "25 steps" in out
    workflow = json.loads(path.read_text())
    assert comfyui_errors(workflow) == []
    assert NODES["source"]["commit"].startswith(COMFYUI_SOURCE.split()[1])
    assert workflow["8"]["inputs"]["hooks"] == ["5", 0]  # ComfyUI's name; opt_hooks was dropped at run time
    assert workflow["9"]["inputs"]["width"] == workflow["9"]["inputs"]["height"] == 64  # the slider's resolution
    assert workflow["10"]["inputs"]["seed"] == 7


def test_the_node_check_finds_what_comfyui_would_reject():
    workflow = comfyui_workflow("x.safetensors", 1.0, 750)
    assert comfyui_errors(workflow) == []
    stale = json.loads(json.dumps(workflow))
    stale["8"]["inputs"]["opt_hooks"] = stale["8"]["inputs"].pop("hooks")
    stale["10"]["inputs"]["scheduler"] = "karras_exp"
    stale["10"]["inputs"]["steps"] = 2.5
    stale["9"]["inputs"].pop("batch_size")
    stale["11"]["inputs"]["vae"] = ["1", 1]
    stale["4"]["inputs"]["start_percent"] = 1.5
    errors = comfyui_errors(stale)
    assert len(errors) == 6 and any("opt_hooks: not an input" in e for e in errors), errors
    with pytest.raises(InputError, match="-20 to 20"):
        comfyui_workflow("x.safetensors", 25.0, 750)


def test_comfyui_workflow_uses_hook_keyframes():
    workflow = comfyui_workflow("age.safetensors", 2.0, 750, steps=25)
    by_type = {}
    for node in workflow.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert by_type["CreateHookLoraModelOnly"] == [{"lora_name": "age.safetensors", "strength_model": 2.0}]
    keyframes = [(k["start_percent"], k["strength_mult"]) for k in by_type["CreateHookKeyframe"]]
    assert keyframes == [(0.0, 0.0), (1 - 750.5 / 999, 1.0)]  # off, then on from the sigma between t=750 and 751
    sampler = by_type["KSampler"][0]
    assert sampler["steps"] == 25 and sampler["positive"] == ["8", 0] and sampler["negative"] == ["8", 1]


# ---------------------------------------------------------------- ComfyUI: where the keyframe switches


def _old_start_percent(start_noise):
    return round(1.0 - start_noise / 1000, 4)


def _mismatches(percent_of, start_noise):
    """Scheduler x step-count runs (1-60 steps) in which ComfyUI's keyframe switches the slider on at
    another step than sliders-sample's rule: on when the step's timestep is at or below start_noise."""
    found = []
    for scheduler in comfyui_model.SCHEDULERS:
        for steps in range(1, 61):
            if scheduler == "kl_optimal" and steps == 1:
                continue  # ComfyUI's own kl_optimal divides by steps - 1: a NaN sigma
            sigmas = comfyui_model.sigmas_of(scheduler, steps)
            wanted = [1.0 if comfyui_model.timestep(s) <= start_noise else 0.0 for s in sigmas[:-1]]
            got = comfyui_model.keyframe_strengths(sigmas, [(0.0, 0.0), (percent_of(start_noise), 1.0)])
            if got != wanted:
                found.append((scheduler, steps))
    return found


@pytest.mark.parametrize("start_noise", START_NOISES)
def test_comfyui_keyframe_switches_where_sliders_sample_does_on_every_scheduler(start_noise):
    assert _mismatches(comfyui_start_percent, start_noise) == []
    if start_noise in (500, 750, 800, 0, 999):
        assert _mismatches(_old_start_percent, start_noise)  # 1 - start_noise / 1000 did not


def test_comfyui_model_reproduces_comfyui_numbers():
    """Spot checks of the model against numbers ComfyUI's formulas give for SDXL."""
    assert float(comfyui_model.SIGMA_MAX) == pytest.approx(14.6146, abs=1e-4)
    assert float(comfyui_model.SIGMA_MIN) == pytest.approx(0.0292, abs=1e-4)
    assert comfyui_model.timestep(comfyui_model.SIGMA_MAX) == 999
    normal = comfyui_model.sigmas_of("normal", 10)
    assert len(normal) == 11 and float(normal[-1]) == 0.0
    assert [comfyui_model.timestep(s) for s in normal[:2]] == [999, 888]
    assert comfyui_model.percent_to_sigma(0.0) > 1e8 and comfyui_model.percent_to_sigma(1.0) == 0.0


# ---------------------------------------------------------------- AUTOMATIC1111 / Forge


def _a1111_timestep(sigma):
    """AUTOMATIC1111's timestep of a sigma: k-diffusion's sigma_to_t without quantization, interpolated
    linearly in log sigma between the two timesteps around it."""
    log_sigmas = comfyui_model.LOG_SIGMAS.double().numpy()
    log_sigma = math.log(float(sigma))
    low = min(int(np.cumsum(log_sigma - log_sigmas >= 0).argmax()), len(log_sigmas) - 2)
    w = float(np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1))
    return (1 - w) * low + w * (low + 1)


def _loractl_weight(text, counter, steps):
    """sd-webui-loractl's weight (lib/utils.py): 'w@p,...' points sorted by position, np.interp at the
    counter; positions all at most 1 are fractions of (sampling_steps - 2). A single number is constant."""
    points = [[float(v) for v in re.split("[@~]", part)] for part in re.split("[,;]", text)]
    if len(points[0]) == 1:
        return points[0][0]
    points.sort(key=lambda p: p[1])
    weights, positions = zip(*points)
    x = counter if positions[-1] > 1.0 else counter / (steps - 2)
    return float(np.interp(x, positions, weights))


def _lbw_a1111(start, scale, steps):
    """LoRA Block Weight in AUTOMATIC1111 (denoiser_callback, before each model call): at counter 0 the
    LoRA is set to 0, then to its strength once the counter exceeds start - 2, once."""
    weights, pending, weight = [], start is not None, scale
    for step in range(steps):
        counter = extension_counter(step)
        if pending and counter == 0:
            weight = 0.0
        if pending and counter > start - 2:
            weight, pending = scale, False
        weights.append(weight)
    return weights


def _lbw_forge(start, scale, steps):
    """LoRA Block Weight in Forge: the LoRA at 0 unless start is 0 (lbwf), at its strength from the
    model call whose counter equals start (denoiser_callback)."""
    weight, weights = (scale if start == 0 else 0.0), []
    for step in range(steps):
        if extension_counter(step) == start:
            weight = scale
        weights.append(weight)
    return weights


def _syntax_number(syntax, name):
    match = re.search(rf":{name}=(\d+)>", syntax)
    return int(match.group(1)) if match else None


def test_the_step_counter_lags_the_sampler_by_one():
    # webui sets the counter to i in the callback after step i's model call, and to 0 at the start.
    assert [extension_counter(step) for step in range(5)] == [0, 0, 1, 2, 3]


def test_webui_syntax_switches_at_the_step_of_the_default_sampler():
    scale, unreachable = 1.5, 0
    for start_noise in START_NOISES:
        for steps in range(1, 61):
            karras = comfyui_model.sigmas_of("karras", steps)  # k-diffusion's Karras schedule, as both webuis use
            first = next((i for i, s in enumerate(karras[:-1]) if _a1111_timestep(s) <= start_noise), steps)
            forge_first = next(
                (i for i, s in enumerate(karras[:-1]) if comfyui_model.timestep(s) <= start_noise), steps)
            syntax = a1111_prompts("age", scale, start_noise, steps)
            assert (syntax["first_on"], syntax["forge_first_on"]) == (first, forge_first), (start_noise, steps)
            # Steps 0 and 1 read the same counter: a switch meant for step 1 comes at step 2.
            reach, forge_reach = (2 if first == 1 else first), (2 if forge_first == 1 else forge_first)
            unreachable += (first == 1 < steps) + (forge_first == 1 < steps)
            wanted = [0.0] * min(reach, steps) + [scale] * (steps - min(reach, steps))
            forge_wanted = [0.0] * min(forge_reach, steps) + [scale] * (steps - min(forge_reach, steps))
            schedule = syntax["loractl"][len("<lora:age:"):-1]
            loractl = [_loractl_weight(schedule, extension_counter(step), steps) for step in range(steps)]
            assert loractl == wanted, (start_noise, steps, syntax["loractl"])
            assert _lbw_a1111(_syntax_number(syntax["lbw"], "start"), scale, steps) == wanted, (start_noise, steps)
            assert _lbw_forge(_syntax_number(syntax["lbw_forge"], "start"), scale, steps) == forge_wanted
            assert (syntax["loractl_first_on"], syntax["lbw_first_on"], syntax["lbw_forge_first_on"]) == (
                min(reach, steps), min(reach, steps), min(forge_reach, steps))
    assert unreachable  # the case exists (few steps) and is handled as said


def test_the_previous_syntax_came_on_a_step_late_in_forge():
    syntax = a1111_prompts("age", 2.0, 750, 30)
    assert syntax["first_on"] == syntax["forge_first_on"] == 9  # DPM++ 2M (SDE) Karras, 30 steps: t 757, then 716
    assert _lbw_forge(9, 2.0, 30).index(2.0) == 10  # the previous export's start=9
    assert _lbw_forge(_syntax_number(syntax["lbw_forge"], "start"), 2.0, 30).index(2.0) == 9


def test_a1111_export_prints_the_syntax_and_what_it_was_computed_for(slider_file, capsys):
    assert export_main([str(slider_file), "--ui", "a1111", "--steps", "30", "--scale", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "<lora:age:0@0,0@7,1.5@8>" in out and "<lora:age:1.5:lbw=ALL:start=9>" in out
    assert "<lora:age:1.5:lbw=ALL:start=8>" in out  # Forge
    assert "30 sampling steps" in out and "DPM++ 2M, schedule type Automatic (Karras)" in out
    assert "DPM++ 2M SDE, schedule type Karras" in out and "on from step 10" in out
    assert WEBUIS["a1111"].sampler == "DPM++ 2M" and webui_first_on_step(WEBUIS["a1111"], 20, 750) == 6


def test_export_rejects_an_unknown_ui(slider_file, capsys):
    assert export_main([str(slider_file), "--ui", "invokeai"]) == 2
    assert "comfyui, a1111, diffusers" in capsys.readouterr().err


# ---------------------------------------------------------------- diffusers


def _png(folder: Path) -> np.ndarray:
    images = [p for p in folder.rglob("*.png") if "grid" not in p.name]
    assert len(images) == 1, images
    return np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.int16)


def test_diffusers_snippet_runs_as_printed_and_makes_sliders_sample_image(slider_file, tmp_path, capsys):
    pytest.importorskip("peft")
    common = ["--steps", "6", "--start_noise", "750", "--prompt", "a large circle", "--seed", "3", "--scale", "2"]
    assert export_main([str(slider_file), "--ui", "diffusers", *common]) == 0
    snippet = capsys.readouterr().out
    assert "builtin:" not in snippet and "HEIGHT, WIDTH = 64, 64" in snippet
    run = tmp_path / "run"
    run.mkdir()
    (run / "snippet.py").write_text(snippet)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "snippet.py"], cwd=run, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = np.asarray(Image.open(run / "slider.png").convert("RGB"), dtype=np.int16)

    def sample(start_noise, folder):
        assert sample_main(["--slider", str(slider_file), "--scales", "2", "--prompt", "a large circle", "--seeds", "3",
                            "--steps", "6", "--start_noise", str(start_noise), "--guidance_scale", "5", "--device", "cpu",
                            "--output", str(folder)]) == 0
        return _png(folder)

    same = sample(750, tmp_path / "same")
    assert printed.shape == same.shape == (64, 64, 3)
    assert np.abs(printed - same).max() <= 1  # the same image up to float rounding (PEFT vs our hooks; 0 here)
    always_on = sample(1000, tmp_path / "always_on")  # the slider without the switch: visibly another image
    assert np.abs(printed - always_on).max() > 20 and np.abs(printed - always_on).mean() > 2


def test_diffusers_snippet_names_a_loadable_model_and_a_device_that_exists(tmp_path):
    snippet = diffusers_snippet(str(tmp_path / "age.safetensors"), 1.0, 750, model="builtin:tiny-sdxl", steps=4)
    model = re.search(r"^MODEL = '(.*)'$", snippet, re.M).group(1)
    assert (Path(model) / "model_index.json").is_file()
    assert "torch.cuda.is_available()" in snippet and "torch.float32" in snippet


# ---------------------------------------------------------------- file checks


def test_export_of_a_pt_file_says_to_convert_first(unet, tmp_path, capsys):
    path = tmp_path / "official.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, path)
    assert export_main([str(path), "--ui", "comfyui"]) == 2
    assert "sliders-convert" in capsys.readouterr().err


def test_peft_files_are_for_diffusers_only(slider_file, tmp_path, capsys):
    peft = tmp_path / "age_peft.safetensors"
    assert convert_main([str(slider_file), str(peft), "--to", "peft"]) == 0
    assert "for diffusers/PEFT only" in capsys.readouterr().out
    for ui in ("comfyui", "a1111"):
        assert export_main([str(peft), "--ui", ui]) == 2
        line = _error_line(capsys)
        assert "--to kohya" in line and f"sliders-convert {peft}" in line
    assert not (tmp_path / "age_peft_comfyui.json").exists()
    assert export_main([str(peft), "--ui", "diffusers"]) == 0


def test_convert_and_export_check_the_output_path_first(slider_file, tmp_path, capsys):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("keep")
    assert convert_main([str(slider_file), str(blocker / "out.safetensors")]) == 2
    assert "is a file" in _error_line(capsys)
    assert export_main([str(slider_file), "--ui", "comfyui", "--output", str(blocker / "w.json")]) == 2
    assert "is a file" in _error_line(capsys)
    folder = tmp_path / "taken.safetensors"
    folder.mkdir()
    assert convert_main([str(slider_file), str(folder)]) == 2
    assert "is a folder" in _error_line(capsys)
    assert blocker.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == [
        "age.safetensors", "somefile.txt", "taken.safetensors"]
    read_only = Path("/sys")  # a read-only file system, even for root
    if read_only.is_dir():
        assert convert_main([str(slider_file), str(read_only / "out.safetensors")]) == 2
        assert "cannot be written" in _error_line(capsys)
        assert export_main([str(slider_file), "--ui", "comfyui", "--output", str(read_only / "w.json")]) == 2
        assert "cannot be written" in _error_line(capsys)


def test_convert_and_export_refuse_a_diverged_slider(slider_file, tmp_path, capsys):
    from safetensors.torch import save_file

    tensors, metadata = read_slider_file(slider_file)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata)
    assert convert_main([str(broken), str(tmp_path / "out.safetensors")]) == 2
    assert "NaN or infinite" in _error_line(capsys)
    for ui in ("comfyui", "a1111", "diffusers"):
        assert export_main([str(broken), "--ui", ui]) == 2
        assert "NaN or infinite" in _error_line(capsys)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "broken_comfyui.json").exists()
