"""The slider objectives against the formulas of the paper, on hand-made tensors and the tiny model."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sliders.data import LatentSource, scan_pairs
from sliders.errors import InputError
from sliders.models import encode_prompts, make_scheduler, predict_noise, training_timestep, vae_factor
from sliders.network import SliderNetwork
from sliders.objectives import (
    DENOISE_GUIDANCE,
    OBJECTIVES,
    FlowImageObjective,
    FlowTextObjective,
    ImageObjective,
    Objective,
    TextObjective,
    choose_folders,
    draw_size,
    guided_target,
    image_prompts,
    is_symmetric,
    pair_prompt,
)
from sliders.prompts import make_entry


def test_one_table_holds_every_objective_by_kind_and_flow_matching():
    assert OBJECTIVES == {("text", False): TextObjective, ("text", True): FlowTextObjective,
                          ("image", False): ImageObjective, ("image", True): FlowImageObjective}
    for objective in OBJECTIVES.values():
        assert issubclass(objective, Objective) and "from_config" in vars(objective)


def test_guided_target_on_hand_made_tensors():
    n = torch.tensor([1.0, 2.0])
    p = torch.tensor([3.0, -1.0])
    u = torch.tensor([0.5, 1.0])
    # enhance: n + eta * (p - u)
    assert torch.equal(guided_target(n, p, u, +1, 2.0), torch.tensor([1.0 + 2 * 2.5, 2.0 + 2 * -2.0]))
    # erase: n - eta * (p - u)
    assert torch.equal(guided_target(n, p, u, -1, 2.0), torch.tensor([1.0 - 2 * 2.5, 2.0 + 2 * 2.0]))


def test_timestep_mapping_indexes_the_1000_step_schedule():
    scheduler = make_scheduler("ddim")
    # DDIM with 1000 steps runs 999 .. 0, so index int(k * 1000 / 50) = 20k is timestep 999 - 20k.
    assert [int(training_timestep(scheduler, k, 50)) for k in (1, 25, 49)] == [979, 499, 19]
    assert int(training_timestep(scheduler, 3, 10)) == 999 - 300


def test_dynamic_resolution_is_inclusive_multiples_of_64():
    entry = make_entry({"target": "x", "resolution": 512, "dynamic_resolution": True})
    rng = random.Random(0)
    seen = {side for _ in range(400) for side in draw_size(entry, rng)}
    assert seen == {256, 320, 384, 448, 512}
    assert draw_size(make_entry({"target": "x", "resolution": 512}), rng) == (512, 512)


def test_symmetric_scales_pick_one_magnitude_and_its_mirror():
    scales = [-2.0, -1.0, 1.0, 2.0]
    assert is_symmetric(scales) and not is_symmetric([0.67, 1, 1.3, 2]) and not is_symmetric([-1, 2])
    rng = random.Random(0)
    picks = [tuple(choose_folders(scales, rng)) for _ in range(200)]
    assert set(picks) == {(1, 2), (0, 3)}  # (low, high) folder pairs for |s| = 1 and |s| = 2
    assert 60 < picks.count((1, 2)) < 140  # uniform over magnitudes


def test_asymmetric_scales_train_every_folder_or_a_capped_subset():
    scales = [0.67, 1.0, 1.3, 2.0]
    rng = random.Random(0)
    assert choose_folders(scales, rng) == [0, 1, 2, 3]
    subsets = {tuple(choose_folders(scales, rng, folders_per_step=2)) for _ in range(100)}
    assert all(len(s) == 2 and list(s) == sorted(s) for s in subsets) and len(subsets) == 6


@pytest.fixture
def text_setup(tiny_pipe, unet):
    entry = make_entry({"target": "person", "positive": "old person", "unconditional": "young person",
                        "neutral": "person", "action": "enhance", "guidance_scale": 4, "resolution": 64,
                        "batch_size": 2})
    prompts = list(dict.fromkeys(entry.roles()))
    embeddings = encode_prompts([tiny_pipe.tokenizer, tiny_pipe.tokenizer_2],
                                [tiny_pipe.text_encoder, tiny_pipe.text_encoder_2], prompts)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1).attach()
    with torch.no_grad():
        for module in network.loras.values():
            torch.nn.init.normal_(module.lora_up.weight, std=0.05)
    return entry, embeddings, unet, network, vae_factor(tiny_pipe.vae)


def _objective(text_setup, steps=10, **kwargs):
    entry, embeddings, unet, network, factor = text_setup
    return TextObjective([entry], embeddings, unet, make_scheduler("ddim"), network, max_denoising_steps=steps,
                         factor=factor, device=torch.device("cpu"), **kwargs)


def test_text_step_denoises_k_steps_with_slider_on_then_one_frozen_batched_call(text_setup, monkeypatch):
    entry, embeddings, unet, network, factor = text_setup
    objective = _objective(text_setup)
    calls = []
    guided_inputs = []

    def record(module, args, kwargs, output):
        calls.append((network.multiplier, args[0].shape[0], torch.is_grad_enabled(), output.sample.detach().clone()))

    handle = unet.register_forward_hook(record, with_kwargs=True)
    original_step = objective.scheduler.step

    def spy_step(model_output, *args, **kwargs):
        guided_inputs.append(model_output.clone())
        return original_step(model_output, *args, **kwargs)

    monkeypatch.setattr(objective.scheduler, "step", spy_step)
    rng = random.Random(3)
    k = random.Random(3)
    k.choice([entry])
    expected_k = k.randint(1, 9)
    terms = objective.step(rng, torch.Generator().manual_seed(0))
    handle.remove()

    denoise, frozen = calls[:-1], calls[-1]
    assert len(denoise) == expected_k == len(guided_inputs)
    assert all(m == 1.0 and batch == 2 * entry.batch_size and not grad for m, batch, grad, _ in denoise)
    for (_, _, _, out), guided in zip(denoise, guided_inputs):
        uncond, cond = out.float().chunk(2)
        torch.testing.assert_close(guided, uncond + DENOISE_GUIDANCE * (cond - uncond))
    assert frozen[0] == 0.0 and frozen[1] == 3 * entry.batch_size and not frozen[2]

    (term,) = terms
    assert term.multiplier == 1.0 and term.latents.shape == (2, 4, 64 // factor, 64 // factor)
    assert int(term.timestep) == int(training_timestep(make_scheduler("ddim"), expected_k, 10))
    # The target is n + s * eta * (p - u) from separate frozen predictions of each role.
    from sliders.models import conditioning

    ids = term.cond.time_ids
    with torch.no_grad(), network.scaled(0.0):
        p, n, u = (predict_noise(unet, term.latents, term.timestep, conditioning(embeddings, text, ids)).float()
                   for text in (entry.positive, entry.neutral, entry.unconditional))
    torch.testing.assert_close(term.target, n + 4.0 * (p - u), rtol=1e-4, atol=1e-5)
    assert torch.equal(term.cond.embeds[0], embeddings[entry.target][0])
    assert network.multiplier == 0.0


def test_bidirectional_adds_the_mirrored_term(text_setup):
    objective = _objective(text_setup, bidirectional=True)
    plus, minus = objective.step(random.Random(0), torch.Generator().manual_seed(0))
    assert (plus.multiplier, minus.multiplier) == (1.0, -1.0)
    neutral = (plus.target + minus.target) / 2  # n + d and n - d average to n
    torch.testing.assert_close(plus.target - neutral, neutral - minus.target)
    assert not torch.allclose(plus.target, minus.target)


def test_fused_denoising_gives_the_same_step_up_to_rounding(text_setup):
    entry, embeddings, unet, network, factor = text_setup
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    hooked = _objective(text_setup).step(random.Random(4), torch.Generator().manual_seed(4))[0]
    fused = _objective(text_setup, fused_denoising=True).step(random.Random(4), torch.Generator().manual_seed(4))[0]
    torch.testing.assert_close(fused.latents, hooked.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.target, hooked.target, rtol=1e-4, atol=1e-4)
    # The slider does act on the denoising (the comparison is not between two no-ops).
    network.detach()
    plain = _objective(text_setup).step(random.Random(4), torch.Generator().manual_seed(4))[0]
    network.attach()
    assert (plain.latents - hooked.latents).abs().max() > 100 * (fused.latents - hooked.latents).abs().max()
    assert all(torch.equal(before[k], unet.state_dict()[k]) for k in before)
    assert network.multiplier == 0.0 and all(m.multiplier == 0.0 for m in network.loras.values())


def test_text_step_is_reproducible_from_the_seed(text_setup):
    objective = _objective(text_setup)
    a = objective.step(random.Random(5), torch.Generator().manual_seed(5))[0]
    b = objective.step(random.Random(5), torch.Generator().manual_seed(5))[0]
    assert torch.equal(a.latents, b.latents) and torch.equal(a.target, b.target)


@pytest.mark.parametrize("scheduler_name", ["ddpm", "lms", "euler_a"])
def test_every_noise_scheduler_runs_a_text_step(text_setup, scheduler_name):
    entry, embeddings, unet, network, factor = text_setup
    objective = TextObjective([entry], embeddings, unet, make_scheduler(scheduler_name), network,
                              max_denoising_steps=6, factor=factor, device=torch.device("cpu"))
    (term,) = objective.step(random.Random(1), torch.Generator().manual_seed(1))
    assert torch.isfinite(term.target).all() and torch.isfinite(term.latents).all()


def _image_folders(root, folders, size=64):
    rng = np.random.default_rng(0)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for stem in ("a", "b", "c"):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / folder / f"{stem}.png")


@pytest.fixture
def image_setup(tiny_pipe, tmp_path):
    folders = ["minus", "one", "more", "most"]
    _image_folders(tmp_path, folders)
    entry = make_entry({"target": "", "positive": "large circle", "neutral": "small circle", "resolution": 64})
    embeddings = encode_prompts([tiny_pipe.tokenizer, tiny_pipe.tokenizer_2],
                                [tiny_pipe.text_encoder, tiny_pipe.text_encoder_2], [entry.positive, entry.neutral])
    return tmp_path, folders, entry, embeddings


def _image_objective(tiny_pipe, image_setup, scales, cache=True):
    root, folders, entry, embeddings = image_setup
    pairs = scan_pairs(root, folders, scales)
    latents = LatentSource(pairs, tiny_pipe.vae, entry.resolution, cache=cache)
    latents.prepare()
    scheduler = make_scheduler("ddim")
    objective = ImageObjective(pairs, latents, entry, embeddings, scheduler, max_denoising_steps=50,
                               device=torch.device("cpu"))
    return objective, latents, scheduler


def test_image_step_shares_noise_and_timestep_and_picks_prompts_by_sign(tiny_pipe, image_setup):
    root, folders, entry, embeddings = image_setup
    objective, latents, scheduler = _image_objective(tiny_pipe, image_setup, [0.67, 1.0, 1.3, -2.0])
    rng = random.Random(7)
    terms = objective.step(rng, torch.Generator().manual_seed(7))
    assert [t.multiplier for t in terms] == [0.67, 1.0, 1.3, -2.0]  # asymmetric: every folder
    assert len({int(t.timestep) for t in terms}) == 1
    # Each target is the one shared noise; the noisy latents are that noise added to each folder's image.
    assert all(torch.equal(t.target, terms[0].target) for t in terms)
    replay = random.Random(7)
    choose_folders(objective.pairs.scales, replay)
    stem = replay.randrange(3)
    k = replay.randint(1, 49)
    scheduler.set_timesteps(50)
    noising = scheduler.timesteps[k]
    # The generator draws a fresh posterior sample of each chosen folder's image, in folder order, then the noise.
    generator = torch.Generator().manual_seed(7)
    clean = [latents.get(i, stem, generator) for i in range(4)]
    assert torch.equal(terms[0].target, torch.randn(clean[0].shape, generator=generator))
    for i, term in enumerate(terms):
        expected = scheduler.add_noise(clean[i], terms[0].target, noising.repeat(1))
        torch.testing.assert_close(term.latents, expected)
    assert int(terms[0].timestep) == int(training_timestep(make_scheduler("ddim"), k, 50))
    positive, neutral = embeddings[entry.positive][0], embeddings[entry.neutral][0]
    assert [torch.equal(t.cond.embeds[0], positive) for t in terms] == [True, True, True, False]
    assert torch.equal(terms[3].cond.embeds[0], neutral)


def test_cached_and_uncached_latents_give_the_same_loss(tiny_pipe, image_setup, unet):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1).attach()
    with torch.no_grad():
        for module in network.loras.values():
            torch.nn.init.normal_(module.lora_up.weight, std=0.05)
    losses = []
    for cache in (True, False):
        objective, _, _ = _image_objective(tiny_pipe, image_setup, [-1.0, 1.0, -2.0, 2.0], cache=cache)
        total = 0.0
        for term in objective.step(random.Random(11), torch.Generator().manual_seed(11)):
            with torch.no_grad(), network.scaled(term.multiplier):
                pred = predict_noise(unet, term.latents, term.timestep, term.cond).float()
            total += float(torch.nn.functional.mse_loss(pred, term.target))
        losses.append(total)
    assert losses[0] == losses[1]


def test_captions_condition_each_batch_element_on_its_pair(tiny_pipe, image_setup):
    root, folders, entry, _ = image_setup
    for stem, text in (("a", "a red circle"), ("b", "a blue square"), ("c", "a green triangle")):
        (root / f"{stem}.txt").write_text(text, encoding="utf-8")
    pairs = scan_pairs(root, folders[:2], [-1.0, 1.0], captions=True)
    entry = dataclasses.replace(entry, batch_size=4)
    prompts = image_prompts(pairs, entry)
    assert "a blue square, large circle" in prompts and "a green triangle, small circle" in prompts
    assert len(prompts) == 6
    embeddings = encode_prompts([tiny_pipe.tokenizer, tiny_pipe.tokenizer_2],
                                [tiny_pipe.text_encoder, tiny_pipe.text_encoder_2], prompts)
    latents = LatentSource(pairs, tiny_pipe.vae, entry.resolution)
    objective = ImageObjective(pairs, latents, entry, embeddings, make_scheduler("ddim"), max_denoising_steps=50,
                               device=torch.device("cpu"))
    rng = random.Random(3)
    low, high = objective.step(rng, torch.Generator().manual_seed(3))
    replay = random.Random(3)
    choose_folders(pairs.scales, replay)
    stems = [replay.randrange(3) for _ in range(4)]
    assert len(set(stems)) > 1  # the check below must see different captions in one batch
    for b, j in enumerate(stems):
        caption = pairs.captions[j]
        assert torch.equal(low.cond.embeds[b], embeddings[pair_prompt(caption, entry.neutral)][0])
        assert torch.equal(high.cond.pooled[b], embeddings[pair_prompt(caption, entry.positive)][1])
    assert low.multiplier == -1.0 and high.multiplier == 1.0


def test_pair_prompt_joins_present_parts():
    assert pair_prompt("a red circle", "") == "a red circle"
    assert pair_prompt(None, "large circle") == "large circle"
    assert pair_prompt("a photo of a man", "smiling") == "a photo of a man, smiling"


def test_timestep_range_draws_only_steps_inside_it_and_the_default_draws_as_before(tiny_pipe, image_setup):
    root, folders, entry, embeddings = image_setup
    pairs = scan_pairs(root, folders, [-1.0, 1.0, 2.0, 3.0])
    latents = LatentSource(pairs, tiny_pipe.vae, entry.resolution)
    latents.prepare()
    ranged = ImageObjective(pairs, latents, entry, embeddings, make_scheduler("ddim"), max_denoising_steps=50,
                            device=torch.device("cpu"), timestep_range=(200, 750))
    rng, generator = random.Random(3), torch.Generator().manual_seed(3)
    seen = {int(ranged.step(rng, generator)[0].timestep) for _ in range(40)}
    assert seen and all(200 <= t <= 750 for t in seen)
    assert len(seen) > 5  # spread over the range, not one step
    # Without a range, the step is drawn exactly as before (the faithful draw: k uniform in 1..49).
    plain, _, _ = _image_objective(tiny_pipe, image_setup, [-1.0, 1.0, 2.0, 3.0])
    rng = random.Random(5)
    term = plain.step(rng, torch.Generator().manual_seed(5))[0]
    replay = random.Random(5)
    choose_folders(plain.pairs.scales, replay)
    replay.randrange(3)
    assert int(term.timestep) == int(training_timestep(make_scheduler("ddim"), replay.randint(1, 49), 50))


@pytest.mark.parametrize("bounds", [[750, 200], [0, 1000], [-1, 5], [1, 2, 3], ["a", 5]])
def test_bad_timestep_range_is_one_line(bounds, tmp_path):
    from sliders.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  timestep_range: {bounds!r}\n".replace("'", ""))
    with pytest.raises(InputError, match="timestep_range"):
        load_config(str(path), {})


def test_pair_difference_adds_the_term_on_prediction_differences_and_zero_weight_is_the_paper(tiny_pipe, image_setup):
    from sliders.families import SDXL
    from sliders.trainer import _train_step

    objective, _, _ = _image_objective(tiny_pipe, image_setup, [0.67, 1.0, 1.3, 2.0])
    terms = objective.step(random.Random(2), torch.Generator().manual_seed(2))
    unet = tiny_pipe.unet
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    network.attach()
    try:
        def grads(weight):
            network.zero_grad(set_to_none=True)
            loss = _train_step(unet, network, terms, SDXL, weight)
            return loss, torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])

        plain_loss, plain_grad = grads(0.0)
        heavy_loss, heavy_grad = grads(3.0)
        # By hand: the faithful losses plus 3 x the mean over the 6 folder pairs of the prediction differences' MSE
        # (the targets are one shared noise, so their differences are 0).
        with torch.no_grad():
            predictions = []
            for term in terms:
                with network.scaled(term.multiplier):
                    predictions.append(SDXL.predict(unet, term.latents, term.timestep, term.cond).float())
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        extra = sum(torch.mean((predictions[i] - predictions[j]) ** 2) for i, j in pairs) / len(pairs)
        assert heavy_loss == pytest.approx(plain_loss + 3.0 * float(extra), rel=1e-5)
        assert float(extra) > 0
        assert not torch.allclose(plain_grad, heavy_grad)
    finally:
        network.detach()


def test_bad_pair_difference_is_one_line(tmp_path):
    from sliders.config import load_config

    with pytest.raises(InputError, match="pair_difference"):
        load_config(None, {"train.pair_difference": 101.0})
    with pytest.raises(InputError, match="pair_difference"):
        load_config(None, {"train.pair_difference": -1.0})
