"""`train.with_sliders`: other sliders present while one trains (composition), on the tiny model."""

import json
from pathlib import Path

import pytest
import torch

from sliders.cli import train_main
from sliders.companions import Companions, parse_companion
from sliders.network import read_slider_file

from conftest import cli_config_text


def _train(tmp_path, name, *flags, iterations=3):
    config = tmp_path / f"{name}.yaml"
    config.write_text(cli_config_text(tmp_path))
    assert train_main(["--config", str(config), "--name", name, "--iterations", str(iterations), *flags]) == 0
    return next((tmp_path / "models").glob(f"{name}_*/{name}_last.safetensors"))


@pytest.fixture(scope="module")
def companion(tmp_path_factory):
    """A slider with a clearly non-zero delta, to train beside."""
    folder = tmp_path_factory.mktemp("companion")
    path = _train(folder, "other", "--lr", "0.05")
    tensors, metadata = read_slider_file(path)
    from safetensors.torch import save_file

    strong = folder / "other_strong.safetensors"
    save_file({k: v * 20 if "lora_up" in k else v for k, v in tensors.items()}, str(strong), metadata)
    return strong


def test_parse_and_draws_are_a_function_of_seed_and_step():
    assert parse_companion("a.safetensors") == (Path("a.safetensors"), (1.0,))
    assert parse_companion("a.safetensors:0,1,2") == (Path("a.safetensors"), (0.0, 1.0, 2.0))

    class Net:
        multiplier = 5.0

    nets = [Net(), Net()]
    companions = Companions(nets, [(0.0, 1.0, 2.0), (-1.0, 1.0)], seed=3)
    draws = [companions.draw(step) for step in range(1, 200)]
    assert draws == [Companions([Net(), Net()], [(0.0, 1.0, 2.0), (-1.0, 1.0)], seed=3).draw(s) for s in range(1, 200)]
    assert {d[0] for d in draws} == {0.0, 1.0, 2.0} and {d[1] for d in draws} == {-1.0, 1.0}
    assert (nets[0].multiplier, nets[1].multiplier) == draws[-1]
    assert draws != [Companions([Net(), Net()], [(0.0, 1.0, 2.0), (-1.0, 1.0)], seed=4).draw(s) for s in range(1, 200)]
    companions.off()
    assert nets[0].multiplier == nets[1].multiplier == 0.0


def test_a_companion_at_zero_trains_the_same_slider_and_one_on_trains_another(companion, tmp_path):
    alone = read_slider_file(_train(tmp_path, "alone"))[0]
    at_zero = read_slider_file(_train(tmp_path, "atzero", "--with_slider", f"{companion}:0"))[0]
    on = read_slider_file(_train(tmp_path, "on", "--with_slider", f"{companion}:1,2"))[0]
    assert set(alone) == set(at_zero) == set(on)
    assert all(torch.equal(alone[k], at_zero[k]) for k in alone)  # the paper's path, bit for bit
    assert any(not torch.equal(alone[k], on[k]) for k in alone)
    folder = next((tmp_path / "models").glob("on_*"))
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["options"]["with_sliders"] == [{"scales": [1.0, 2.0]}]
    recorded = json.loads(read_slider_file(folder / "on_last.safetensors")[1]["sliders_config"])
    assert recorded["train"]["with_sliders"] == [f"{companion}:1,2"]


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_companions_are_one_line_and_write_nothing(companion, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(cli_config_text(tmp_path))
    assert train_main(["--config", str(config), "--with_slider", str(tmp_path / "missing.safetensors")]) == 2
    assert "train.with_sliders" in _error_line(capsys)
    assert train_main(["--config", str(config), "--with_slider", f"{companion}:0,x"]) == 2
    assert "scales" in _error_line(capsys)
    # A slider of another base model: known once the model is loaded.
    other_base = tmp_path / "sd1.yaml"
    other_base.write_text(cli_config_text(tmp_path).replace("builtin:tiny-sdxl", "builtin:tiny-sd1"))
    assert train_main(["--config", str(other_base), "--with_slider", str(companion)]) == 2
    assert "with_sliders" in _error_line(capsys)
    assert not list(tmp_path.glob("models/**/*.safetensors"))  # no slider written
