"""What is checked from files and configs before any model loads (docs/errors.md): a slider that does
not fit its base model and a recorded base model that is gone (sliders-sample, sliders-edit,
sliders-eval), and a training state that cannot resume the run (--resume). Each is one line on stderr
and exit code 2, and the model loader is never called."""

import shutil

import pytest
import torch
from PIL import Image

from sliders.cli import edit_main, eval_main, sample_main, train_main
from sliders.config import BUILTIN_MODEL, TINY_MODEL
from sliders.export import meta_unet
from sliders.models import read_unet_config
from sliders.network import SliderNetwork
from sliders.sampling import GenerationSettings, SliderSpec, plan_run
from test_cli import _error_line
from test_runs import RUN, _config, _Stop, _stop_at

COMMANDS = ["sample", "edit", "eval", "eval-scenes"]


@pytest.fixture
def loads(inject_loader):
    return _refuse_loads(inject_loader)


def _refuse_loads(inject_loader):
    """The commands' model loader, replaced by a recorder that refuses; its calls."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded")

    inject_loader(refuse)
    return calls


def test_an_injected_loader_stands_in_for_load_pipeline_until_its_block_ends(tiny_model_dir):
    from sliders.models import injected_loader, load_pipeline

    calls = []

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        return load_pipeline(*args, **kwargs)  # the real load: the injection is off while the loader runs

    with injected_loader(recorder):
        pipe = load_pipeline(str(tiny_model_dir))
    assert calls == [((str(tiny_model_dir), torch.float32, "cpu"), {"family": None, "v2": False, "transformer": None})]
    assert pipe.unet.config.in_channels == 4
    load_pipeline(str(tiny_model_dir))
    assert len(calls) == 1


def _run(command, slider, tmp_path, *extra):
    """One slider command on `slider` with small settings; its exit code."""
    out = ["--output", str(tmp_path / "out"), "--device", "cpu", "--steps", "2", *extra]
    if command == "sample":
        return sample_main(["--slider", str(slider), "--prompt", "x", *out])
    if command == "eval":
        return eval_main(["--slider", str(slider), "--prompt", "a red circle", "--seeds", "0", *out])
    if command == "eval-scenes":
        return eval_main(["--slider", str(slider), "--edit_scenes", "1", "--scales=-1,0,1", *out])
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (120, 30, 30)).save(image)
    return edit_main(["--image", str(image), "--slider", str(slider), *out])


def _slider(path, model, base_model, seed=0):
    """A slider made on `model`'s UNet (built on the meta device: its weights stay real), recording `base_model`."""
    torch.manual_seed(seed)
    unet = meta_unet(read_unet_config(model))
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    return network.save(path, {"sliders_base_model": base_model, "sliders_resolution": "64"})


@pytest.mark.parametrize("command", COMMANDS)
def test_a_slider_of_another_base_model_is_refused_naming_both_and_the_fix(command, tmp_path, capsys, loads):
    slider = _slider(tmp_path / "shapes-size.safetensors", BUILTIN_MODEL, BUILTIN_MODEL)
    assert _run(command, slider, tmp_path, "--pretrained_model", TINY_MODEL) == 2
    line = _error_line(capsys)
    assert str(slider) in line and f"base model '{TINY_MODEL}' (--pretrained_model)" in line, line
    assert "pass --pretrained_model with the base model the slider was trained on" in line
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_recorded_base_model_that_is_gone_is_one_line(command, tmp_path, capsys, loads):
    gone = tmp_path / "models" / "my-sdxl"
    slider = _slider(tmp_path / "age.safetensors", TINY_MODEL, str(gone))
    assert _run(command, slider, tmp_path) == 2
    line = _error_line(capsys)
    assert f"base model '{gone}' (recorded in slider file '{slider}') does not exist" in line, line
    assert "pass --pretrained_model" in line
    assert loads == [] and not (tmp_path / "out").exists()


def test_a_recorded_base_model_that_does_not_fit_a_later_slider_names_that_slider(tmp_path, capsys, loads):
    first = _slider(tmp_path / "tiny.safetensors", TINY_MODEL, TINY_MODEL)
    second = _slider(tmp_path / "shapes.safetensors", BUILTIN_MODEL, BUILTIN_MODEL)
    assert sample_main(["--slider", str(first), "--slider", str(second), "--prompt", "x", "--device", "cpu",
                        "--output", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert f"slider file '{second}'" in line and f"(recorded in slider file '{first}')" in line, line
    assert loads == []


def test_a_given_base_model_that_does_not_exist_is_one_line(tmp_path, capsys, loads):
    slider = _slider(tmp_path / "age.safetensors", TINY_MODEL, TINY_MODEL)
    assert _run("sample", slider, tmp_path, "--pretrained_model", str(tmp_path / "nowhere.safetensors")) == 2
    line = _error_line(capsys)
    assert "(--pretrained_model) does not exist" in line and "nowhere.safetensors" in line, line
    assert loads == []


def test_a_model_whose_layout_is_known_only_once_loaded_is_matched_then_in_the_same_words(tmp_path, capsys,
                                                                                         monkeypatch):
    """A single-file checkpoint has no UNet config to read before loading: the load matches the slider."""
    import sliders.models

    monkeypatch.setattr(sliders.models, "read_unet_config", lambda name: None)
    slider = _slider(tmp_path / "shapes-size.safetensors", BUILTIN_MODEL, BUILTIN_MODEL)
    assert _run("sample", slider, tmp_path, "--pretrained_model", TINY_MODEL) == 2
    line = _error_line(capsys)
    assert str(slider) in line and f"base model '{TINY_MODEL}'" in line, line
    assert "pass --pretrained_model with the base model the slider was trained on" in line


def test_the_fit_check_passes_a_fitting_slider_and_leaves_the_random_state_alone(tmp_path):
    slider = _slider(tmp_path / "age.safetensors", TINY_MODEL, TINY_MODEL)
    before = torch.get_rng_state()
    settings = GenerationSettings(output=tmp_path / "out", start_noise=750, steps=2, guidance_scale=5.0,
                                  pretrained_model=None, device="cpu", precision="fp32", resolution=None,
                                  negative_prompt="")
    plan = plan_run([SliderSpec(slider, None)], "-1,1", ["x"], [0], settings=settings)
    assert plan.model == TINY_MODEL and torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------------------------------
# --resume: the training state is read and fitted before the model loads
# --------------------------------------------------------------------------------------------------

ITERATIONS = ["--iterations", "4", "--device", "cpu", "--seed", "5"]


def _stopped_run(tmp_path, monkeypatch, *flags):
    """A run stopped outright before its third step: the step-2 checkpoint and its state are kept."""
    config = _config(tmp_path)
    with monkeypatch.context() as patch:
        _stop_at(patch, 3, lambda: (_ for _ in ()).throw(_Stop()))
        with pytest.raises(_Stop):
            train_main(["--config", str(config), *ITERATIONS, *flags])
    return config


def test_resume_from_a_truncated_training_state_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys,
                                                                                   inject_loader):
    config = _stopped_run(tmp_path, monkeypatch)
    state = tmp_path / "models" / RUN / "size_2steps.state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    loads = _refuse_loads(inject_loader)
    capsys.readouterr()
    assert train_main(["--config", str(config), *ITERATIONS, "--resume"]) == 2
    line = _error_line(capsys)
    assert f"training state '{state}' cannot be read" in line and "--overwrite" in line, line
    assert loads == [] and not (tmp_path / "models" / RUN / ".lock").exists()


def _other_network_state(tmp_path, monkeypatch):
    """The rank-2 run's step-2 state replaced by that of a rank-4 run (same config file, --rank 4)."""
    config = _stopped_run(tmp_path, monkeypatch)
    _stopped_run(tmp_path, monkeypatch, "--rank", "4")
    state = tmp_path / "models" / RUN / "size_2steps.state.safetensors"
    shutil.copyfile(tmp_path / "models" / RUN.replace("rank2", "rank4") / state.name, state)
    return config, state


def test_resume_from_the_state_of_another_network_is_one_whole_line_before_the_model_loads(
        tmp_path, monkeypatch, capsys, inject_loader):
    config, state = _other_network_state(tmp_path, monkeypatch)
    loads = _refuse_loads(inject_loader)
    capsys.readouterr()
    assert train_main(["--config", str(config), *ITERATIONS, "--resume"]) == 2
    line = _error_line(capsys)
    assert f"training state '{state}' holds the slider of another network" in line, line
    assert "have other shapes, e.g. 'loras.lora_unet_" in line and "(4, " in line and "(2, " in line
    assert line.endswith("start again with --overwrite")
    assert loads == [] and not (tmp_path / "models" / RUN / ".lock").exists()


def test_a_state_that_does_not_fit_is_a_whole_line_also_when_found_after_the_load(tmp_path, monkeypatch, capsys):
    """A base model whose UNet config is known only once loaded (a single file): the restore says it, in full."""
    import sliders.models

    config, state = _other_network_state(tmp_path, monkeypatch)
    monkeypatch.setattr(sliders.models, "read_unet_config", lambda name: None)
    capsys.readouterr()
    assert train_main(["--config", str(config), *ITERATIONS, "--resume"]) == 2
    line = _error_line(capsys)
    assert f"training state '{state}' holds the slider of another network" in line, line
    assert "have other shapes" in line and line.endswith("start again with --overwrite")
