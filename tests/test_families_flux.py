"""FLUX.1: the flow-matching transformer family on `builtin:tiny-flux` (a FLUX.1-dev-shaped random pipeline).

Detection from the model's files, the slider's layers on the transformer, a text and an image slider
trained for two iterations through the CLI, sampling with the start_noise switch, the file loading in
diffusers' own FluxPipeline with the same outputs as our hooks, kohya's fused FLUX naming read back
exactly, the velocity target formulas, and bad input as one line.
"""


import numpy as np
import pytest
import torch
from PIL import Image

from sliders.cli import sample_main, train_main
from sliders.families import FLUX, SD1, detect_family, family_of_slider, family_of_source
from sliders.network import SliderNetwork, load_slider, read_slider_file

MODEL = "builtin:tiny-flux"


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def pipe(sliders_home):
    from sliders.models import load_pipeline

    return load_pipeline(MODEL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sliders_home):
    """(text slider, image slider), each trained for two iterations through the CLI."""
    from conftest import train_family_sliders, write_image_folders

    folder = tmp_path_factory.mktemp("flux")
    images = write_image_folders(folder / "pairs", ("low", "high"))
    return train_family_sliders(folder, MODEL, images, folders="low,high", scales="-1,1",
                                network="  training_method: full\n", train="  flow_steps: 4\n")


def test_flux_is_detected_from_its_files(sliders_home):
    from sliders.models import resolve_model

    assert family_of_source(resolve_model(MODEL)) is FLUX
    assert family_of_source("someone/model", family="flux") is FLUX
    config = {"joint_attention_dim": 4096, "num_single_layers": 38, "guidance_embeds": True}
    assert detect_family(config) is FLUX
    assert detect_family({}, "FluxPipeline") is FLUX
    assert detect_family({"cross_attention_dim": 768}) is SD1  # a UNet is still a UNet
    assert FLUX.claims_checkpoint(["double_blocks.0.img_attn.qkv.weight"])
    assert family_of_slider({"ss_base_model_version": "flux1"}) is FLUX


def test_training_methods_select_the_documented_layers(pipe):
    model = pipe.transformer
    full = {name for name, _ in FLUX.target_modules(model, "c3lier", "full")}
    assert "transformer_blocks.0.attn.add_q_proj" in full and "single_transformer_blocks.1.proj_mlp" in full
    assert "transformer_blocks.1.ff_context.net.2" in full
    lierla = {name for name, _ in FLUX.target_modules(model, "lierla", "full")}
    assert not any("ff" in n or "proj_mlp" in n for n in lierla)
    # 2 double blocks x (4 image + 4 text) + 2 single blocks x 3 attention projections
    assert len(lierla) == 2 * 8 + 2 * 3
    noxattn = {name for name, _ in FLUX.target_modules(model, "c3lier", "noxattn")}
    assert not any("add_" in n or "ff_context" in n for n in noxattn) and "transformer_blocks.0.attn.to_q" in noxattn
    xattn = {name for name, _ in FLUX.target_modules(model, "lierla", "xattn")}
    assert "transformer_blocks.0.attn.add_k_proj" in xattn and "transformer_blocks.0.attn.to_q" not in xattn


def test_flux_prediction_is_the_transformer_velocity_of_the_pipeline(pipe):
    """`FLUX.predict` on unpacked latents equals the transformer called as FluxPipeline calls it."""
    from sliders.families.flux import image_ids, pack, unpack
    from sliders.models import Conditioning

    torch.manual_seed(0)
    latents = torch.randn(1, 16, 8, 8)
    assert torch.equal(unpack(pack(latents), 8, 8), latents)
    embeds, pooled, text_ids = pipe.encode_prompt("a circle", None, max_sequence_length=32)
    ours = FLUX.predict(pipe.transformer, latents, torch.tensor(600.0), Conditioning(embeds, pooled), 3.5)
    packed = pipe._pack_latents(latents, 1, 16, 8, 8)
    theirs = pipe.transformer(hidden_states=packed, timestep=torch.tensor([0.6]), guidance=torch.tensor([3.5]),
                              pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                              img_ids=pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)).sample
    assert torch.allclose(pack(ours), theirs, atol=1e-5)
    assert torch.equal(image_ids(8, 8, "cpu", torch.float32), pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32))


def test_flow_target_formula():
    from sliders.objectives import flow_target

    base, pos, neg = torch.ones(1, 2), torch.full((1, 2), 3.0), torch.full((1, 2), 2.0)
    assert torch.equal(flow_target(base, pos, neg, 1, 2.0), torch.full((1, 2), 3.0))
    assert torch.equal(flow_target(base, pos, neg, -1, 2.0), torch.full((1, 2), -1.0))
    scaled = flow_target(base, pos, neg, 1, 2.0, rescale=True)
    assert torch.allclose(scaled.norm(), pos.norm())


def test_text_and_image_sliders_train_and_record_flux(trained):
    text, image = trained
    for path in (text, image):
        tensors, meta = read_slider_file(path)
        assert meta["sliders_family"] == "flux" and meta["ss_base_model_version"] == "flux1"
        assert meta["sliders_prediction_type"] == "flow_matching"
        assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv.") for k in tensors)
    tensors, _ = read_slider_file(text)
    # q, k, v stacked in kohya's fused layer: 3 x rank 2 down rows, a block-diagonal up
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 6
    assert tensors["lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight"].shape[0] == 6


def test_kohya_flux_naming_round_trips_exactly(pipe, tmp_path):
    model = pipe.transformer
    torch.manual_seed(1)
    network = SliderNetwork.create(model, network_type="c3lier", training_method="full", rank=2, alpha=1.0)
    for module in network.loras.values():
        torch.nn.init.normal_(module.lora_up.weight)
    outputs = {}
    for key_format in ("kohya", "peft", "diffusers"):
        path = network.save(tmp_path / f"{key_format}.safetensors", key_format=key_format)
        loaded = load_slider(path, model, attach=False)
        assert set(loaded.loras) == set(network.loras)
        for key, module in network.loras.items():
            network.multiplier = loaded.multiplier = 1.0
            assert torch.allclose(loaded.loras[key].weight_delta(), module.weight_delta(), atol=1e-6), (key_format, key)
        outputs[key_format] = loaded
    kohya, _ = read_slider_file(tmp_path / "kohya.safetensors")
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in kohya  # q, k, v, mlp stacked
    assert not any("transformer_blocks" in k for k in kohya)
    # Without our record of the stacked parts (a file from another tool), the parts are read from the
    # block-diagonal up weights; the same layers and deltas come back.
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file(kohya, str(bare))
    loaded = load_slider(bare, model, attach=False)
    loaded.multiplier = network.multiplier = 1.0
    assert set(loaded.loras) == set(network.loras)
    for key, module in network.loras.items():
        assert torch.allclose(loaded.loras[key].weight_delta(), module.weight_delta(), atol=1e-6), key


def test_peft_file_loads_in_diffusers_fluxpipeline_equal_to_our_hooks(pipe, trained, tmp_path):
    text, _ = trained
    network = load_slider(text, pipe.transformer, attach=False)
    path = network.save(tmp_path / "peft.safetensors", key_format="peft")
    kwargs = dict(prompt="a circle", height=64, width=64, num_inference_steps=3, max_sequence_length=32,
                  output_type="latent")
    with torch.no_grad():
        network.attach()
        with network.scaled(1.0):
            ours = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        network.detach()
        base = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        pipe.load_lora_weights(str(path), adapter_name="slider")
        try:
            theirs = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        finally:
            pipe.unload_lora_weights()
    assert not torch.allclose(ours, base, atol=1e-4)  # the slider changes the image
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_sample_runs_with_the_start_noise_switch(trained, tmp_path):
    """sliders-sample on FLUX: the slider changes the image; with start_noise 0 it is never switched on
    (every flow timestep is above 0), so every scale gives the base model's image."""
    text, _ = trained

    def images(start_noise):
        out = tmp_path / f"s{start_noise}"
        assert sample_main(["--slider", str(text), "--scales=-2,2", "--steps", "3", "--prompt", "circle",
                            "--start_noise", str(start_noise), "--output", str(out), "--device", "cpu"]) == 0
        pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
        assert len(pngs) == 2 and (out / "grid.png").is_file()
        return [np.asarray(Image.open(p)).astype(int) for p in pngs]

    low, high = images(1000)
    assert np.abs(low - high).max() > 0
    low, high = images(0)
    assert np.array_equal(low, high)


def test_bad_flux_input_is_one_line(trained, capsys, tmp_path):
    text, _ = trained
    prompts = tmp_path / "p.yaml"
    prompts.write_text('- target: "circle"\n  positive: "large circle"\n  resolution: 64\n', encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{MODEL}"\n'
                      "network:\n  training_method: noxattn-hspace\ntrain:\n  iterations: 2\n"
                      f'save:\n  path: "{tmp_path}"\n', encoding="utf-8")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    assert "no FLUX counterpart" in _error_line(capsys)
    config.write_text(f'prompts_file: "{prompts}"\npretrained_model:\n  name_or_path: "{MODEL}"\n'
                      f'train:\n  flow_steps: 1\nsave:\n  path: "{tmp_path}"\n', encoding="utf-8")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    assert "train.flow_steps" in _error_line(capsys)
    # a FLUX slider on an SDXL base model
    assert sample_main(["--slider", str(text), "--pretrained_model", "builtin:tiny-sdxl", "--prompt", "x",
                        "--device", "cpu", "--output", str(tmp_path / "s")]) == 2
    assert "flux" in _error_line(capsys)


def test_text_objective_targets_are_made_at_the_noise_level_of_x_t(pipe):
    """The frozen predictions and the slider's input share x_t's own timestep (sigma_k * 1000 of the shifted
    pipeline schedule), and the target is `base + eta * (positive - negative)` at it."""
    import random

    from sliders.families.flux import set_flow_schedule
    from sliders.objectives import FlowTextObjective, flow_target
    from sliders.prompts import PromptEntry

    entry = PromptEntry(target="circle", positive="large circle", unconditional="small circle", neutral="",
                        guidance_scale=2.0, resolution=64)
    embeddings = FLUX.encode_prompts(*FLUX.text_encoders(pipe), list(entry.roles()))
    network = SliderNetwork.create(pipe.transformer, network_type="lierla", training_method="full", rank=2,
                                   alpha=1.0).attach()
    try:
        objective = FlowTextObjective([entry], embeddings, pipe.transformer, pipe.scheduler, network, FLUX, steps=6,
                                      factor=8, device=torch.device("cpu"), guidance=3.5)
        (term,) = objective.step(random.Random(0), torch.Generator().manual_seed(0))
        set_flow_schedule(pipe.scheduler, 6, 8, 8, "cpu")
        k = int((pipe.scheduler.timesteps == term.timestep).nonzero())
        assert 0 < k < 6 and pipe.scheduler.timesteps[k] == pipe.scheduler.sigmas[k] * 1000
        from sliders.models import conditioning

        predict = [FLUX.predict(pipe.transformer, term.latents, term.timestep,
                                conditioning(embeddings, text, None, 1), 3.5).float()
                   for text in ("circle", "large circle", "small circle")]
        assert torch.allclose(term.target, flow_target(*predict, entry.sign, 2.0), atol=1e-5)
    finally:
        network.detach()
