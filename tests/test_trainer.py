"""The shared training loop: optimizers, LR schedules, one step touching only the slider, failures."""

import math
import sys

import pytest
import torch

from sliders.config import LR_SCHEDULERS, OPTIMIZERS, load_config
from sliders.errors import InputError, TrainingError
from sliders.models import encode_prompts, make_scheduler, vae_factor
from sliders.network import SliderNetwork
from sliders.objectives import Objective, Term, TextObjective
from sliders.prompts import make_entry
from sliders.optim import make_lr_scheduler, make_optimizer, parse_optimizer_args
from sliders.trainer import Setup, train_loop


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_the_parameters(name):
    param = torch.nn.Parameter(torch.ones(8, 8))
    optimizer = make_optimizer(name, [param], 1e-2 if "dadapt" not in name and name != "prodigy" else 1.0, "")
    before = param.detach().clone()
    for _ in range(2):
        param.grad = torch.full_like(param, 0.5)
        optimizer.step()
    assert not torch.equal(param.detach(), before)


def test_optimizer_args_are_parsed_and_checked():
    assert parse_optimizer_args("weight_decay=0.01 betas=0.9,0.99 amsgrad=True eps=1e-8") == {
        "weight_decay": 0.01, "betas": (0.9, 0.99), "amsgrad": True, "eps": 1e-8}
    param = torch.nn.Parameter(torch.ones(2))
    assert make_optimizer("adamw", [param], 1e-3, "weight_decay=0.5").param_groups[0]["weight_decay"] == 0.5
    with pytest.raises(InputError, match="not key=value"):
        parse_optimizer_args("weight_decay")
    with pytest.raises(InputError, match="do not fit optimizer 'adamw'"):
        make_optimizer("adamw", [param], 1e-3, "no_such_option=1")


def test_missing_optional_optimizer_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # what an absent package looks like to import
    with pytest.raises(InputError, match="pip install prodigyopt"):
        make_optimizer("prodigy", [torch.nn.Parameter(torch.ones(2))], 1.0, "")


def test_missing_bitsandbytes_names_the_8bit_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(InputError, match=r"optimizer 'adamw8bit' needs the package 'bitsandbytes'.*sliders\[8bit\]"):
        make_optimizer("adamw8bit", [torch.nn.Parameter(torch.ones(2))], 1.0, "")


def _rates(name, iterations, lr):
    """The learning rate of each of `iterations` optimizer steps under schedule `name`."""
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    schedule = make_lr_scheduler(name, optimizer, iterations, lr)
    rates = []
    for _ in range(iterations):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def _cosine(lr, position, period):
    floor = lr / 100
    return floor + (lr - floor) * (1 + math.cos(math.pi * position / period)) / 2


def _assert_rates(rates, expected):
    assert len(rates) == len(expected)
    for step, (rate, want) in enumerate(zip(rates, expected)):
        assert math.isclose(rate, want, rel_tol=1e-6, abs_tol=1e-12), (step, rate, want)


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_lr_schedules_stay_between_lr_and_lr_over_100(name):
    rates = _rates(name, 100, 1.0)
    assert max(rates) <= 1.0 + 1e-9 and min(rates) >= 0.01 - 1e-9
    if name == "constant":
        assert set(rates) == {1.0}


def test_cosine_schedule_anneals_to_lr_over_100_over_the_run():
    lr, total = 0.3, 1000
    _assert_rates(_rates("cosine", total, lr), [_cosine(lr, step, total) for step in range(total)])


def test_cosine_with_restarts_schedule_is_the_official_one():
    # T_0 = T // 10 = 100, T_mult = 2: cycles of 100, 200, 400, ... steps, each from lr to lr/100.
    lr, total = 0.3, 1000
    rates = _rates("cosine_with_restarts", total, lr)
    expected, start, period = [], 0, 100
    for step in range(total):
        if step == start + period:
            start, period = step, period * 2
        expected.append(_cosine(lr, step - start, period))
    _assert_rates(rates, expected)
    assert rates[100] == rates[300] == rates[700] == lr  # the restarts
    assert rates[99] < lr / 50 and rates[299] < lr / 50


def test_step_schedule_is_the_official_one():
    # Every T // 100 = 10 steps the rate is multiplied by 0.999.
    lr, total = 0.3, 1000
    rates = _rates("step", total, lr)
    _assert_rates(rates, [lr * 0.999 ** (step // 10) for step in range(total)])
    assert rates[9] == lr and math.isclose(rates[10], lr * 0.999)


def test_linear_schedule_warms_up_from_half_the_lr():
    # The official intent: from lr/2 to lr over the first T // 100 = 10 steps, then constant.
    lr, total = 0.3, 1000
    rates = _rates("linear", total, lr)
    _assert_rates(rates, [lr * (0.5 + 0.05 * min(step, 10)) for step in range(total)])
    assert math.isclose(rates[0], lr / 2) and all(math.isclose(rate, lr) for rate in rates[10:])


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_lr_schedules_survive_runs_shorter_than_their_periods(name):
    # T // 10 and T // 100 are 0 here; the periods become 1 step.
    rates = _rates(name, 5, 1.0)
    assert all(0.01 - 1e-9 <= rate <= 1.0 + 1e-9 for rate in rates)
    if name == "step":
        _assert_rates(rates, [0.999**step for step in range(5)])
    if name == "linear":
        _assert_rates(rates, [0.5, 1.0, 1.0, 1.0, 1.0])


@pytest.fixture
def small_setup(tiny_pipe, unet):
    entry = make_entry({"target": "circle", "positive": "large circle", "unconditional": "small circle",
                        "action": "enhance", "guidance_scale": 2, "resolution": 64})
    embeddings = encode_prompts([tiny_pipe.tokenizer, tiny_pipe.tokenizer_2],
                                [tiny_pipe.text_encoder, tiny_pipe.text_encoder_2], list(set(entry.roles())))
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1).attach()
    scheduler = make_scheduler("ddim")
    objective = TextObjective([entry], embeddings, unet, scheduler, network, max_denoising_steps=5,
                              factor=vae_factor(tiny_pipe.vae), device=torch.device("cpu"))
    return Setup(unet, tiny_pipe.vae, scheduler, embeddings, network), objective


def test_one_step_changes_only_slider_parameters(small_setup, tmp_path):
    parts, objective = small_setup
    unet_before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    slider_before = {k: v.clone() for k, v in parts.network.state_dict().items()}
    config = load_config(None, {"train.iterations": 1, "train.lr": 1e-2, "save.path": str(tmp_path)})
    result = train_loop(config, parts, objective, tmp_path / "run", {})
    assert all(torch.equal(unet_before[k], v) for k, v in parts.unet.state_dict().items())
    changed = [k for k, v in parts.network.state_dict().items() if not torch.equal(slider_before[k], v)]
    assert any(k.endswith("lora_up.weight") for k in changed) and any(k.endswith("lora_down.weight") for k in changed)
    assert not any(k.endswith("alpha") for k in changed)
    assert all(p.dtype == torch.float32 for p in parts.network.parameters())
    assert result.last.is_file() and len(result.losses) == 1
    assert parts.network.multiplier == 0.0


def test_non_finite_loss_stops_with_a_clear_error(small_setup, tmp_path):
    parts, objective = small_setup

    class Broken(Objective):
        def step(self, rng, generator):
            (term,) = objective.step(rng, generator)
            return [Term(term.latents, term.timestep, term.cond, term.target * float("nan"), 1.0)]

    config = load_config(None, {"train.iterations": 3, "save.path": str(tmp_path)})
    with pytest.raises(TrainingError, match="loss is nan at step 1"):
        train_loop(config, parts, Broken(), tmp_path / "run", {})
    assert not (tmp_path / "run" / "slider_last.safetensors").exists()


def test_checkpoints_follow_per_steps(small_setup, tmp_path):
    parts, objective = small_setup
    config = load_config(None, {"train.iterations": 5, "save.per_steps": 2, "save.name": "x", "save.path": str(tmp_path)})
    result = train_loop(config, parts, objective, tmp_path / "run", {"sliders_base_model": "m"})
    assert [p.name for p in result.checkpoints] == ["x_2steps.safetensors", "x_4steps.safetensors"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml", "stats.json", "x_2steps.safetensors", "x_4steps.safetensors", "x_last.safetensors"]
