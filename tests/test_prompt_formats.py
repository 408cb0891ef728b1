"""ai-toolkit/kohya `targets:` slider prompt files become our entries with the fields' meaning there."""

import pytest
import yaml

from sliders.errors import InputError
from sliders.prompts import load_prompts


def _write(tmp_path, data):
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_positive_and_negative_move_from_negative_to_positive_per_neutral(tmp_path):
    path = _write(tmp_path, {
        "targets": [{"target_class": "person", "positive": "old person", "negative": "young person"}],
        "neutrals": ["a photo of a person", "a portrait"],
        "guidance_scale": 4,
    })
    entries = load_prompts(path)
    assert [(e.target, e.positive, e.unconditional, e.neutral, e.action, e.guidance_scale) for e in entries] == [
        ("person", "old person", "young person", "a photo of a person", "enhance", 4.0),
        ("person", "old person", "young person", "a portrait", "enhance", 4.0),
    ]


def test_one_sided_targets_multiplier_and_weight(tmp_path):
    path = _write(tmp_path, {"slider": {"targets": [
        {"target_class": "", "negative": "blurry", "weight": 2},
        {"target_class": "dog", "positive": "big dog", "multiplier": -1, "resolution": [768, 768]},
    ]}})
    entries = load_prompts(path)
    # weight 2 -> sampled twice as often; negative only -> take it away; multiplier -1 swaps the direction.
    assert [(e.target, e.positive, e.unconditional, e.action, e.resolution) for e in entries] == [
        ("", "blurry", "", "erase", 512),
        ("", "blurry", "", "erase", 512),
        ("dog", "big dog", "", "erase", 768),
    ]


@pytest.mark.parametrize("data,message", [
    ({"targets": [{"target_class": "x", "positive": "a", "multiplier": 2}]}, "multiplier' is 2"),
    ({"targets": [{"target_class": "x", "positive": "a", "weight": 1}, {"target_class": "x", "positive": "b", "weight": 1.5}]},
     "whole multiples"),
    ({"targets": [{"target_class": "x"}]}, "neither 'positive' nor 'negative'"),
    ({"targets": [{"target_class": "x", "postive": "a"}]}, "did you mean 'positive'"),
    ({"targets": [{"target_class": "x", "positive": "a"}], "anchors": [{"prompt": "p"}]}, "anchors"),
    ({"targets": []}, "non-empty list"),
    ({"targets": [{"target_class": "x", "positive": "a", "resolution": [512, 768]}]}, "square"),
])
def test_targets_file_errors_name_the_problem(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        load_prompts(_write(tmp_path, data))
