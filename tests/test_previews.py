"""Previews while training: the `sample:` section and its flags, the grids in samples/, and that a
preview changes nothing in what is trained."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sliders.cli import train_images_main, train_main
from sliders.config import SampleConfig, load_config
from sliders.errors import InputError
from sliders.network import read_slider_file
from sliders.previews import preview_path

@pytest.fixture
def text_config(tmp_path, tiny_model_dir, write_text_config):
    return write_text_config(tmp_path, train={"iterations": 2, "lr": 0.01}, save={"per_steps": 100})


def _folder(tmp_path, name="size"):
    return tmp_path / "models" / f"{name}_alpha1.0_rank2_noxattn"


def test_sample_section_defaults_and_yaml():
    assert load_config().sample == SampleConfig()
    assert SampleConfig().every == 0  # off unless asked for
    config = load_config(None, {"sample.every": 50, "sample.prompts": ["a", "b"], "sample.seeds": [3],
                                "sample.scales": "-2,0,2", "sample.steps": 15})
    assert config.sample.prompts == ("a", "b") and config.sample.seeds == (3,)
    assert config.sample.scales == (-2.0, 0.0, 2.0) and config.sample.steps == 15


@pytest.mark.parametrize("overrides, words", [
    ({"sample.every": -1}, "sample.every"),
    ({"sample.seeds": [1, 1]}, "repeats a seed"),
    ({"sample.seeds": []}, "sample.seeds"),
    ({"sample.seeds": ["one"]}, "whole number"),
    ({"sample.scales": [2, 2.0]}, "repeats a scale"),
    ({"sample.scales": [1000]}, "sample.scales"),
    ({"sample.steps": 0}, "sample.steps"),
    ({"sample.start_noise": 2000}, "sample.start_noise"),
    ({"sample.resolution": 100}, "multiple of 64"),
    ({"sample.evry": 5}, "did you mean 'every'"),
])
def test_bad_sample_settings_are_named(overrides, words):
    with pytest.raises(InputError, match=words):
        load_config(None, overrides)


def test_shapes_configs_turn_previews_on_cheaply():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "shapes"
    for name in ("size.yaml", "roundness.yaml", "size-bidirectional.yaml", "image-size.yaml"):
        sample = load_config(root / name).sample
        assert 0 < sample.every <= 100 and len(sample.prompts) * len(sample.seeds) <= 4 and sample.steps <= 20, name


def test_previews_are_written_every_n_steps_and_change_nothing_trained(text_config, tmp_path):
    text_config.write_text(text_config.read_text() + "sample:\n  steps: 4\n")  # a cheap preview
    flags = ["--config", str(text_config), "--device", "cpu", "--seed", "3", "--iterations", "3"]
    assert train_main([*flags, "--name", "plain"]) == 0
    assert train_main([*flags, "--name", "size", "--sample_every", "2",
                       "--sample_prompt", "circle", "--sample_prompt", "square"]) == 0
    folder = _folder(tmp_path)
    written = sorted(p.name for p in (folder / "samples").iterdir())
    assert written == ["step_2.png", "step_3.png"]  # every 2 steps, and the last
    assert preview_path(folder, 2) == folder / "samples" / "step_2.png"
    saved = yaml.safe_load((folder / "config.yaml").read_text())["sample"]
    assert saved["every"] == 2 and saved["prompts"] == ["circle", "square"]

    # The previews leave the training alone: the same slider as without them.
    plain = read_slider_file(_folder(tmp_path, "plain") / "plain_last.safetensors")[0]
    previewed = read_slider_file(folder / "size_last.safetensors")[0]
    assert all(torch.equal(plain[k], previewed[k]) for k in plain)

    # 2 prompts x 1 seed rows, 3 scale columns of 64 px; at scale 0 the slider is off, and every
    # preview starts from the same latents: that column is the same image at every step.
    early, late = (np.asarray(Image.open(folder / "samples" / f"step_{n}.png").convert("RGB")) for n in (2, 3))
    assert early.shape == late.shape
    height, width, _ = early.shape
    from sliders.sampling import ROW_LABEL_WIDTH

    assert width == ROW_LABEL_WIDTH + 3 * 64
    band = height - 2 * 64
    zero = (slice(band, height), slice(ROW_LABEL_WIDTH + 64, ROW_LABEL_WIDTH + 128))
    assert np.array_equal(early[zero], late[zero])
    plus = (slice(band, height), slice(ROW_LABEL_WIDTH + 128, width))
    assert not np.array_equal(early[plus], late[plus])  # the slider moved between the two


def test_previews_go_to_tensorboard_when_it_is_on(text_config, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    logs = tmp_path / "tb"
    config = load_config(text_config)
    text = text_config.read_text() + f"logging:\n  tensorboard_dir: \"{logs}\"\nsample:\n  every: 1\n  steps: 2\n"
    text_config.write_text(text)
    assert config.sample.every == 0
    assert train_main(["--config", str(text_config), "--device", "cpu", "--iterations", "1"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs), size_guidance={"images": 0})
    events.Reload()
    assert "samples" in events.Tags()["images"]
    assert (_folder(tmp_path) / "samples" / "step_1.png").is_file()


def test_image_sliders_preview_too(tmp_path, tiny_model_dir):
    root = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / folder / "x.png")
    assert train_images_main([
        "--pretrained_model", "builtin:tiny-sdxl", "--folder_main", str(root), "--folders", "low,high",
        "--scales", "-1,1", "--resolution", "64", "--iterations", "1", "--device", "cpu", "--rank", "2",
        "--output_dir", str(tmp_path / "models"), "--name", "img", "--sample_every", "1",
    ]) == 0
    assert (tmp_path / "models" / "img_alpha1.0_rank2_noxattn" / "samples" / "step_1.png").is_file()
