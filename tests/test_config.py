"""Config and prompt files: official keys load, defaults fill in, bad keys are named with a fix."""

import dataclasses
import re
from pathlib import Path

import pytest

from sliders.config import BUILTIN_MODEL, config_field, flagged_keys, load_config, run_folder_name
from sliders.errors import InputError
from sliders.prompts import distinct_prompts, expand_attributes, load_prompts, make_entry, parse_attributes

OFFICIAL_XL = """
prompts_file: "trainscripts/textsliders/data/prompts-xl.yaml"
pretrained_model:
  name_or_path: "stabilityai/stable-diffusion-xl-base-1.0"
  v2: false
  v_pred: false
network:
  type: "c3lier"
  rank: 4
  alpha: 1.0
  training_method: "noxattn"
train:
  precision: "bfloat16"
  noise_scheduler: "ddim"
  iterations: 1000
  lr: 0.0002
  optimizer: "AdamW"
  lr_scheduler: "constant"
  max_denoising_steps: 50
save:
  name: "temp"
  path: "./models"
  per_steps: 500
  precision: "bfloat16"
logging:
  use_wandb: false
  verbose: false
other:
  use_xformers: true
"""


def _write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_official_config_loads_unchanged(tmp_path):
    config = load_config(_write(tmp_path, OFFICIAL_XL))
    assert config.pretrained_model.name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert config.network == dataclasses.replace(config.network, type="c3lier", rank=4, alpha=1.0, training_method="noxattn")
    assert config.train.precision == "bf16" and config.save.precision == "bf16"
    assert config.train.optimizer == "adamw" and config.train.lr == 2e-4
    assert config.train.max_denoising_steps == 50 and config.save.per_steps == 500
    assert config.other.use_xformers is True
    assert run_folder_name(config) == "temp_alpha1.0_rank4_noxattn"


def test_missing_sections_take_defaults():
    config = load_config(None)
    assert config.pretrained_model.name_or_path == BUILTIN_MODEL
    assert (config.network.type, config.network.rank, config.network.alpha) == ("c3lier", 4, 1.0)
    assert config.train.noise_scheduler == "ddim" and config.train.iterations == 1000


def test_unknown_keys_fail_with_a_suggestion(tmp_path):
    with pytest.raises(InputError, match=r"unknown config key 'train.learning_rat'.*'lr'|did you mean"):
        load_config(_write(tmp_path, "train:\n  iteration: 5\n"))
    with pytest.raises(InputError, match=r"'train.iteration'.*did you mean 'iterations'"):
        load_config(_write(tmp_path, "train:\n  iteration: 5\n"))
    with pytest.raises(InputError, match=r"'netwrk'.*did you mean 'network'"):
        load_config(_write(tmp_path, "netwrk:\n  rank: 5\n"))
    with pytest.raises(InputError, match=r"'network.training_method'.*did you mean 'noxattn'"):
        load_config(_write(tmp_path, "network:\n  training_method: noxatn\n"))


def test_bad_values_are_named(tmp_path):
    with pytest.raises(InputError, match="network.rank' must be a whole number"):
        load_config(_write(tmp_path, "network:\n  rank: four\n"))
    with pytest.raises(InputError, match="network.rank' must be > 0"):
        load_config(None, {"network.rank": 0})
    with pytest.raises(InputError, match="train.precision"):
        load_config(None, {"train.precision": "fp8"})
    with pytest.raises(InputError, match="not valid YAML at line"):
        load_config(_write(tmp_path, "train: [\n  lr: 1\n"))
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    # v2 now selects SD 2.x; it only conflicts with another explicit family.
    assert load_config(None, {"pretrained_model.v2": True}).pretrained_model.v2 is True
    with pytest.raises(InputError, match="pretrained_model.v2.*disagree"):
        load_config(None, {"pretrained_model.v2": True, "pretrained_model.family": "sd1"})


def test_flags_beat_yaml_beat_defaults(tmp_path):
    path = _write(tmp_path, "network:\n  rank: 8\n  alpha: 2\nsave:\n  name: from_yaml\n")
    config = load_config(path, {"network.rank": 16, "save.name": None})
    assert config.network.rank == 16  # flag beats YAML
    assert config.network.alpha == 2.0  # YAML beats default
    assert config.save.name == "from_yaml"  # an absent flag (None) changes nothing
    assert config.train.lr == 2e-4  # default


def test_prompts_file_beside_the_config_is_found(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.yaml").write_text("- target: x\n")
    config = load_config(_write(tmp_path / "sub", "prompts_file: p.yaml\n"))
    assert load_prompts(config.prompts_file)[0].target == "x"


def test_prompt_defaults_are_filled():
    entry = make_entry({"target": "person"})
    assert entry.positive == "person" and entry.unconditional == "" and entry.neutral == ""
    assert entry.action == "erase" and entry.sign == -1 and entry.guidance_scale == 1.0
    assert (entry.resolution, entry.batch_size, entry.dynamic_resolution, entry.dynamic_crops) == (512, 1, False, False)
    entry = make_entry({"target": "t", "unconditional": "u", "action": "enhance"})
    assert entry.neutral == "u" and entry.sign == 1


def test_official_guidance_typo_is_refused(tmp_path):
    path = _write(tmp_path, "- target: person\n  guidance: 4\n", "prompts.yaml")
    with pytest.raises(InputError, match=r"entry 1 has unknown key 'guidance': did you mean 'guidance_scale'"):
        load_prompts(path)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"positive": "x"}, "has no 'target'"),
        ({"target": "x", "action": "boost"}, "use 'enhance' or 'erase'"),
        ({"target": "x", "batch_size": 0}, "use 1 or more"),
        ({"target": "x", "resolution": 500}, "multiple of 8"),
        ({"target": "x", "guidance_scale": "lots"}, "must be a number"),
        ({"target": "x", "dynamic_crops": "yes"}, "true or false"),
    ],
)
def test_bad_prompt_entries(raw, message):
    with pytest.raises(InputError, match=message):
        make_entry(raw)


def test_empty_or_non_list_prompt_files(tmp_path):
    with pytest.raises(InputError, match="non-empty YAML list"):
        load_prompts(_write(tmp_path, "", "p.yaml"))
    with pytest.raises(InputError, match="non-empty YAML list"):
        load_prompts(_write(tmp_path, "just text", "p.yaml"))


def test_attribute_expansion_prefixes_all_four_roles():
    entries = [make_entry({"target": "person", "positive": "old person", "unconditional": "young person",
                           "action": "enhance", "guidance_scale": 4})]
    expanded = expand_attributes(entries, parse_attributes("male, female,  "))
    assert len(expanded) == 2
    male, female = expanded
    assert male.roles() == ("male person", "male old person", "male young person", "male young person")
    assert female.target == "female person" and female.guidance_scale == 4 and female.action == "enhance"
    assert expand_attributes(entries, []) == entries
    assert distinct_prompts(expanded) == ["male person", "male old person", "male young person", "female person",
                                          "female old person", "female young person"]


def test_a_key_given_twice_is_an_error_naming_it(tmp_path):
    from sliders.prompts import load_prompts

    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  lr: 0.1\nsave:\n  name: x\ntrain:\n  iterations: 5\n")
    with pytest.raises(InputError, match=r"key 'train' twice \(again at line 5\)"):
        load_config(config)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("- target: a\n  positive: b\n  positive: c\n")
    with pytest.raises(InputError, match="key 'positive' twice"):
        load_prompts(str(prompts))


def test_an_alpha_that_would_only_blow_up_the_loss_is_refused():
    with pytest.raises(InputError, match="'network.alpha' must be at most 1024"):
        load_config(None, {"network.alpha": 1e30})
    assert load_config(None, {"network.alpha": 16}).network.alpha == 16


# Every numeric option has a lower and an upper bound, checked when the config loads (one line, the
# key, the limit and the fix): (overrides, the largest value accepted or None, the message).
UPPER_BOUNDS = [
    ({"train.trajectory_reuse": 10**9}, {"train.trajectory_reuse": 1000}, "train.trajectory_reuse' must be at most 1000"),
    ({"train.trajectory_reuse": 13, "train.iterations": 12}, {"train.trajectory_reuse": 12, "train.iterations": 12},
     "train.trajectory_reuse' must be at most 12, got 13: train.iterations is 12"),
    ({"train.iterations": 10**9}, {"train.iterations": 10**6}, "train.iterations' must be at most 1000000"),
    ({"save.per_steps": 10**7}, {"save.per_steps": 10**6}, "save.per_steps' must be at most 1000000"),
    ({"train.xk_max_steps": 51}, {"train.xk_max_steps": 50}, "train.xk_max_steps' must be at most 50"),
    ({"data.folders_per_step": 3, "data.folders": ["a", "b"]}, {"data.folders_per_step": 2, "data.folders": ["a", "b"]},
     "data.folders_per_step' must be at most 2"),
    ({"data.folders_per_step": 65}, {"data.folders_per_step": 64}, "data.folders_per_step' must be at most 64"),
    ({"data.scales": [-1, 1e30]}, {"data.scales": [-100, 100]}, "data.scales' has 1e+30"),
    ({"sample.every": 10**9}, {"sample.every": 10**6}, "sample.every' must be from 0 (no previews) to 1000000"),
    ({"sample.every": -1}, {"sample.every": 0}, "sample.every' must be from 0"),
    ({"sample.resolution": 8192}, {"sample.resolution": 4096}, "sample.resolution' must be a multiple of 64 from 64 to 4096"),
    ({"sample.guidance_scale": 1e9}, {"sample.guidance_scale": 100}, "sample.guidance_scale' must be from 0 to 100"),
    ({"sample.guidance_scale": -1}, {"sample.guidance_scale": 0}, "sample.guidance_scale' must be from 0 to 100"),
    ({"sample.seeds": list(range(100))}, {"sample.seeds": list(range(85))}, "make 300 preview images (1 x 100 x 3)"),
    ({"sample.prompts": ["a"] * 2, "sample.scales": [float(s) for s in range(-64, 65)]},
     {"sample.prompts": ["a"] * 2, "sample.scales": [float(s) for s in range(-64, 64)]}, "make 258 preview images"),
]


@pytest.mark.parametrize("bad, edge, message", UPPER_BOUNDS)
def test_every_numeric_option_is_bounded_when_the_config_loads(bad, edge, message):
    with pytest.raises(InputError) as refused:
        load_config(None, bad)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    load_config(None, edge)  # the limit itself is accepted


def test_the_fast_preset_fits_a_short_schedule():
    """`train.fast` sets 4 jumps; a schedule of fewer steps needs fewer, which is not an error."""
    assert load_config(None, {"train.fast": True, "train.max_denoising_steps": 2}).train.xk_max_steps == 4


@pytest.mark.parametrize("raw, message", [
    ({"target": "x", "guidance_scale": 1e9}, "key 'guidance_scale' is 1e+09; use 0 to 100"),
    ({"target": "x", "guidance_scale": -2}, "key 'guidance_scale' is -2; use 0 to 100"),
])
def test_prompt_guidance_is_bounded(raw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        make_entry(raw)
    assert make_entry({"target": "x", "guidance_scale": 100}).guidance_scale == 100


def test_target_weights_far_apart_are_refused(tmp_path):
    """ai-toolkit weights repeat each target's prompts in their ratio: 1 and 1e9 would be a billion entries."""
    path = _write(tmp_path, "targets:\n  - target_class: a\n    positive: b\n    weight: 1\n"
                            "  - target_class: c\n    positive: d\n    weight: 1000000000\n", "targets.yaml")
    with pytest.raises(InputError, match="differ by more than 100 times"):
        load_prompts(str(path))
    path.write_text(path.read_text().replace("1000000000", "100"))
    assert len(load_prompts(str(path))) == 101


def _docs_flag_table() -> dict[str, tuple[str, str]]:
    """docs/training.md's table of training flags: flag -> (config key, command)."""
    text = (Path(__file__).parent.parent / "docs" / "training.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(--\w+)` \| `([\w.]+)` \| (.+?) \|$", text, flags=re.MULTILINE)
    return {flag: (key, command) for flag, key, command in rows}


def test_the_docs_list_every_training_flag_with_its_key_and_command():
    from sliders.commands.train import IMAGE_KEYS, IMAGE_OPTION_KEYS, TEXT_KEYS, _training_parser

    common = _training_parser("sliders-train", "").config_keys
    commands = {**{key: "both" for key in common}, **{key: "`sliders-train`" for key in TEXT_KEYS},
                **{key: "`sliders-train-images`" for key in (*IMAGE_KEYS, *IMAGE_OPTION_KEYS)}}
    generated = {config_field(key).metadata["flag"]: key for key in flagged_keys()}
    table = _docs_flag_table()
    assert set(table) == set(generated)
    for flag, (key, command) in table.items():
        assert key == generated[flag], flag
        assert command.split(" (")[0] == commands[key], flag
    assert set(commands) == set(flagged_keys())  # every flag is some training command's


def test_generated_flags_give_overrides_only_when_given():
    from sliders.cli import _Parser
    from sliders.commands.flags import add_config_flags, config_overrides

    parser = _Parser(prog="test")
    add_config_flags(parser, flagged_keys())
    assert set(config_overrides(parser, parser.parse_args([])).values()) == {None}
    args = parser.parse_args(["--no-compile", "--lr", "0.001", "--quantize", "8BIT", "--folders", "a, b",
                              "--scales", "-1,1", "--sample_prompt", "x", "--sample_prompt", "y", "--captions"])
    overrides = {key: value for key, value in config_overrides(parser, args).items() if value is not None}
    assert overrides == {"train.compile": False, "train.lr": 0.001, "pretrained_model.quantize": "8bit",
                         "data.folders": ["a", "b"], "data.scales": (-1.0, 1.0), "sample.prompts": ["x", "y"],
                         "data.captions": True}
    assert load_config(None, overrides).data.folders == ("a", "b")
