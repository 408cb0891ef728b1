"""Slider files of every tool: each naming is read back to the same UNet output, and what we write
maps completely in diffusers, ComfyUI and AUTOMATIC1111's rules (shown on a full-size SDXL UNet on
the meta device, no weights)."""

import copy
import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from sliders.cli import convert_main
from sliders.errors import InputError
from sliders.export import meta_unet
from sliders.formats import SDXL_BASE_UNET_CONFIG, NameMap, unet_config
from sliders.models import Conditioning, predict_noise, time_ids
from sliders.network import SliderNetwork, load_slider, read_slider_file, select_targets


def _inputs(unet, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, unet.config.in_channels, size, size, generator=g)
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    cond = Conditioning(
        torch.randn(1, 7, unet.config.cross_attention_dim, generator=g),
        torch.randn(1, pooled_dim, generator=g),
        time_ids(size * 2, size * 2),
    )
    return latents, torch.tensor(500), cond


def _out(unet, inputs):
    with torch.no_grad():
        return predict_noise(unet, *inputs)


def _slider(unet, rank=3, alpha=1.5, method="full", seed=1):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method=method, rank=rank, alpha=alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g) * 0.1)
    return network


def _with(network, unet, inputs, multiplier=1.0):
    network.attach()
    with network.scaled(multiplier):
        out = _out(unet, inputs)
    network.detach()
    return out


# ---------------------------------------------------------------- full-size SDXL, names only


def _a1111_compvis_name(name):
    """AUTOMATIC1111 v1.10's diffusers-to-LDM rule for UNet names (extensions-builtin/Lora,
    convert_diffusers_name_to_compvis), restated: written for SD 1.x's block layout."""
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_input_blocks_{1 + i * 3 + j}_{1 if kind == 'attentions' else 0}_{rest}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else j * 2}_{rest}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_output_blocks_{i * 3 + j}_{1 if kind == 'attentions' else 0}_{rest}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name)
    if m:
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name)
    if m:
        i = int(m[1])
        return f"diffusion_model_output_blocks_{2 + i * 3}_{2 if i > 0 else 1}_conv"
    return name


def _a1111_lookup(name, layer_names):
    """What AUTOMATIC1111 does with one key's layer name: its conversion, then the SDXL fallback
    that swaps lora_unet for diffusion_model; None where the layer is dropped."""
    converted = _a1111_compvis_name(name)
    if converted in layer_names:
        return converted
    fallback = name.replace("lora_unet", "diffusion_model")
    return fallback if fallback in layer_names else None


@pytest.fixture(scope="module")
def sdxl():
    """The SDXL base UNet on the meta device and its LDM module names."""
    return ldm_modules(SDXL_BASE_UNET_CONFIG)


def ldm_modules(config):
    """A full-size UNet of this config on the meta device and its LDM module names (the checkpoint's
    `diffusion_model.*`), checked against diffusers' own LDM -> diffusers converter for every weight."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = meta_unet(config)
    dotted = NameMap(unet_config(unet), ".")
    ldm_state = {}
    for key, tensor in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        ldm_state[f"model.diffusion_model.{dotted.to_ldm(module)}.{leaf}"] = tensor
    # diffusers maps every one of our LDM names back to the right diffusers weight.
    assert set(convert_ldm_unet_checkpoint(ldm_state, unet_config(unet))) == set(unet.state_dict())
    return unet, {k[len("model."):].rpartition(".")[0] for k in ldm_state}


def test_default_kohya_file_of_full_sdxl_maps_completely_in_a1111_and_comfyui(sdxl):
    unet, ldm_modules = sdxl
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=4, alpha=1)
    # A1111's layer names: the checkpoint model's modules, "." -> "_" (diffusion_model_...).
    a1111_layers = {name.replace(".", "_") for name in ldm_modules}
    # ComfyUI's: "lora_unet_" + each diffusion_model.* weight key without ".weight", "." -> "_".
    comfyui_keys = {"lora_unet_" + name[len("diffusion_model."):].replace(".", "_") for name in ldm_modules}
    kohya = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
             for key in network.state_dict_for("kohya")}
    assert len(kohya) == len(network.loras) == 626
    mapped = {name: _a1111_lookup(name, a1111_layers) for name in sorted(kohya)}
    assert all(mapped.values()), [n for n, m in mapped.items() if m is None]
    assert all(target == name.replace("lora_unet", "diffusion_model") for name, target in mapped.items())
    assert kohya <= comfyui_keys
    assert mapped["lora_unet_output_blocks_2_2_conv"] == "diffusion_model_output_blocks_2_2_conv"
    assert mapped["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == (
        "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
    # The diffusers-path naming loses exactly SDXL's first upsampler in A1111 (sent to 2_1, a transformer).
    diffusers_names = {key.rsplit(".", 2)[0] for key in network.state_dict_for("diffusers") if key.endswith("down.weight")}
    lost = [name for name in diffusers_names if _a1111_lookup(name, a1111_layers) is None]
    assert lost == ["lora_unet_up_blocks_0_upsamplers_0_conv"]


def test_sdxl_kohya_names_read_back_to_the_same_layers(sdxl, tmp_path):
    unet, _ = sdxl
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1)
    path = network.save(tmp_path / "sdxl.safetensors")
    assert read_slider_file(path)[1]["sliders_key_format"] == "kohya"
    loaded = load_slider(path, unet, attach=False)
    assert set(loaded.loras) == set(network.loras)


# ---------------------------------------------------------------- every format on the tiny UNet


@pytest.mark.parametrize("key_format", ["kohya", "diffusers", "peft"])
def test_every_written_format_reads_back_to_the_same_output(unet, tmp_path, key_format):
    inputs = _inputs(unet)
    network = _slider(unet)
    expected = _with(network, unet, inputs, 1.5)
    path = network.save(tmp_path / f"{key_format}.safetensors", key_format=key_format)
    keys = set(load_file(str(path)))
    prefix = {"kohya": "lora_unet_input_blocks_", "diffusers": "lora_unet_down_blocks_", "peft": "unet.down_blocks."}
    assert any(k.startswith(prefix[key_format]) for k in keys)
    assert all(not k.startswith("lora_unet_down_blocks_") for k in keys) or key_format == "diffusers"
    loaded = load_slider(path, unet)
    with loaded.scaled(1.5):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-5, atol=1e-6)


def _peft_unet(unet, rank, alpha, targets=("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in")):
    from peft import LoraConfig

    wrapped = copy.deepcopy(unet)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=list(targets))
    torch.manual_seed(3)
    wrapped.add_adapter(config)
    return wrapped, config


@pytest.mark.parametrize("alpha", [4, 8])
def test_diffusers_save_lora_weights_file_loads(unet, tmp_path, alpha):
    """diffusers' own PEFT writer (save_lora_weights of a PEFT-wrapped UNet), with and without alpha."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    inputs = _inputs(unet)
    wrapped, config = _peft_unet(unet, 4, alpha)
    expected = _out(wrapped, inputs)
    assert not torch.allclose(expected, _out(unet, inputs))
    metadata = config.to_dict() if alpha != 4 else None
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(wrapped), unet_lora_adapter_metadata=metadata
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert all(k.startswith("unet.") and ".lora_" in k for k in load_file(str(path)))
    loaded = load_slider(path, unet)
    with loaded.scaled(1.0):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-4, atol=1e-5)


def test_diffusers_training_script_file_loads(unet, tmp_path):
    """The older training scripts' naming: convert_state_dict_to_diffusers -> '.lora.down.weight'."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    inputs = _inputs(unet)
    # Those scripts trained the attention projections.
    wrapped, _ = _peft_unet(unet, 2, 2, targets=("to_q", "to_k", "to_v", "to_out.0"))
    expected = _out(wrapped, inputs)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(wrapped))
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in load_file(str(path)))
    loaded = load_slider(path, unet)
    with loaded.scaled(1.0):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key_format", ["kohya", "peft"])
def test_diffusers_load_lora_weights_reads_what_we_write(tiny_model_dir, tmp_path, key_format):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_model_dir))
    inputs = _inputs(pipe.unet)
    network = _slider(pipe.unet, method="noxattn")
    ours = _with(network, pipe.unet, inputs)
    path = network.save(tmp_path / "slider.safetensors", key_format=key_format)
    # kohya naming goes through diffusers' own SGM-to-diffusers conversion here.
    pipe.load_lora_weights(str(path), adapter_name="slider")
    assert sum(k.endswith("lora_A.slider.weight") for k in pipe.unet.state_dict()) == len(network.loras)
    pipe.set_adapters(["slider"], adapter_weights=[1.0])
    torch.testing.assert_close(_out(pipe.unet, inputs), ours, rtol=1e-4, atol=1e-5)


def _official_state_dict(unet, seed=5):
    """A state dict as the official Concept Sliders code saves it (trainscripts/textsliders/lora.py,
    LoRANetwork.save_weights with a .pt name): torch.save(network.state_dict()), each module named
    'lora_unet' + '.' + block + '.' + child with dots made underscores, holding lora_down.weight,
    lora_up.weight and an alpha buffer made by torch.tensor(alpha)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for dotted, module in select_targets(unet, "c3lier", "noxattn"):
        name = "lora_unet_" + dotted.replace(".", "_")
        if isinstance(module, torch.nn.Conv2d):
            rank = min(4, module.in_channels, module.out_channels)
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=g) * 0.1
            up = torch.randn(module.out_channels, rank, 1, 1, generator=g) * 0.1
        else:
            down = torch.randn(4, module.in_features, generator=g) * 0.1
            up = torch.randn(module.out_features, 4, generator=g) * 0.1
        state[f"{name}.lora_down.weight"] = down
        state[f"{name}.lora_up.weight"] = up
        state[f"{name}.alpha"] = torch.tensor(1.0)
    # A config with `alpha: 1` (an int) gives an integer alpha buffer.
    first = next(iter(state)).rsplit(".", 2)[0]
    state[f"{first}.alpha"] = torch.tensor(1)
    return state


def _reference_output(unet, state, inputs, multiplier):
    reference = copy.deepcopy(unet)
    network = SliderNetwork.create(reference, network_type="c3lier", training_method="noxattn", rank=4, alpha=1)
    with torch.no_grad():
        for key, module in network.loras.items():
            module.lora_down.weight.copy_(state[f"{key}.lora_down.weight"])
            module.lora_up.weight.copy_(state[f"{key}.lora_up.weight"])
    return _with(network, reference, inputs, multiplier)


def test_official_pt_slider_loads_and_converts(unet, tiny_model_dir, tmp_path):
    inputs = _inputs(unet)
    state = _official_state_dict(unet)
    path = tmp_path / "age_official_last.pt"
    torch.save(state, path)
    expected = _reference_output(unet, state, inputs, 2.0)
    loaded = load_slider(path, unet)
    assert loaded.alpha == 1.0 and {m.rank for m in loaded.loras.values()} == {4}
    with loaded.scaled(2.0):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-5, atol=1e-6)
    loaded.detach()
    # sliders-convert makes it a safetensors file (kohya naming) that loads the same.
    out = tmp_path / "age.safetensors"
    assert convert_main([str(path), str(out), "--pretrained_model", str(tiny_model_dir)]) == 0
    assert read_slider_file(out)[1]["sliders_key_format"] == "kohya"
    converted = load_slider(out, unet)
    with converted.scaled(2.0):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-5, atol=1e-6)


_RAN = []


def _would_run_code():
    _RAN.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return (_would_run_code, ())


def test_pt_with_code_is_refused_without_running_it(unet, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.alpha": _Payload()}, path)
    with pytest.raises(InputError, match="weights_only"):
        load_slider(path, unet)
    assert _RAN == []


def test_ai_toolkit_file_with_text_encoder_keys_loads_with_a_warning(unet, tmp_path, caplog):
    inputs = _inputs(unet)
    network = _slider(unet, method="noxattn")
    expected = _with(network, unet, inputs)
    tensors = network.state_dict_for("diffusers")
    tensors.update({
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 8),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(8, 2),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 8),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 2),
    })
    path = tmp_path / "ai_toolkit.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_dim": "3"})
    with caplog.at_level(logging.WARNING, logger="sliders"):
        loaded = load_slider(path, unet)
    assert any("2 text-encoder LoRA layer(s)" in r.message and "not applied" in r.message for r in caplog.records)
    with loaded.scaled(1.0):
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-5, atol=1e-6)


def test_recognised_naming_that_does_not_fit_says_naming_and_layer(unet, tmp_path):
    foreign = tmp_path / "sdxl_kohya.safetensors"
    save_file({"lora_unet_input_blocks_8_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_input_blocks_8_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(4, 2)},
              str(foreign))
    with pytest.raises(InputError, match=r"kohya SDXL naming.*input_blocks_8_1_transformer_blocks_0_attn1_to_q.*lacks"):
        load_slider(foreign, unet)
    name, module = select_targets(unet, "lierla", "full")[0]
    misfit = tmp_path / "peft.safetensors"
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(2, module.in_features + 1),
               f"unet.{name}.lora_B.weight": torch.zeros(module.out_features, 2)}, str(misfit))
    with pytest.raises(InputError, match=rf"PEFT naming.*'unet\.{re.escape(name)}' has weights of shape"):
        load_slider(misfit, unet)


def test_convert_between_every_format(unet, tmp_path, capsys):
    inputs = _inputs(unet)
    network = _slider(unet)
    expected = _with(network, unet, inputs, -1.0)
    source = network.save(tmp_path / "src.safetensors", {"sliders_config": json.dumps({"a": 1})})
    previous = source
    for key_format in ("diffusers", "peft", "kohya"):
        out = tmp_path / f"to_{key_format}.safetensors"
        # The tiny UNet's layout comes from the config recorded in the file: no base model needed.
        assert convert_main([str(previous), str(out), "--to", key_format]) == 0
        tensors, metadata = read_slider_file(out)
        assert metadata["sliders_key_format"] == key_format and json.loads(metadata["sliders_config"]) == {"a": 1}
        loaded = load_slider(out, unet)
        with loaded.scaled(-1.0):
            torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-5, atol=1e-6)
        loaded.detach()
        previous = out
    assert set(load_file(str(previous))) == set(load_file(str(source)))
    assert convert_main([str(source), str(tmp_path / "x.safetensors"), "--to", "lycoris"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert convert_main([str(source), str(tmp_path / "x.pt")]) == 2


def test_save_key_format_decides_how_training_names_the_layers(tmp_path):
    """save.key_format reaches the file training writes; an unknown one is refused with the config."""
    import yaml

    from sliders.cli import train_main
    from sliders.config import load_config
    from sliders.network import read_slider_file

    from conftest import cli_text_config

    config = cli_text_config(tmp_path, iterations=1, max_denoising_steps=2)
    for key_format, (present, absent) in (("kohya", ("_input_blocks_", "_down_blocks_")),
                                          ("diffusers", ("_down_blocks_", "_input_blocks_"))):
        config["save"].update(key_format=key_format, name=key_format)
        path = tmp_path / f"{key_format}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert train_main(["--config", str(path), "--device", "cpu"]) == 0
        tensors, metadata = read_slider_file(tmp_path / "models" / f"{key_format}_alpha1.0_rank2_noxattn" / f"{key_format}_last.safetensors")
        assert any(present in key for key in tensors) and not any(absent in key for key in tensors)
        assert metadata["sliders_key_format"] == key_format
    with pytest.raises(InputError, match="save.key_format"):
        load_config(None, {"save.key_format": "comfy"})
