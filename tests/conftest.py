"""Shared fixtures and helpers: the tiny SDXL-shaped model built once per session, offline, in a temporary
home; the tiny text-slider configs the command-line tests train (`cli_config_text`, `text_config`)."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def sliders_home(tmp_path_factory):
    """Every test builds and reads built-in models under one temporary SLIDERS_HOME."""
    home = tmp_path_factory.mktemp("sliders_home")
    previous = os.environ.get("SLIDERS_HOME")
    os.environ["SLIDERS_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("SLIDERS_HOME", None)
    else:
        os.environ["SLIDERS_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(sliders_home):
    """The built-in tiny model's folder, built through the same function users get."""
    from sliders.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """The tiny pipeline loaded through `load_pipeline`, as for real SDXL weights."""
    from sliders.models import load_pipeline

    return load_pipeline(str(tiny_model_dir))


@pytest.fixture
def inject_loader():
    """`inject_loader(loader)`: until the test ends, every base-model load of every command calls `loader`
    (with `load_pipeline`'s arguments) instead (`sliders.models.injected_loader`)."""
    from contextlib import ExitStack

    from sliders.models import injected_loader

    with ExitStack() as stack:
        yield lambda loader: stack.enter_context(injected_loader(loader))


@pytest.fixture
def unet(tiny_pipe):
    """A fresh copy of the tiny UNet, so tests cannot leak hooks or weights into each other."""
    import copy

    return copy.deepcopy(tiny_pipe.unet)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: its models are tiny, and OpenMP workers spinning against
    other processes on a busy machine make each call many times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TEXT_PROMPT = {"target": "circle", "positive": "large circle", "unconditional": "small circle",
               "action": "enhance", "guidance_scale": 2, "resolution": 64}

# The command-line tests' tiny run, as YAML text (some tests edit the text itself): two
# iterations, a checkpoint every step.
CLI_PROMPTS = """
- target: "circle"
  positive: "large circle"
  unconditional: "small circle"
  action: enhance
  guidance_scale: 2
  resolution: 64
  batch_size: 2
"""

CLI_CONFIG = """
prompts_file: "{prompts}"
pretrained_model:
  name_or_path: "builtin:tiny-sdxl"
network:
  type: "c3lier"
  rank: 2
  alpha: 1.0
  training_method: "noxattn"
train:
  precision: "fp32"
  noise_scheduler: "ddim"
  iterations: 2
  lr: 0.001
  optimizer: "AdamW"
  lr_scheduler: "cosine"
  max_denoising_steps: 6
save:
  name: "size"
  path: "{out}"
  per_steps: 1
  precision: "fp32"
"""


def text_config(folder, *, prompt=None, network=None, train=None, save=None) -> dict:
    """A one-entry prompts file written in `folder` and a text-slider config (as a dict) on the tiny
    model that reads it, saving under `folder/models` as slider "size"; each section's keys are
    overridden by the dict given."""
    import yaml

    prompts = folder / "prompts.yaml"
    prompts.write_text(yaml.safe_dump([{**TEXT_PROMPT, **(prompt or {})}]))
    return {
        "prompts_file": str(prompts),
        "pretrained_model": {"name_or_path": "builtin:tiny-sdxl"},
        "network": {"rank": 2, **(network or {})},
        "train": {"precision": "fp32", "max_denoising_steps": 6, **(train or {})},
        "save": {"name": "size", "path": str(folder / "models"), **(save or {})},
    }


def cli_config_text(folder, **train) -> str:
    """CLI_CONFIG for a run in `folder` (its prompts file written there), with `train` keys added."""
    prompts = folder / "prompts.yaml"
    prompts.write_text(CLI_PROMPTS)
    text = CLI_CONFIG.format(prompts=prompts, out=folder / "models")
    head, section, rest = text.partition("train:\n")
    for key, value in train.items():
        line = f"  {key}: {value}\n"
        body, _, tail = rest.partition("\nsave:")
        if f"\n  {key}: " in "\n" + body:
            body = re.sub(rf"^  {re.escape(key)}: .*$", line.rstrip("\n"), body, count=1, flags=re.MULTILINE)
        else:
            body = line + body
        rest = body + "\nsave:" + tail
    return head + section + rest


def cli_text_config(folder, **train) -> dict:
    """`cli_config_text` as a dict."""
    import yaml

    return yaml.safe_load(cli_config_text(folder, **train))


def write_yaml(data: dict, path):
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def _write_text_config(folder, **sections):
    return write_yaml(text_config(folder, **sections), folder / "config.yaml")


@pytest.fixture
def write_text_config():
    """`_write_text_config(folder, prompt=..., network=..., train=..., save=...)` -> the config's path."""
    return _write_text_config


def write_image_folders(root, folders=("low", "high", "higher")):
    """Random 72x64 RGB images "x" and "y" in each of `folders` under `root`: paired image folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stem in ("x", "y"):
            Image.fromarray(rng.integers(0, 255, (72, 64, 3), dtype=np.uint8)).save(root / folder / f"{stem}.png")
    return root


def train_family_sliders(folder, model, images, *, folders="low,high,higher", scales="0.67,1,1.3", network="",
                         train="  max_denoising_steps: 6\n"):
    """A text slider ("text") and an image slider ("image") trained for two iterations through the CLI on
    `model`, saved under `folder/models`; `network` and `train` are YAML lines added to those sections.
    Returns the two `_last.safetensors` paths."""
    from sliders.cli import train_images_main, train_main

    prompts = folder / "prompts.yaml"
    prompts.write_text('- target: "circle"\n  positive: "large circle"\n  unconditional: "small circle"\n'
                       "  action: enhance\n  guidance_scale: 2\n  resolution: 64\n", encoding="utf-8")
    config = folder / "config.yaml"
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{model}"\n'
                      f"network:\n  rank: 2\n{network}train:\n  precision: fp32\n  iterations: 2\n{train}"
                      f'save:\n  name: text\n  path: "{folder / "models"}"\n  per_steps: 10\n', encoding="utf-8")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 0
    assert train_images_main([
        "--folder_main", str(images), "--folders", folders, "--scales", scales, "--iterations", "2",
        "--resolution", "64", "--device", "cpu", "--output_dir", str(folder / "models"), "--pretrained_model", model,
        "--name", "image", "--rank", "2"]) == 0
    models = folder / "models"
    return next(models.glob("text_*/text_last.safetensors")), next(models.glob("image_*/image_last.safetensors"))
