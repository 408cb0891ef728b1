"""Tests for `sliders-eval --edit_scenes`: rendered shapes-world scenes edited with a slider and
measured (sliders.evaluation.edits), on the built-in shapes model with a random slider; bad inputs
refused before the model loads."""

from __future__ import annotations

import json

import pytest
import torch

from sliders.cli import eval_main
from sliders.config import BUILTIN_MODEL
from sliders.errors import InputError
from sliders.evaluation.edits import rendered_scenes, run_edit_evaluation
from sliders.models import load_pipeline
from sliders.planning import GenerationSettings
from sliders.network import SliderNetwork

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def slider_file(tmp_path_factory):
    pipe = load_pipeline(BUILTIN_MODEL)
    torch.manual_seed(0)
    net = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1.0)
    for module in net.loras.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.2)
    path = tmp_path_factory.mktemp("slider") / "size.safetensors"
    return net.save(path, {"sliders_base_model": BUILTIN_MODEL, "sliders_resolution": str(SIZE)})


def test_rendered_scenes_are_medium_and_deterministic():
    images, captions = rendered_scenes(4, 3, SIZE, "medium")
    again, _ = rendered_scenes(4, 3, SIZE, "medium")
    assert all(caption.split()[1] == "medium" for caption in captions)
    assert [image.image.tobytes() for image in images] == [image.image.tobytes() for image in again]
    assert [image.time_ids.tolist() for image in images] == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 4


def test_edit_evaluation_reports_the_slider_the_baseline_and_the_reconstruction(slider_file, tmp_path):
    out = tmp_path / "eval"
    paths = run_edit_evaluation(slider_file, "-1,0,1", scenes=3, baseline_replace="medium=large", images=True,
                                settings=GenerationSettings(output=out, steps=4, device="cpu"))
    report = json.loads(paths["json"].read_text())
    assert report["settings"]["edit"]["inversion"] == "guarded" and report["settings"]["start_noise"] == 500
    assert [c["multipliers"] for c in report["combinations"]] == [[-1.0], [0.0], [1.0]]
    assert sum(row["kind"] == "slider" for row in report["rows"]) == 9
    assert report["baseline"]["prompts"][0].startswith("a large ")
    reconstruction = report["reconstruction"]
    # Direct inversion: the scale-0 edit is the VAE round trip, to rounding.
    assert reconstruction["psnr_db"]["mean"] == pytest.approx(reconstruction["psnr_vae_db"]["mean"], abs=0.05)
    assert reconstruction["kept"] == {"colour": 1.0, "shape": 1.0}
    assert "## Reconstruction (guarded inversion)" in paths["markdown"].read_text()
    assert sorted(p.name for p in (out / "inputs").iterdir()) == ["scene000.png", "scene001.png", "scene002.png"]
    assert len(list((out / "images").iterdir())) == 9 and paths["grid"].is_file()


@pytest.fixture
def no_model_load(inject_loader):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    inject_loader(forbidden)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(scales="-1,1"), "lack 0"),
        (dict(scenes=0), "--edit_scenes"),
        (dict(method="nope"), "--inversion"),
        (dict(baseline_replace="tiny=large"), "'tiny' is not in prompt 0"),
        (dict(target="smell"), "--target"),
    ],
)
def test_bad_inputs_are_refused_before_the_model_loads(no_model_load, slider_file, tmp_path, change, message):
    kwargs = dict(scales="-1,0,1", scenes=2, output=tmp_path / "out", steps=2)
    kwargs.update(change)
    settings = GenerationSettings(output=kwargs.pop("output"), steps=kwargs.pop("steps"))
    with pytest.raises(InputError, match=message):
        run_edit_evaluation(slider_file, kwargs.pop("scales"), **kwargs, settings=settings)
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_prompts_with_edit_scenes(no_model_load, slider_file, tmp_path, capsys):
    code = eval_main(["--slider", str(slider_file), "--edit_scenes", "2", "--prompt", "x",
                      "--output", str(tmp_path / "o")])
    assert code == 2
    assert "drop --prompt" in capsys.readouterr().err


def test_written_scenes_are_the_scenes_the_evaluation_edits(tmp_path):
    from PIL import Image

    from sliders.shapes.datasets import main as datasets_main

    assert datasets_main(["--scenes", "--out", str(tmp_path), "--count", "3", "--seed", "5"]) == 0
    images, captions = rendered_scenes(3, 5, SIZE, "medium")
    lines = (tmp_path / "captions.txt").read_text().splitlines()
    assert lines == [f"scene{k:03d}.png: {caption}" for k, caption in enumerate(captions)]
    for k, image in enumerate(images):
        assert Image.open(tmp_path / f"scene{k:03d}.png").convert("RGB").tobytes() == image.image.tobytes()
