"""Tests for the measurers with options (sliders.evaluation.measurers), the CLIP measurer on a tiny random
CLIP built here (no download), the slider-quality figures (sliders.evaluation.quality) on hand-made
series, and `sliders-eval --measurer clip` end to end on the built-in shapes model: generated images,
several sliders side by side (--compare), and a sliders-edit folder (--edit_results); on sliders trained
on every family's tiny model (SD 1.x, SD 2.x, SDXL, FLUX.1), with and without --fused; and split over two
processes as under `accelerate launch`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.cli import _eval, edit_main, eval_main
from sliders.config import BUILTIN_MODEL
from sliders.errors import InputError
from sliders.evaluation import (
    MEASURERS,
    conceptual_range,
    conceptual_smoothness,
    get_measurer,
    is_monotone,
    parse_measurer_args,
    quality,
    slider_quality,
)
from sliders.evaluation.measurers import slider_texts
from sliders.evaluation.measurers.clip import ClipMeasurer
from sliders.models import load_pipeline
from sliders.network import SliderNetwork
from sliders.shapes.world import Scene, render

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
WORDS = "a an of large small medium red green blue yellow circle square triangle shape".split()
PROMPTS = [{"target": "circle", "positive": "large circle", "unconditional": "small circle", "neutral": "circle",
            "action": "enhance"}]


# --------------------------------------------------------------------------------------------------
# The quality figures on hand-made series
# --------------------------------------------------------------------------------------------------


def test_a_perfectly_monotone_linear_series():
    m, a = [-2, -1, 0, 1, 2], [1.0, 3.0, 5.0, 7.0, 9.0]
    assert is_monotone(m, a)
    assert conceptual_smoothness(m, a) == pytest.approx(0.0)
    assert conceptual_range(m, a) == pytest.approx(8.0)
    # Unevenly spaced multipliers: steps are per unit multiplier, so a straight line is still perfectly even.
    assert conceptual_smoothness([-2, 0, 0.5, 3], [-4.0, 0.0, 1.0, 6.0]) == pytest.approx(0.0)
    # Order of the input does not matter.
    assert is_monotone([2, -2, 0], [9.0, 1.0, 5.0])


def test_a_constant_series_has_no_range_and_is_not_monotone():
    m, a = [-1, 0, 1], [4.0, 4.0, 4.0]
    assert not is_monotone(m, a)
    assert conceptual_range(m, a) == 0.0
    assert conceptual_smoothness(m, a) == 0.0
    assert conceptual_range(m, a, [2.0, 2.0, 2.0]) == 0.0


def test_uneven_and_backward_series_by_hand():
    # Steps 1 then 3 per unit: population std of [1, 3] is 1.
    assert conceptual_smoothness([0, 1, 2], [0.0, 1.0, 4.0]) == pytest.approx(1.0)
    assert is_monotone([0, 1, 2], [0.0, 1.0, 4.0])
    # Up then down: not monotone; steps +2, -2 -> std 2.
    assert not is_monotone([0, 1, 2], [0.0, 2.0, 0.0])
    assert conceptual_smoothness([0, 1, 2], [0.0, 2.0, 0.0]) == pytest.approx(2.0)
    # Falling series: monotone means rising with the multiplier.
    assert not is_monotone([0, 1], [1.0, 0.0])
    # Text-pair range: P gains 6 from the lowest to the highest multiplier, N loses 2 -> (6 + 2) / 2.
    assert conceptual_range([-1, 0, 1], [20.0, 22.0, 26.0], [30.0, 29.0, 28.0]) == pytest.approx(4.0)
    # Too short to have a spread.
    assert math.isnan(conceptual_smoothness([0, 1], [0.0, 1.0]))
    with pytest.raises(ValueError, match="one value per multiplier"):
        is_monotone([0, 0, 1], [1.0, 2.0, 3.0])


def _row(seed, m, p, n, lp, kind="slider", multipliers=None):
    return {"kind": kind, "prompt_index": 0, "prompt": "x", "seed": seed,
            "multipliers": multipliers if multipliers is not None else [m],
            "values": {"clip_positive": p, "clip_negative": n, "clip_direction": p - n},
            "structure": {"lpips": lp}}


def test_slider_quality_over_pairs_and_the_baseline():
    rows = [
        # seed 0 rises evenly; seed 1 does not react at all
        _row(0, -1.0, 20.0, 24.0, 0.2), _row(0, 0.0, 22.0, 22.0, 0.0), _row(0, 1.0, 24.0, 20.0, 0.4),
        _row(1, -1.0, 21.0, 21.0, 0.1), _row(1, 0.0, 21.0, 21.0, 0.0), _row(1, 1.0, 21.0, 21.0, 0.1),
        _row(0, 0.0, 23.0, 21.0, 0.3, kind="baseline"), _row(1, 0.0, 21.0, 21.0, 0.5, kind="baseline"),
    ]
    figures = slider_quality(rows, 0, target="clip_direction", numeric=("clip_positive", "clip_negative", "clip_direction"),
                             positive="clip_positive", negative="clip_negative", preservation="lpips")
    assert figures["pairs"] == 2 and figures["monotone_pairs"] == 1
    assert figures["monotone_share"] == pytest.approx(0.5)
    # CR: seed 0 ((24 - 20) + (24 - 20)) / 2 = 4; seed 1: 0.
    assert figures["range"] == pytest.approx(2.0)
    assert figures["smoothness"] == pytest.approx(0.0)  # both series move by even steps
    assert figures["preservation"] == pytest.approx((0.2 + 0.4 + 0.1 + 0.1) / 4)
    top = figures["curves"][-1]
    assert top["multiplier"] == 1.0 and top["change"]["clip_direction"] == pytest.approx((4.0 + 0.0) / 2)
    assert top["values"]["clip_positive"] == pytest.approx(22.5)
    assert top["structure"]["lpips"] == pytest.approx(0.25)
    summary = quality(rows, slider_names=["s"], target="clip_direction", numeric=("clip_direction",),
                      positive="clip_positive", negative="clip_negative", preservation="lpips")
    assert summary["baseline"]["n"] == 2
    assert summary["baseline"]["change"]["clip_direction"] == pytest.approx((2.0 + 0.0) / 2)
    assert summary["baseline"]["preservation"] == pytest.approx(0.4)


def test_slider_quality_takes_each_slider_with_the_others_at_zero():
    rows = []
    for m1 in (-1.0, 0.0, 1.0):
        for m2 in (-1.0, 0.0, 1.0):
            # The first slider raises the score, the second lowers it; combinations add noise.
            value = 3 * m1 - m2 + (5.0 if m1 and m2 else 0.0)
            rows.append(_row(0, 0.0, value, 0.0, abs(m1) + abs(m2), multipliers=[m1, m2]))
    first = slider_quality(rows, 0, target="clip_direction", numeric=("clip_direction",))
    second = slider_quality(rows, 1, target="clip_direction", numeric=("clip_direction",))
    assert first["monotone_share"] == 1.0 and first["range"] == pytest.approx(6.0)
    assert second["monotone_share"] == 0.0 and second["range"] == pytest.approx(-2.0)
    assert first["range_kind"] == "target" and math.isnan(first["preservation"])


# --------------------------------------------------------------------------------------------------
# Options, texts and the registry
# --------------------------------------------------------------------------------------------------


def test_registry_holds_one_measurer_per_module():
    assert set(MEASURERS) >= {"shapes", "clip"}
    assert MEASURERS["clip"] is ClipMeasurer
    assert get_measurer("shapes", {"batch_size": "3"}).batch_size == 3


@pytest.mark.parametrize("entries, match", [
    (["model"], "not key=value"),
    (["=x"], "no key"),
    (["a=1", "a=2"], "twice"),
])
def test_bad_measurer_args(entries, match):
    with pytest.raises(InputError, match=match):
        parse_measurer_args(entries)


def test_measurer_options_are_checked():
    assert parse_measurer_args(["model=openai/clip-vit-large-patch14", "positive= old person "]) == {
        "model": "openai/clip-vit-large-patch14", "positive": "old person"}
    with pytest.raises(InputError, match="takes no option 'colour'.*batch_size"):
        get_measurer("shapes", {"colour": "red"})
    for bad in ("0", "x", "1.5", "-2"):
        with pytest.raises(InputError, match="batch_size"):
            get_measurer("shapes", {"batch_size": bad})
    with pytest.raises(InputError, match="needs its model"):
        get_measurer("clip", {"positive": "a", "negative": "b"})
    with pytest.raises(InputError, match="positive and a negative text"):
        get_measurer("clip", {"model": "x"})
    with pytest.raises(InputError, match="lpips=maybe"):
        get_measurer("clip", {"model": "x", "positive": "a", "negative": "b", "lpips": "maybe"})
    with pytest.raises(InputError, match="could not load CLIP model|not a folder"):
        get_measurer("clip", {"model": "/nonexistent/clip", "positive": "a", "negative": "b", "lpips": "off"})


def test_slider_texts_follow_the_action_and_the_slider_kind():
    enhance = {"sliders_prompts": json.dumps(PROMPTS)}
    assert slider_texts(enhance)["positive"] == "large circle" and slider_texts(enhance)["negative"] == "small circle"
    erase = {"sliders_prompts": json.dumps([{**PROMPTS[0], "action": "erase"}])}
    assert (slider_texts(erase)["positive"], slider_texts(erase)["negative"]) == ("small circle", "large circle")
    image = {"sliders_prompts": json.dumps({"entry": {"positive": "old person", "neutral": "young person"},
                                            "folders": ["a", "b"], "scales": [-1, 1]})}
    assert (slider_texts(image)["positive"], slider_texts(image)["negative"]) == ("old person", "young person")
    assert slider_texts({}) == {} and slider_texts({"sliders_prompts": "{broken"}) == {}


# --------------------------------------------------------------------------------------------------
# The CLIP measurer on a tiny random CLIP
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP (ViT 32 px, 2 layers) with a CLIP tokenizer of the shapes words, saved as a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from sliders.tiny import write_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    write_tokenizer(folder, WORDS)
    vocab = len(json.loads((folder / "vocab.json").read_text()))
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _scene(size, colour="red", cx=32.0):
    return render(Scene("circle", colour, size=size, cx=cx, cy=32.0))


def test_clip_scores_are_100_cosine_and_batching_changes_nothing(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    measurer = get_measurer("clip", {"model": str(tiny_clip), "positive": "large circle", "negative": "small circle",
                                     "lpips": "off", "batch_size": "2"}, device="cpu")
    images = [_scene(6.0), _scene(12.0), _scene(18.0, "blue")]
    batched = measurer.measure(images)
    one_by_one = [measurer(image) for image in images]
    for a, b in zip(batched, one_by_one):
        assert a == pytest.approx(b, abs=1e-4)
    # Independently: CLIP's own logits are exp(logit_scale) x cosine.
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    inputs = processor(text=["large circle", "small circle"], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image / model.logit_scale.exp()
    for values, (p, n) in zip(batched, (100 * logits).tolist()):
        assert values["clip_positive"] == pytest.approx(p, abs=1e-3)
        assert values["clip_negative"] == pytest.approx(n, abs=1e-3)
        assert values["clip_direction"] == pytest.approx(p - n, abs=1e-3)
    same, other = measurer.compare([images[0], images[0]], [images[0], images[2]])
    assert same["clip_image_distance"] == pytest.approx(0.0, abs=1e-5)
    assert other["clip_image_distance"] > 1e-4
    assert "lpips" not in same and measurer.preservation is None
    assert measurer.describe()["lpips_missing"].startswith("turned off")


def test_clip_texts_from_the_slider_and_lpips_when_missing(tiny_clip):
    recorded = [slider_texts({"sliders_prompts": json.dumps(PROMPTS)})]
    measurer = get_measurer("clip", {"model": str(tiny_clip)}, slider_prompts=recorded)
    assert measurer.texts == ("large circle", "small circle") and measurer.describe()["texts_from"] == "slider file"
    try:
        import lpips  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        # Without the package, auto leaves LPIPS out and says why; asking for it by name is an error.
        assert measurer.preservation is None and measurer.describe()["lpips_missing"]
        with pytest.raises(InputError, match="lpips package cannot be imported"):
            get_measurer("clip", {"model": str(tiny_clip), "lpips": "alex"}, slider_prompts=recorded)


def test_lpips_to_the_reference(tiny_clip):
    pytest.importorskip("lpips")
    measurer = get_measurer("clip", {"model": str(tiny_clip), "positive": "large circle", "negative": "small circle",
                                     "lpips": "alex", "lpips_weights": "random"})
    a, b = _scene(8.0), _scene(20.0, "green")
    same, other = measurer.compare([a, a], [a, b])
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6) and other["lpips"] > same["lpips"]
    assert measurer.preservation == "lpips"


def test_lpips_glue_with_a_stand_in_package(tiny_clip, monkeypatch):
    """What sliders does around the lpips package, without it: inputs in [-1, 1] as lpips expects, batches
    of at most batch_size images of one size, each distance back on its own pair, a photo resized to its edit."""
    import sys
    import types

    import torch

    calls = []

    class StandIn(torch.nn.Module):
        def __init__(self, net, pretrained, pnet_rand, verbose):
            super().__init__()
            assert (net, pretrained, pnet_rand) == ("alex", True, True)

        def forward(self, a, b):
            calls.append((tuple(a.shape), float(a.min()), float(a.max())))
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1), as lpips returns

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=StandIn))
    measurer = get_measurer("clip", {"model": str(tiny_clip), "positive": "large circle", "negative": "small circle",
                                     "lpips": "alex", "lpips_weights": "random", "batch_size": "2"})
    assert measurer.preservation == "lpips"
    a, b = _scene(8.0), _scene(20.0, "green")
    big = a.resize((a.width * 2, a.height * 2))  # an input photo larger than its edit
    rows = measurer.compare([a, a, a, big, a], [a, b, a, a, b])
    distances = [row["lpips"] for row in rows]
    assert distances[0] == distances[2] == pytest.approx(0.0, abs=1e-6)
    assert distances[1] == distances[4] > 0.01
    assert distances[3] < distances[1]  # resized to the edit's size before comparing
    assert [shape[0] for shape, _, _ in calls] == [2, 2, 1]  # five pairs in batches of two
    assert all(-1.0 <= low and high <= 1.0 for _, low, high in calls) and min(low for _, low, _ in calls) < -0.5


# --------------------------------------------------------------------------------------------------
# sliders-eval --measurer clip, end to end on the shapes model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_sliders(tmp_path_factory):
    """Two random sliders on the built-in shapes model, recording a text slider's prompts."""
    pipe = load_pipeline(BUILTIN_MODEL)
    folder = tmp_path_factory.mktemp("sliders")
    paths = []
    for seed, name in ((0, "grow"), (1, "other")):
        torch.manual_seed(seed)
        net = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1.0)
        for module in net.loras.values():
            torch.nn.init.normal_(module.lora_up.weight, std=0.2)
        paths.append(net.save(folder / f"{name}.safetensors", {
            "sliders_base_model": BUILTIN_MODEL, "sliders_resolution": str(SIZE),
            "sliders_prompts": json.dumps(PROMPTS)}))
    return paths


def test_eval_with_clip_writes_every_metric_and_plot(shapes_sliders, tiny_clip, tmp_path):
    out = tmp_path / "eval"
    code = eval_main(["--slider", str(shapes_sliders[0]), "--scales=-1,0,1", "--prompt", "a medium red circle",
                      "--seeds", "0-1", "--steps", "2", "--baseline_replace", "medium=large", "--save_images",
                      "--measurer", "clip", "--measurer_arg", f"model={tiny_clip}", "--measurer_arg", "batch_size=4",
                      "--output", str(out), "--device", "cpu"])
    assert code == 0
    assert {"plot.png", "scores.png", "report.json", "report.md"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["measurer"] == "clip" and settings["target"] == "clip_direction"
    assert settings["measurer_settings"]["positive"] == "large circle"
    assert settings["measurer_settings"]["texts_from"] == "slider file"
    (figures,) = report["quality"]["sliders"]
    assert figures["pairs"] == 2 and figures["range_kind"] == "text pair"
    for key in ("range", "smoothness", "monotone_share"):
        assert isinstance(figures[key], float), key
    assert [c["multiplier"] for c in figures["curves"]] == [-1.0, 0.0, 1.0]
    assert figures["curves"][1]["change"]["clip_positive"] == pytest.approx(0.0)
    assert report["quality"]["baseline"]["n"] == 2
    # The rows hold what the measurer reads from the saved images.
    measurer = get_measurer("clip", {"model": str(tiny_clip), "positive": "large circle",
                                     "negative": "small circle", "lpips": "off"})
    row = next(r for r in report["rows"] if r["multipliers"] == [1.0] and r["seed"] == 1)
    saved = Image.open(next((out / "images").glob("p0_s1_*+1*.png")))
    assert measurer(saved)["clip_direction"] == pytest.approx(row["values"]["clip_direction"], abs=1e-3)
    text = (out / "report.md").read_text()
    for words in ("## Slider quality", "Conceptual Range", "Conceptual Smoothness", "Monotone share",
                  "Semantic Preservation", "prompt edit", "clip_image_distance", "LPIPS"):
        assert words in text, words
    scores = Image.open(out / "scores.png")
    assert scores.size[0] > 600 and np.asarray(scores).std() > 5  # panels were drawn


def test_eval_compare_puts_sliders_side_by_side(shapes_sliders, tmp_path):
    out = tmp_path / "compare"
    code = eval_main(["--slider", str(shapes_sliders[0]), "--slider", str(shapes_sliders[1]), "--compare",
                      "--scales=-1,0,1", "--prompt", "a medium red circle", "--seeds", "0", "--steps", "2",
                      "--output", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [c["multipliers"] for c in report["combinations"]] == [[-1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 1.0],
                                                                  [1.0, 0.0]]
    assert [s["name"] for s in report["quality"]["sliders"]] == ["grow", "other"]
    assert all(s["pairs"] == 1 for s in report["quality"]["sliders"])
    # The shapes measurer keeps its files: no scores plot without a text pair.
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "report.json", "report.md"]
    assert "| grow | 1 |" in (out / "report.md").read_text()
    with pytest.raises(InputError, match="at least two"):
        from sliders.evaluation import GenerationSettings, run_evaluation

        run_evaluation(str(shapes_sliders[0]), "-1,0,1", ["a"], [0], settings=GenerationSettings(output=tmp_path / "x"),
                       compare=True)


def test_eval_measures_a_sliders_edit_folder_against_its_inputs(shapes_sliders, tiny_clip, tmp_path):
    inputs = []
    for index, size in enumerate((10.0, 14.0)):
        path = tmp_path / f"photo{index}.png"
        _scene(size).save(path)
        inputs += ["--image", str(path)]
    edits = tmp_path / "edits"
    assert edit_main([*inputs, "--slider", str(shapes_sliders[0]), "--scales=-1,0,1", "--prompt", "a red circle",
                      "--steps", "3", "--inversion", "direct", "--output", str(edits), "--device", "cpu"]) == 0
    out = tmp_path / "measured"
    code = eval_main(["--edit_results", str(edits), "--measurer", "clip", "--measurer_arg", f"model={tiny_clip}",
                      "--output", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 6 and report["quality"]["sliders"][0]["pairs"] == 2
    # Structure against the input photo: even the scale-0 edit (the reconstruction) is measured against it.
    reference = next(c for c in report["combinations"] if c["reference"])
    assert reference["structure"]["clip_image_distance"] >= 0.0
    assert "against the input image" in (out / "report.md").read_text()
    assert (out / "scores.png").is_file()
    with pytest.raises(InputError, match="drop --slider"):
        _eval(["--edit_results", str(edits), "--slider", str(shapes_sliders[0])])
    assert eval_main(["--edit_results", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2


# --------------------------------------------------------------------------------------------------
# sliders-eval --measurer clip wherever evaluation works: every family, --fused, two processes
# --------------------------------------------------------------------------------------------------

FAMILY_MODELS = {  # family -> (tiny model, its training lines)
    "sd1": ("builtin:tiny-sd1", "  max_denoising_steps: 6\n"),
    "sd2v": ("builtin:tiny-sd2v", "  max_denoising_steps: 6\n"),
    "sdxl": ("builtin:tiny-sdxl", "  max_denoising_steps: 6\n"),
    "flux": ("builtin:tiny-flux", "  flow_steps: 4\n  lr: 0.01\n"),
}
CLIP_TEXTS = ("large circle", "small circle")  # the sliders' recorded positive and unconditional prompts


@pytest.fixture(scope="module", params=sorted(FAMILY_MODELS))
def family_slider(request, tmp_path_factory, sliders_home):
    """(family, model, slider): a text slider trained for two iterations through the CLI on the family's
    tiny model, its up weights made 100 times larger so that its scales visibly change the images."""
    from safetensors.torch import save_file

    from sliders.cli import train_main
    from sliders.network import read_slider_file

    family, (model, train) = request.param, FAMILY_MODELS[request.param]
    folder = tmp_path_factory.mktemp(f"clip-{family}")
    prompts = folder / "prompts.yaml"
    prompts.write_text(f'- target: "circle"\n  positive: "{CLIP_TEXTS[0]}"\n  unconditional: "{CLIP_TEXTS[1]}"\n'
                       "  action: enhance\n  guidance_scale: 2\n  resolution: 64\n", encoding="utf-8")
    config = folder / "config.yaml"
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{model}"\n'
                      f"network:\n  rank: 2\n  training_method: full\ntrain:\n  precision: fp32\n  iterations: 2\n"
                      f'{train}save:\n  name: text\n  path: "{folder / "models"}"\n  per_steps: 10\n', encoding="utf-8")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 0
    tensors, metadata = read_slider_file(next((folder / "models").glob("text_*/text_last.safetensors")))
    strong = folder / "strong.safetensors"
    save_file({k: (v * 100 if k.endswith("lora_up.weight") else v).contiguous() for k, v in tensors.items()},
              str(strong), metadata)
    return family, model, strong


def _clip_eval(slider, tiny_clip, out, *extra):
    argv = ["--slider", str(slider), "--scales=-1,0,1", "--prompt", "a red circle", "--seeds", "0", "--steps", "2",
            "--measurer", "clip", "--measurer_arg", f"model={tiny_clip}", "--measurer_arg", "lpips=off",
            "--output", str(out), "--device", "cpu", *extra]
    assert eval_main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_eval_with_clip_on_every_family_plain_and_fused(family_slider, tiny_clip, tmp_path):
    """On each family (SD 1.x, SD 2.x v-prediction, SDXL, FLUX.1): the texts from the slider file, every row
    measured from its own image, the slider moving the scores; with --fused the same report up to float
    rounding of the images."""
    family, model, slider = family_slider
    plain = _clip_eval(slider, tiny_clip, tmp_path / "plain", "--save_images")
    settings = plain["settings"]
    assert settings["base_model"] == model and settings["measurer"] == "clip" and settings["fused"] is False
    assert (settings["measurer_settings"]["positive"], settings["measurer_settings"]["negative"]) == CLIP_TEXTS
    assert settings["measurer_settings"]["texts_from"] == "slider file" and settings["target"] == "clip_direction"
    assert [row["multipliers"] for row in plain["rows"]] == [[-1.0], [0.0], [1.0]]
    (figures,) = plain["quality"]["sliders"]
    assert figures["pairs"] == 1 and figures["range_kind"] == "text pair" and isinstance(figures["range"], float)
    measurer = get_measurer("clip", {"model": str(tiny_clip), "positive": CLIP_TEXTS[0], "negative": CLIP_TEXTS[1],
                                     "lpips": "off"})
    assert len(list((tmp_path / "plain" / "images").glob("*.png"))) == 3
    for row in plain["rows"]:
        values = measurer(Image.open(tmp_path / "plain" / "images" / f"p0_s0_strong{row['multipliers'][0]:+g}.png"))
        for key in ("clip_positive", "clip_negative", "clip_direction"):
            assert row["values"][key] == pytest.approx(values[key], abs=1e-3), (family, key)
    directions = [row["values"]["clip_direction"] for row in plain["rows"]]
    assert len({round(d, 4) for d in directions}) == 3, directions  # each scale is its own image and score
    assert plain["rows"][1]["structure"]["clip_image_distance"] == pytest.approx(0.0, abs=1e-5)  # the reference

    fused = _clip_eval(slider, tiny_clip, tmp_path / "fused", "--fused")
    assert fused["settings"]["fused"] is True
    assert "fused into the weights" in (tmp_path / "fused" / "report.md").read_text()
    for a, b in zip(plain["rows"], fused["rows"]):
        assert a["multipliers"] == b["multipliers"]
        for key in ("clip_positive", "clip_negative", "clip_direction"):
            assert a["values"][key] == pytest.approx(b["values"][key], abs=0.05), (family, key)
        assert a["structure"]["clip_image_distance"] == pytest.approx(b["structure"]["clip_image_distance"], abs=1e-3)


def test_eval_with_clip_split_over_two_processes_is_the_report_of_one(shapes_sliders, tiny_clip, tmp_path):
    """`accelerate launch` with two CPU processes: each makes half the images, each measures them all with its
    own CLIP, and the main process writes the report a single process writes, figure for figure."""

    from test_distributed import eval_alone_and_split

    common = ["--slider", str(shapes_sliders[0]), "--scales=-1,0,1", "--prompt", "a medium red circle",
              "--seeds", "0-1", "--steps", "2", "--baseline_replace", "medium=large", "--measurer", "clip",
              "--measurer_arg", f"model={tiny_clip}", "--measurer_arg", "lpips=off", "--device", "cpu"]
    one, two = eval_alone_and_split(common, tmp_path)
    assert one["settings"]["measurer"] == "clip" and len(one["rows"]) == 2 * 3 + 2
    assert one["quality"]["sliders"][0]["pairs"] == 2 and one["quality"]["baseline"]["n"] == 2
    assert one == two  # every image's CLIP scores, every figure


def test_eval_without_a_slider_is_one_line(tmp_path, capsys):
    assert eval_main(["--prompt", "a", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no slider" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["text-size", "image-symmetric", "image-symmetric-guidance1"])
def test_monotone_share_is_the_share_of_pairs_with_spearman_one_on_the_shapes_reports(name):
    """EVALUATION.md's agreement figure, on the per-image rows of the checked-in shapes reports."""
    from pathlib import Path

    from sliders.evaluation import spearman

    report = json.loads((Path(__file__).parent.parent / "docs" / "evaluation" / name / "report.json").read_text())
    target = report["settings"]["target"]
    figures = slider_quality(report["rows"], 0, target=target, numeric=report["settings"]["numeric"])
    pairs: dict = {}
    for row in report["rows"]:
        if row["kind"] == "slider":
            pairs.setdefault((row["prompt_index"], row["seed"]), []).append(row)
    rho = [spearman([r["multipliers"][0] for r in rows], [r["values"][target] for r in rows]) for rows in pairs.values()]
    assert figures["pairs"] == len(rho) == 32
    assert figures["monotone_share"] == pytest.approx(sum(abs(v - 1) < 1e-9 for v in rho) / len(rho))
    assert report["sliders"][0]["spearman_mean"] == pytest.approx(float(np.mean(rho)))
