"""Fast text-slider options and cost accounting: what each option changes, and what stays exact."""

import json
import random

import pytest
import torch

from sliders.cli import sample_main, train_images_main, train_main
from sliders.config import FAST_XK_MAX_STEPS, load_config
from sliders.errors import InputError
from sliders.models import (
    conditioning,
    denoise_jumps,
    denoise_states,
    denoise_to,
    jump_plan,
    make_scheduler,
    predict_noise,
    time_ids,
)
from sliders.network import SliderNetwork
from sliders.stats import RunStats

from test_objectives import _objective, text_setup  # noqa: F401  (fixture)
from conftest import cli_text_config, write_yaml
from test_cli import _error_line, image_root  # noqa: F401  (fixture)


def _denoise_args(text_setup):
    entry, embeddings, unet, network, factor = text_setup
    ids = time_ids(64, 64).expand(1, -1)
    cond = conditioning(embeddings, entry.target, ids)
    uncond = conditioning(embeddings, entry.unconditional, ids)
    latents = torch.randn((1, unet.config.in_channels, 64 // factor, 64 // factor), generator=torch.Generator().manual_seed(1))
    return unet, network, latents, cond, uncond


def test_one_trajectory_gives_every_k_exactly_as_separate_runs(text_setup):
    unet, network, latents, cond, uncond = _denoise_args(text_setup)
    scheduler = make_scheduler("ddim")
    with network.scaled(1.0):
        states = denoise_states(unet, scheduler, latents, [2, 5, 3], 10, cond, uncond, 3.0)
        for k in (2, 3, 5):
            assert torch.equal(states[k], denoise_to(unet, scheduler, latents, k, 10, cond, uncond, 3.0))


@pytest.mark.parametrize("v_pred", [False, True])
def test_ddim_jumps_of_one_index_are_the_scheduler_steps(text_setup, v_pred):
    unet, network, latents, cond, uncond = _denoise_args(text_setup)
    scheduler = make_scheduler("ddim", v_pred)
    with network.scaled(1.0):
        exact = denoise_to(unet, scheduler, latents, 6, 10, cond, uncond, 3.0)
        jumps = denoise_jumps(unet, scheduler, latents, list(range(7)), 10, cond, uncond, 3.0)
    torch.testing.assert_close(jumps[6], exact, rtol=1e-4, atol=1e-5)


def test_ddim_jumps_reach_the_same_noise_level_in_fewer_calls(text_setup):
    unet, network, latents, cond, uncond = _denoise_args(text_setup)
    scheduler = make_scheduler("ddim")
    stats = RunStats().attach(unet)
    with network.scaled(1.0):
        exact = denoise_to(unet, scheduler, latents, 9, 10, cond, uncond, 3.0)
        calls_exact = stats.unet_calls
        coarse = denoise_jumps(unet, scheduler, latents, jump_plan([9], 3), 10, cond, uncond, 3.0)[9]
    stats.detach()
    assert calls_exact == 9 and stats.unet_calls - calls_exact == 3
    # A coarser path to the same point: close to, not equal to, the exact one.
    assert not torch.equal(coarse, exact)
    assert (coarse - exact).norm() < 0.5 * exact.norm()


def test_jump_plan_starts_at_zero_hits_every_stop_and_caps_the_calls():
    assert jump_plan([3], 4) == [0, 1, 2, 3]  # short enough: every step, as the faithful path
    assert jump_plan([40], 4, "even") == [0, 10, 20, 30, 40]
    assert jump_plan([40], 4, "late") == [0, 18, 30, 38, 40]  # 40 * (1 - (1 - i/4)^2): finer towards x_k
    assert jump_plan([40], 4) == jump_plan([40], 4, "late")
    plan = jump_plan([49], 4)
    assert plan[0] == 0 and plan[-1] == 49 and len(plan) - 1 == 4
    plan = jump_plan([10, 40, 49], 4)
    assert {10, 40, 49} <= set(plan) and plan == sorted(set(plan)) and len(plan) - 1 <= 4 + 3


def test_xk_max_steps_bounds_the_unet_calls_of_each_step(text_setup):
    unet = text_setup[2]
    objective = _objective(text_setup, steps=50, xk_max_steps=4)
    stats = RunStats().attach(unet)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    for _ in range(6):
        before = stats.forward_samples
        objective.step(rng, generator)
        batch = text_setup[0].batch_size
        assert stats.forward_samples - before <= (2 * 4 + 3) * batch  # <= 4 guided calls + 1 frozen call
    stats.detach()
    assert objective.describe()["xk_max_steps"] == 4


def test_trajectory_reuse_serves_r_steps_from_one_trajectory_of_stale_weights(text_setup):
    entry, embeddings, unet, network, factor = text_setup
    objective = _objective(text_setup, steps=10, trajectory_reuse=3)
    stats = RunStats().attach(unet)
    rng, generator = random.Random(5), torch.Generator().manual_seed(5)
    draws = random.Random(5)
    draws.choice([entry])
    ks = [draws.randint(1, 9) for _ in range(3)]
    terms = [objective.step(rng, generator)[0] for _ in range(3)]
    stats.detach()
    # One trajectory to the deepest k, then one frozen call per step: no other denoising.
    assert stats.unet_calls == max(ks) + 3
    # Each step's x_k is that trajectory's state at its own k, from one noise.
    noise = torch.randn((entry.batch_size, unet.config.in_channels, 64 // factor, 64 // factor),
                        generator=torch.Generator().manual_seed(5))
    scheduler = make_scheduler("ddim")
    ids = terms[0].cond.time_ids
    with network.scaled(1.0):
        for k, term in zip(ks, terms):
            expected = denoise_to(unet, scheduler, noise, k, 10, conditioning(embeddings, entry.target, ids),
                                  conditioning(embeddings, entry.unconditional, ids), 3.0)
            assert torch.equal(term.latents, expected)
    described = objective.describe()
    assert described["trajectory_reuse"] == 3 and described["xk_staleness_steps_max"] == 2
    assert objective.staleness == [0, 1, 2]


def test_fast_preset_and_option_checks():
    fast = load_config(None, {"train.fast": True}).train
    assert fast.xk_max_steps == FAST_XK_MAX_STEPS and fast.xk_spacing == "late" and fast.trajectory_reuse == 1
    assert load_config(None, {"train.fast": True, "train.xk_max_steps": 2}).train.xk_max_steps == 2
    assert load_config(None).train.xk_max_steps is None and load_config(None).train.trajectory_reuse == 1
    with pytest.raises(InputError, match="ddim or ddpm"):
        load_config(None, {"train.fast": True, "train.noise_scheduler": "euler_a"})
    with pytest.raises(InputError, match="train.trajectory_reuse' must be > 0"):
        load_config(None, {"train.trajectory_reuse": 0})
    with pytest.raises(InputError, match="precision fp32"):
        load_config(None, {"train.fused_denoising": True, "train.precision": "bf16"})


def test_folding_into_half_precision_weights_is_refused(unet):
    unet = unet.to(torch.bfloat16)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1).attach()
    with network.scaled(1.0), pytest.raises(InputError, match="round its change away"):
        with network.fused():
            pass
    assert network.multiplier == 0.0


def test_sample_refuses_fused_in_half_precision(tmp_path, capsys):
    slider = tmp_path / "s.safetensors"
    slider.write_bytes(b"not read: the flags are checked first")
    argv = ["--slider", str(slider), "--prompt", "x", "--fused", "--precision", "bf16", "--output", str(tmp_path / "o")]
    assert sample_main(argv) == 2
    assert "--fused" in _error_line(capsys) and not (tmp_path / "o").exists()


def test_gradient_checkpointing_gives_the_same_slider_gradients(text_setup):
    entry, embeddings, unet, network, factor = text_setup
    term = _objective(text_setup).step(random.Random(0), torch.Generator().manual_seed(0))[0]

    def gradients():
        network.zero_grad(set_to_none=True)
        with network.scaled(1.0):
            prediction = predict_noise(unet, term.latents, term.timestep, term.cond).float()
            torch.nn.functional.mse_loss(prediction, term.target).backward()
        return [p.grad.clone() for p in network.trainable_parameters()]

    plain = gradients()
    unet.enable_gradient_checkpointing()
    checkpointed = gradients()
    unet.disable_gradient_checkpointing()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _write_config(tmp_path, **train):
    return write_yaml(cli_text_config(tmp_path, **train), tmp_path / "config.yaml")


@pytest.mark.parametrize("flags, forward, calls", [
    ([], 3 * (2 + 3 + 1), 3 * 3),
    (["--fast"], 3 * (2 + 3 + 1), 3 * 3),  # k = 1 needs one call however coarse the jumps
    (["--trajectory_reuse", "3"], 2 + 3 * (3 + 1), 1 + 3 * 2),  # the three steps share one trajectory
])
def test_every_run_writes_counted_stats(tmp_path, flags, forward, calls):
    """With max_denoising_steps 2, k is always 1: a guided call (2 samples per latent), a frozen call
    (3), a slider forward (1) and backward (1) per latent and step."""
    config = _write_config(tmp_path, max_denoising_steps=2, iterations=3)
    assert train_main(["--config", str(config), "--device", "cpu", *flags]) == 0
    stats = json.loads((tmp_path / "models" / "size_alpha1.0_rank2_noxattn" / "stats.json").read_text())
    batch = 2  # the prompt entry's batch_size
    assert stats["iterations"] == 3
    assert stats["unet_forward_samples"] == forward * batch
    assert stats["unet_backward_samples"] == 3 * batch
    assert stats["unet_calls"] == calls
    seconds = stats["seconds"]
    assert all(seconds[p] >= 0 for p in ("partial_denoising", "frozen_predictions", "slider_forward_backward",
                                          "optimizer", "other"))
    assert seconds["loop"] <= seconds["total"]
    assert stats["peak_memory"]["cpu_peak_rss_gib"] > 0
    assert stats["options"]["xk_max_steps"] == (FAST_XK_MAX_STEPS if flags == ["--fast"] else None)
    assert stats["options"]["trajectory_reuse"] == (3 if "--trajectory_reuse" in flags else 1)
    assert stats["options"]["xk_staleness_steps_max"] == (2 if "--trajectory_reuse" in flags else 0)


def test_image_runs_write_stats_too(tmp_path, image_root):
    config = _write_config(tmp_path, iterations=2)
    argv = ["--config", str(config), "--device", "cpu", "--folder_main", str(image_root), "--folders", "low,high",
            "--scales", "-1,1", "--name", "img"]
    assert train_images_main(argv) == 0
    stats = json.loads((tmp_path / "models" / "img_alpha1.0_rank2_noxattn" / "stats.json").read_text())
    # A symmetric pair: two slider terms of batch 2 per step, no frozen call, no denoising.
    assert stats["iterations"] == 2 and stats["unet_forward_samples"] == 8 and stats["unet_backward_samples"] == 8
    assert stats["seconds"]["partial_denoising"] == 0


def test_compiled_no_grad_calls_agree_with_eager(text_setup):
    """torch.compile (inductor) on the partial denoising and the frozen call: the same step up to
    rounding; calls through the compiled module are still counted."""
    unet = text_setup[2]
    eager = _objective(text_setup, steps=2)
    compiled = _objective(text_setup, steps=2, compile_unet=True)
    a = eager.step(random.Random(0), torch.Generator().manual_seed(0))[0]
    stats = RunStats().attach(unet)
    b = compiled.step(random.Random(0), torch.Generator().manual_seed(0))[0]
    stats.detach()
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.target, a.target, rtol=1e-4, atol=1e-4)
    assert stats.unet_calls == 2 and stats.forward_samples == 2 * 2 + 3 * 2
    assert compiled.describe()["compiled_nograd_unet"] and not eager.describe()["compiled_nograd_unet"]


def test_a_new_multiplier_does_not_recompile(text_setup, monkeypatch):
    """The slider's multiplier is read from a tensor: after the first call at a non-zero multiplier,
    other multipliers change the output through the same graph. (The cheap aot_eager backend traces
    exactly what inductor would compile.)"""
    from torch._dynamo.utils import counters

    unet, network = text_setup[2], text_setup[3]
    compiled = torch.compile(unet, backend="aot_eager", dynamic=False)
    term = _objective(text_setup, steps=2).step(random.Random(0), torch.Generator().manual_seed(0))[0]
    outputs = {}
    with torch.no_grad():
        for m in (1.0, 2.5, -0.5):
            with network.scaled(m):
                outputs[m] = predict_noise(compiled, term.latents, term.timestep, term.cond)
                torch.testing.assert_close(outputs[m], predict_noise(unet, term.latents, term.timestep, term.cond))
            if m == 1.0:
                graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs
    assert not torch.equal(outputs[1.0], outputs[2.5])


def test_compile_and_fused_denoising_do_not_combine():
    with pytest.raises(InputError, match="choose one"):
        load_config(None, {"train.compile": True, "train.fused_denoising": True, "train.precision": "fp32"})
