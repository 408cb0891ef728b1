"""Smoke tests for the shapes-world model build and its quality report.

Builds with a handful of steps into temporary folders (seconds on a CPU), so they check plumbing,
not quality: the folder loads through `load_pipeline` and samples, the same seed gives the same
weights and losses, the batched renderer agrees with `world.render`, and the quality report has
its keys. The real build (thousands of steps on a GPU) is not run here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sliders.errors import InputError
from sliders.models import load_pipeline
from sliders.shapes import build, quality
from sliders.shapes.world import PALETTE, SHAPES, SIZE_WORDS, random_scene, render

TINY = dict(vae_steps=3, unet_steps=3, batch_size=2, vae_batch_size=2, log_every=1)
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny build, shared by the tests that only read it."""
    return build.build_shapes_model(tmp_path_factory.mktemp("shapes") / "model", seed=0, **TINY)


def test_build_loads_and_samples(built):
    record = json.loads((built / "BUILD.json").read_text(encoding="utf-8"))
    assert record["seed"] == 0 and record["unet_steps"] == 3 and record["vae_steps"] == 3
    assert len(record["unet_losses"]) == 3 and all(np.isfinite(e["loss"]) for e in record["unet_losses"])
    assert {"torch", "diffusers"} <= set(record["versions"])

    pipe = load_pipeline(str(built))
    assert pipe.unet.dtype == torch.float32  # stored as fp16, loaded as asked
    assert pipe.config.force_zeros_for_empty_prompt is False
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    # Every caption word is one token, so the model's conditioning sees whole words.
    ids = pipe.tokenizer("a small red circle").input_ids
    assert len(ids) == 6

    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a large blue square",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_same_seed_same_build_through_the_cli(built, tmp_path):
    # The second build goes through main(), which also checks the command line end to end.
    again = tmp_path / "again"
    args = ["--out", str(again), "--seed", "0", "--vae-steps", "3", "--unet-steps", "3",
            "--batch-size", "2", "--vae-batch-size", "2", "--log-every", "1"]
    assert build.main(args) == 0
    first, second = load_file(built / UNET_WEIGHTS), load_file(again / UNET_WEIGHTS)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    losses = [json.loads((d / "BUILD.json").read_text(encoding="utf-8"))["unet_losses"] for d in (built, again)]
    assert losses[0] == losses[1]


def test_other_seed_other_weights(built, tmp_path):
    other = build.build_shapes_model(tmp_path / "other", seed=1, **TINY)
    first, second = load_file(built / UNET_WEIGHTS), load_file(other / UNET_WEIGHTS)
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_refuses_to_overwrite(built):
    with pytest.raises(InputError, match="not empty"):
        build.build_shapes_model(built, **TINY)


def test_render_batch_matches_world_render():
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(60)]
    batch = build.render_batch(scenes).numpy().transpose(0, 2, 3, 1).astype(int)
    reference = np.stack([np.asarray(render(scene)) for scene in scenes]).astype(int)
    # PIL's fixed-point box filter rounds a few edge pixels the other way: at most one level.
    assert np.abs(batch - reference).max() <= 1
    assert (batch != reference).mean() < 0.05


def test_caption_variants_and_indices():
    captions = build.caption_variants()
    assert len(captions) == 2 * (len(SIZE_WORDS) + 1) * (len(PALETTE) + 1) * (len(SHAPES) + 1)
    assert captions[build.UNCONDITIONAL_INDEX] == ""
    index = build.caption_index(torch.tensor(0), torch.tensor(1), torch.tensor(2), torch.tensor(0))
    assert captions[int(index)] == f"a {SIZE_WORDS[1]} {list(PALETTE)[2]} {SHAPES[0]}"
    index = build.caption_index(torch.tensor(1), torch.tensor(2), torch.tensor(len(PALETTE)), torch.tensor(1))
    assert captions[int(index)] == f"{SIZE_WORDS[2]} {SHAPES[1]}"
    assert set(" ".join(captions).split()) <= set(build.VOCABULARY)


def test_quality_report_keys(built):
    report = quality.measure_base_quality(built, n=4, steps=2, seed=3)
    for key in ("colour_accuracy", "shape_accuracy", "size_word_accuracy", "size_by_word", "size_ordered",
                "per_shape_accuracy", "passed", "samples"):
        assert key in report
    assert set(report["size_by_word"]) == set(SIZE_WORDS)
    assert len(report["samples"]) == 4 and 0.0 <= report["colour_accuracy"] <= 1.0
    assert "| colour accuracy |" in quality.markdown(report)
    json.dumps(report)  # JSON-ready


def test_sample_captions_balanced():
    triples = quality.sample_captions(72, seed=0)
    assert len(set(triples)) == 36
    assert all(triples.count(t) == 2 for t in set(triples))
    assert quality.sample_captions(10, seed=0) == triples[:10]
