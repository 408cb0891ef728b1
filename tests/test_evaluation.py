"""Tests for sliders.evaluation: the statistics, the aggregation of measured rows, the structure
figures, evaluate end to end on the tiny built-in model, the written report, run_evaluation's
validation (before any model load) and the seed / prompt-file parsing.

The aggregation is checked on shapes-world renders whose outcome is known exactly; only the
end-to-end tests run the tiny SDXL-shaped model (64x64, 2 steps), on one CPU thread.
"""

from __future__ import annotations

import json
import math
import numpy as np
import pytest
import torch
from PIL import Image

from sliders import evaluation
from sliders.config import TINY_MODEL
from sliders.errors import InputError
from sliders.evaluation import (
    MEASURERS,
    GenerationSettings,
    Measurer,
    ShapesMeasurer,
    average_ranks,
    baseline_from_replace,
    evaluate,
    get_measurer,
    linear_fit,
    measure_samples,
    parse_replacements,
    parse_seeds,
    read_prompt_lines,
    run_evaluation,
    spearman,
    summarise,
    write_report,
)
from sliders.network import SliderNetwork
from sliders.sampling import Sample, SliderSpec
from sliders.shapes.world import Scene, render

SIZE = 64
META = {"sliders_base_model": TINY_MODEL, "sliders_resolution": str(SIZE)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The machine is shared; OpenMP workers spinning against other jobs make tiny models far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_hand_made():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    # Monotone but far from linear: rank correlation is still perfect.
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties with average ranks, by hand: x ranks 1, 2.5, 2.5, 4 (centred -1.5, 0, 0, 1.5) against
    # 1..4 (centred -1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 2, 3], [4, 3, 2, 1]) == pytest.approx(-3 / math.sqrt(10))


def test_spearman_constant_or_short_is_zero_not_nan():
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert spearman([0, 0, 0], [1, 2, 3]) == 0.0
    assert spearman([1], [2]) == 0.0
    # A non-finite pair is dropped rather than poisoning the result.
    assert spearman([1, 2, 3, 4], [1, 2, float("nan"), 4]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_linear_fit_hand_made():
    slope, intercept = linear_fit([-1, 0, 1, 2], [1, 3, 5, 7])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(3.0)
    # Least squares through noisy points: slope = cov/var worked by hand.
    slope, intercept = linear_fit([0, 1, 2], [0, 2, 1])
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(0.5)
    assert all(math.isnan(v) for v in linear_fit([1, 1, 1], [1, 2, 3]))


# --------------------------------------------------------------------------------------------------
# Measuring and summarising synthetic samples
# --------------------------------------------------------------------------------------------------


def _synthetic(scales=(-1.0, 0.0, 1.0), seeds=(0, 1), colour_at=None, cx_at=None):
    """Fake samples: the circle's radius grows 3 px per unit multiplier; position depends on the seed."""
    samples = []
    for prompt_index in range(2):
        for seed in seeds:
            for m in scales:
                colour = (colour_at or {}).get(m, "red")
                cx = (cx_at or {}).get(m, 26.0 + 8 * seed)
                scene = Scene("circle", colour, size=10.0 + 3.0 * m, cx=cx, cy=30.0 + 2 * prompt_index)
                samples.append(Sample(prompt_index, f"prompt {prompt_index}", seed, (m,), render(scene)))
    return samples


def test_registry_and_measurer_interface():
    assert MEASURERS["shapes"] is ShapesMeasurer
    measurer = get_measurer("shapes")
    assert isinstance(measurer, Measurer)
    values = measurer(render(Scene("square", "blue", size=12.0, cx=30.0, cy=34.0)))
    assert set(values) == set(measurer.numeric) | set(measurer.categorical)
    assert values["colour"] == "blue" and values["shape"] == "square"
    assert values["cx"] == pytest.approx(30.0, abs=0.1) and values["size"] == pytest.approx(12.0, abs=0.3)
    with pytest.raises(InputError, match="unknown"):
        get_measurer("nosuch")


def test_structure_detects_a_moved_shape_and_a_changed_background():
    measurer = ShapesMeasurer()
    a = render(Scene("circle", "red", size=8.0, cx=20.0, cy=32.0))
    same = measurer.structure(a, a)
    assert same == {"centroid_shift": 0.0, "outside_change": 0.0}
    moved = measurer.structure(a, render(Scene("circle", "red", size=8.0, cx=40.0, cy=32.0)))
    assert moved["centroid_shift"] == pytest.approx(20.0, abs=0.1)
    # Outside both shapes nothing moved: only faint anti-aliased edge pixels can differ.
    assert moved["outside_change"] < 0.005
    darker = Image.fromarray((np.asarray(a).astype(int) - 40).clip(0, 255).astype(np.uint8))
    assert measurer.structure(a, darker)["outside_change"] == pytest.approx(40 / 255, abs=0.01)


def test_summarise_on_a_growing_circle():
    measurer = ShapesMeasurer()
    rows = measure_samples(_synthetic(), measurer)
    summary = summarise(rows, target="size", numeric=measurer.numeric, categorical=measurer.categorical,
                        slider_names=["grow"])
    assert [c["multipliers"] for c in summary["combinations"]] == [[-1.0], [0.0], [1.0]]
    assert [c["reference"] for c in summary["combinations"]] == [False, True, False]
    assert [c["label"] for c in summary["combinations"]] == ["grow -1", "grow +0", "grow +1"]
    means = [c["numeric"]["size"]["mean"] for c in summary["combinations"]]
    assert means == pytest.approx([7.0, 10.0, 13.0], abs=0.3)
    for combo in summary["combinations"]:
        assert combo["n"] == 4
        assert combo["categorical_preserved"] == {"colour": 1.0, "shape": 1.0}
        assert combo["structure"]["centroid_shift"] < 0.05
        assert combo["structure"]["outside_change"] < 0.01
        assert combo["numeric"]["size"]["std"] < 0.1
    assert summary["combinations"][2]["change"]["size"] == pytest.approx(3.0, abs=0.3)

    (slider,) = summary["sliders"]
    assert slider["name"] == "grow" and slider["target"] == "size"
    assert slider["spearman_mean"] == pytest.approx(1.0)
    assert slider["spearman_pooled"] == pytest.approx(1.0)
    assert slider["slope"] == pytest.approx(3.0, abs=0.2)
    assert slider["pairs"] == 4 and slider["n"] == 12
    assert [p["multiplier"] for p in slider["curve"]] == [-1.0, 0.0, 1.0]
    assert all(p["min"] <= p["mean"] <= p["max"] for p in slider["curve"])

    preservation = summary["preservation"]
    assert preservation["n"] == 8
    assert preservation["categorical_preserved"] == {"colour": 1.0, "shape": 1.0}
    assert preservation["structure"]["centroid_shift"] < 0.05
    assert summary["baseline"] is None
    json.dumps(summary, allow_nan=False)


def test_summarise_counts_colour_changes_and_moves_against_the_reference():
    measurer = ShapesMeasurer()
    samples = _synthetic(colour_at={1.0: "blue"}, cx_at={-1.0: 40.0})
    summary = summarise(measure_samples(samples, measurer), target="size", numeric=measurer.numeric,
                        categorical=measurer.categorical)
    low, ref, high = summary["combinations"]
    assert high["categorical_preserved"]["colour"] == 0.0 and high["categorical_preserved"]["shape"] == 1.0
    assert low["categorical_preserved"]["colour"] == 1.0
    assert low["structure"]["centroid_shift"] > 5.0 and ref["structure"]["centroid_shift"] == 0.0
    assert summary["preservation"]["categorical_preserved"]["colour"] == 0.5


def test_summarise_several_sliders_pools_each_against_its_own_multiplier():
    measurer = ShapesMeasurer()
    samples = []
    for seed in (0, 1):
        for m1 in (-1.0, 0.0, 1.0):
            for m2 in (-1.0, 0.0, 1.0):
                # Only the first slider changes the size; the second moves nothing the target sees.
                scene = Scene("circle", "green", size=10.0 + 3.0 * m1, cx=30.0 + seed, cy=32.0)
                samples.append(Sample(0, "p", seed, (m1, m2), render(scene)))
    summary = summarise(measure_samples(samples, measurer), target="size", numeric=measurer.numeric,
                        categorical=measurer.categorical, slider_names=["grow", "idle"])
    grow, idle = summary["sliders"]
    assert grow["spearman_mean"] == pytest.approx(1.0) and grow["slope"] == pytest.approx(3.0, abs=0.2)
    assert idle["spearman_mean"] == pytest.approx(0.0, abs=1e-9)
    assert idle["slope"] == pytest.approx(0.0, abs=1e-6)
    assert len(summary["combinations"]) == 9
    assert [c["label"] for c in summary["combinations"]][:2] == ["grow -1, idle -1", "grow -1, idle +0"]


def _row(seed, multiplier, size, kind="slider"):
    return {"kind": kind, "prompt_index": 0, "prompt": "p", "seed": seed, "multipliers": [multiplier],
            "values": {"size": size, "colour": "red"}, "structure": {"shift": abs(multiplier)}}


def test_summarise_hand_made_rows_with_a_constant_pair():
    # Seed 0 grows with the multiplier; seed 1 does not react at all (its Spearman counts as 0).
    rows = [_row(0, -1.0, 1.0), _row(0, 0.0, 2.0), _row(0, 1.0, 4.0),
            _row(1, -1.0, 3.0), _row(1, 0.0, 3.0), _row(1, 1.0, 3.0)]
    summary = summarise(rows, target="size", numeric=("size",), categorical=("colour",))
    (slider,) = summary["sliders"]
    assert slider["spearman_mean"] == pytest.approx(0.5)
    assert slider["slope"] == pytest.approx(0.75)  # by hand: sum(x*y) = 3 over sum(x*x) = 4 (mean x is 0)
    assert summary["combinations"][2]["change"]["size"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert summary["combinations"][0]["numeric"]["size"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert summary["preservation"]["structure"] == {"shift": 1.0}


def test_summarise_baseline_rows_and_missing_reference():
    measurer = ShapesMeasurer()
    rows = measure_samples(_synthetic(), measurer)
    references = {(s.prompt_index, s.seed): s.image for s in _synthetic() if s.multipliers == (0.0,)}
    edited = [
        Sample(p, f"edited {p}", seed, (0.0,), render(Scene("circle", "red", 16.0, 26.0 + 8 * seed, 30.0 + 2 * p)))
        for p in range(2) for seed in (0, 1)
    ]
    rows += measure_samples(edited, measurer, kind="baseline", references=references)
    summary = summarise(rows, target="size", numeric=measurer.numeric, categorical=measurer.categorical)
    baseline = summary["baseline"]
    assert baseline["n"] == 4 and baseline["prompts"] == ["edited 0", "edited 1"]
    assert baseline["numeric"]["size"]["mean"] == pytest.approx(16.0, abs=0.3)
    assert baseline["change"]["size"] == pytest.approx(6.0, abs=0.3)
    assert baseline["categorical_preserved"] == {"colour": 1.0, "shape": 1.0}
    # The baseline images are not the all-zero reference, despite their zero multipliers.
    assert summary["combinations"][1]["numeric"]["size"]["mean"] == pytest.approx(10.0, abs=0.3)

    no_reference = [r for r in rows if r["multipliers"] != [0.0] or r["kind"] == "baseline"]
    with pytest.raises(ValueError, match="no reference"):
        summarise(no_reference, target="size", numeric=measurer.numeric)
    with pytest.raises(ValueError, match="target"):
        summarise(rows, target="colour", numeric=measurer.numeric)


# --------------------------------------------------------------------------------------------------
# End to end on the tiny model
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def attached_slider(tiny_pipe):
    """A random slider hooked into the shared tiny pipeline's UNet, removed afterwards."""
    torch.manual_seed(0)
    net = SliderNetwork.create(tiny_pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    for module in net.loras.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.5)
    net.attach()
    yield net
    net.detach()


def test_evaluate_end_to_end_and_write_report(tiny_pipe, attached_slider, tmp_path):
    prompts = ["a medium red circle", "a small blue square"]
    report = evaluate(
        tiny_pipe, [attached_slider], [[-1, 0, 1]], prompts, [0, 1], measurer="shapes", target="size",
        baseline_prompts=["a large red circle", "a large blue square"], start_noise=1000, steps=2,
        guidance_scale=3.0, height=SIZE, width=SIZE, slider_names=["grow"],
    )
    assert attached_slider.multiplier == 0.0
    json.dumps(report, allow_nan=False)
    assert set(report) >= {"settings", "combinations", "sliders", "preservation", "baseline", "rows"}
    settings = report["settings"]
    assert settings["prompts"] == prompts and settings["seeds"] == [0, 1]
    assert settings["sliders"] == [{"name": "grow", "path": None, "scales": [-1.0, 0.0, 1.0]}]
    assert settings["reference"] == "in the scale grid" and settings["target"] == "size"
    assert (settings["steps"], settings["height"], settings["width"]) == (2, SIZE, SIZE)

    rows = report["rows"]
    assert len(rows) == 2 * 2 * 3 + 2 * 2
    assert sum(r["kind"] == "baseline" for r in rows) == 4
    for row in rows:
        assert set(row["values"]) == {"size", "area", "cx", "cy", "fill_ratio", "colour", "shape"}
        assert set(row["structure"]) == {"centroid_shift", "outside_change"}
    # Each reference compared with itself: no structure change.
    for row in rows:
        if row["kind"] == "slider" and row["multipliers"] == [0.0]:
            assert row["structure"] == {"centroid_shift": 0.0, "outside_change": 0.0}
    assert [c["n"] for c in report["combinations"]] == [4, 4, 4]
    reference = report["combinations"][1]
    assert reference["reference"] and reference["categorical_preserved"] == {"colour": 1.0, "shape": 1.0}
    (slider,) = report["sliders"]
    assert -1.0 <= slider["spearman_mean"] <= 1.0 and -1.0 <= slider["spearman_pooled"] <= 1.0
    assert slider["pairs"] == 4
    baseline = report["baseline"]
    assert baseline["n"] == 4 and baseline["prompts"] == ["a large red circle", "a large blue square"]
    assert report["preservation"]["n"] == 8

    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"json", "markdown", "plot"}
    assert json.loads(paths["json"].read_text())["settings"]["target"] == "size"
    markdown = paths["markdown"].read_text()
    assert "| grow +0 (reference) | 4 |" in markdown and "spearman" in markdown.lower()
    assert "## Baseline: prompt editing" in markdown and "| edited prompts | 4 |" in markdown
    with Image.open(paths["plot"]) as plot:
        assert plot.size == evaluation.PLOT_SIZE and plot.mode == "RGB"
        colours = {colour for _, colour in plot.getcolors(1 << 20)}
    assert evaluation.SERIES_COLOURS[0] in colours  # the slider's series was drawn
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_plot_draws_the_baseline_line_and_several_sliders():
    measurer = ShapesMeasurer()
    samples = [
        Sample(0, "p", seed, (m1, m2), render(Scene("circle", "red", 10.0 + 3.0 * m1 + m2, 30.0, 32.0)))
        for seed in (0, 1) for m1 in (-1.0, 0.0, 1.0) for m2 in (0.0, 2.0)
    ]
    rows = measure_samples(samples, measurer)
    edited = Sample(0, "q", 0, (0.0, 0.0), render(Scene("circle", "red", 18.0, 30.0, 32.0)))
    rows += measure_samples([edited, Sample(0, "q", 1, (0.0, 0.0), edited.image)], measurer, kind="baseline",
                            references={(0, 0): samples[2].image, (0, 1): samples[8].image})
    summary = summarise(rows, target="size", numeric=measurer.numeric, categorical=measurer.categorical,
                        slider_names=["a", "b"])
    report = {"settings": {"target": "size"}, **summary}
    plot = evaluation.plot_report(report)
    pixels = np.asarray(plot)
    for colour in evaluation.SERIES_COLOURS[:2]:
        assert (pixels == colour).all(axis=-1).any()
    # The dashed baseline: grey pixels in a row with gaps between the dashes.
    grey = (pixels == (90, 90, 90)).all(axis=-1)
    row = grey[int(np.argmax(grey.sum(axis=1)))]
    inside = row[evaluation.PLOT_LEFT : plot.width - evaluation.PLOT_RIGHT]
    assert inside.sum() > 100 and (~inside).sum() > 50


def test_plot_shows_a_slider_name_with_dollar_signs_as_text():
    # matplotlib reads text between two '$' as math and fails on what does not parse; a file name may hold both.
    rows = [_row(seed, m, 10.0 + m + seed) for seed in (0, 1) for m in (-1.0, 0.0, 1.0)]
    summary = summarise(rows, target="size", numeric=("size",), slider_names=["cost $\\b$"])
    plot = evaluation.plot_report({"settings": {"target": "size"}, **summary})
    assert plot.size == evaluation.PLOT_SIZE
    assert evaluation.SERIES_COLOURS[0] in {colour for _, colour in plot.getcolors(1 << 20)}


# --------------------------------------------------------------------------------------------------
# run_evaluation
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def slider_file(tiny_pipe, tmp_path):
    torch.manual_seed(1)
    net = SliderNetwork.create(tiny_pipe.unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    for module in net.loras.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.5)
    return net.save(tmp_path / "grow.safetensors", META)


@pytest.fixture
def no_model_load(inject_loader):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    inject_loader(fail)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"measurer": "nosuch"}, "--measurer 'nosuch' is unknown"),
        ({"measurer": "clip"}, "measurer 'clip' needs its model"),
        ({"target": "colour"}, "--target 'colour' is not a numeric attribute"),
        ({"baseline_prompts": ["only one"]}, "1 baseline prompts for 2 prompts"),
        ({"baseline_replace": ["medium"]}, "is not old=new"),
        ({"baseline_replace": ["=large"]}, "nothing before '='"),
        ({"baseline_replace": ["medium=large"]}, "'medium' is not in prompt 1"),
        ({"baseline_replace": ["red=red"]}, "changes nothing"),
        ({"baseline_replace": ["red=blue"], "baseline_prompts": ["x", "y"]}, "use one way"),
        ({"seeds": "3-1"}, "runs backwards"),
        ({"seeds": [0, 0]}, "repeat a seed"),
        ({"scales": "a,b"}, "not a number"),
        ({"prompts": []}, "no prompt"),
        ({"steps": 0}, "--steps"),
        ({"precision": "fp8"}, "--precision"),
        ({"resolution": 60}, "--resolution"),
        ({"specs": []}, "no slider"),
        ({"specs": ["missing.safetensors"]}, "does not exist"),
    ],
)
def test_run_evaluation_validates_before_loading(slider_file, tmp_path, no_model_load, changes, message):
    arguments = {
        "specs": [SliderSpec(slider_file, None)],
        "scales": [-1, 0, 1],
        "prompts": ["a medium red circle", "a small red circle"],
        "seeds": [0, 1],
        "output": tmp_path / "out",
    }
    arguments.update(changes)
    settings = {name: arguments.pop(name) for name in list(arguments)
                if name in GenerationSettings.__dataclass_fields__}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_evaluation(**arguments, settings=GenerationSettings(**settings))
    assert not (tmp_path / "out").exists()


def test_run_evaluation_end_to_end(tiny_pipe, slider_file, tmp_path, inject_loader):
    loads = []

    def load(model, dtype, device, **options):
        loads.append(model)
        return tiny_pipe

    inject_loader(load)
    paths = run_evaluation(
        [f"{slider_file}:-1,1"], None, ["a medium red circle"], "0",
        settings=GenerationSettings(output=tmp_path / "out", start_noise=1000, steps=2, device="cpu"),
        baseline_replace=["medium=large"], images=True,
    )
    assert loads == [TINY_MODEL]
    # The sliders were detached again: the shared UNet has no hooks left.
    assert not any(module._forward_hooks for module in tiny_pipe.unet.modules())
    assert set(paths) == {"json", "markdown", "plot", "images", "grid", "baseline_grid"}
    report = json.loads(paths["json"].read_text())
    settings = report["settings"]
    assert settings["reference"].startswith("generated separately")
    assert settings["baseline_prompts"] == ["a large red circle"]
    assert settings["base_model"] == TINY_MODEL and settings["resolution"] == SIZE
    assert settings["sliders"][0]["name"] == "grow" and settings["sliders"][0]["path"] == str(slider_file)
    # The separately generated reference shows as its own combination between -1 and +1.
    assert [c["multipliers"] for c in report["combinations"]] == [[-1.0], [0.0], [1.0]]
    names = sorted(p.name for p in paths["images"].iterdir())
    assert names == ["baseline_p0_s0.png", "p0_s0_grow+0.png", "p0_s0_grow+1.png", "p0_s0_grow-1.png"]
    with Image.open(paths["grid"]) as grid:
        assert grid.width > 3 * SIZE


# --------------------------------------------------------------------------------------------------
# Seeds, prompt files, replacements
# --------------------------------------------------------------------------------------------------


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds(" 7, 0-2 ,10 - 11") == [7, 0, 1, 2, 10, 11]
    assert parse_seeds("5") == [5]
    for bad, message in [("", "empty"), ("1,,2", "not a seed"), ("-1", "not a seed"), ("a", "not a seed"),
                         ("5-2", "backwards"), ("0-3,2", "repeat"), ("0-999999", "more than")]:
        with pytest.raises(InputError, match=message):
            parse_seeds(bad)


def test_read_prompt_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeffa medium red circle\n\n  # a comment\n  a small blue square  \n", encoding="utf-8")
    assert read_prompt_lines(path) == ["a medium red circle", "a small blue square"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n# only a comment\n")
    with pytest.raises(InputError, match="holds no prompt"):
        read_prompt_lines(empty)
    with pytest.raises(InputError, match="does not exist"):
        read_prompt_lines(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="does not exist or is not a file"):
        read_prompt_lines(tmp_path)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8"):
        read_prompt_lines(binary)


def test_baseline_replacements():
    assert parse_replacements("medium = large") == [("medium", "large")]
    # Every occurrence is replaced.
    assert baseline_from_replace(["a medium red circle", "medium blue, medium"], ["medium=large"]) == [
        "a large red circle", "large blue, large"]
    assert baseline_from_replace(["a medium red circle"], ["medium=large", "red=blue"]) == ["a large blue circle"]
    with pytest.raises(InputError, match="'blue' is not in prompt 0"):
        baseline_from_replace(["a medium red circle"], ["blue=green"])
    with pytest.raises(InputError, match="empty"):
        parse_replacements([])
