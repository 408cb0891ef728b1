"""The shipped shapes-world models (SDXL and SD 1.x architecture): they load like real weights of
their family and draw what their captions say."""

import json

import pytest
import torch

from sliders.families import family_of_pipe
from sliders.models import SHAPES_MODEL_DIR, SHAPES_SD1_MODEL_DIR, load_pipeline
from sliders.shapes.measure import measure

MODELS = {"builtin:shapes": ("sdxl", SHAPES_MODEL_DIR), "builtin:shapes-sd1": ("sd1", SHAPES_SD1_MODEL_DIR)}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_shipped_model_follows_colour_shape_and_size_words(model):
    pipe = load_pipeline(model)
    assert family_of_pipe(pipe).name == MODELS[model][0]
    pipe.set_progress_bar_config(disable=True)
    captions = ["a small red circle", "a large blue square", "a medium green triangle", "a large yellow circle",
                "a small yellow triangle", "a large green square"]
    images = pipe(captions, num_inference_steps=25, guidance_scale=5.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(0)).images
    measured = [measure(image) for image in images]
    assert [m.colour for m in measured] == ["red", "blue", "green", "yellow", "yellow", "green"]
    assert [m.shape for m in measured] == ["circle", "square", "triangle", "circle", "triangle", "square"]
    small = [m.size for c, m in zip(captions, measured) if " small " in c]
    large = [m.size for c, m in zip(captions, measured) if " large " in c]
    assert max(small) < min(large)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_shipped_model_records_how_it_was_built(model):
    folder = MODELS[model][1]
    record = json.loads((folder / "BUILD.json").read_text())
    assert record["seed"] == 0 and record["unet_steps"] > 0 and record["final_unet_loss"] < 0.05
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights < 15 * 2**20
