"""The slider network: no-op when fresh, linear in the multiplier, clean removal, target sets, files."""

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sliders.config import TRAINING_METHODS
from sliders.errors import InputError
from sliders.models import Conditioning, predict_noise, time_ids
from sliders.network import SliderNetwork, load_slider, read_slider_file, select_targets


def _inputs(unet, batch=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    dim = unet.config.cross_attention_dim
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    cond = Conditioning(
        torch.randn(batch, 7, dim, generator=g),
        torch.randn(batch, pooled_dim, generator=g),
        time_ids(size * 2, size * 2).expand(batch, -1),
    )
    return latents, torch.tensor(500), cond


def _randomise(network, std=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.loras.values():
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g) * std)


def _out(unet, inputs):
    with torch.no_grad():
        return predict_noise(unet, *inputs)


def test_fresh_slider_is_a_no_op_at_every_multiplier(unet):
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=4, alpha=1).attach()
    for m in (-3.0, 1.0, 5.0):
        with network.scaled(m):
            assert torch.equal(_out(unet, inputs), base)


def test_delta_is_linear_in_the_multiplier_and_zero_is_exact(unet):
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    network = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=4, alpha=4).attach()
    _randomise(network, std=0.01)
    # A single LoRA layer's delta is exactly linear; check that directly on one layer...
    module = next(iter(network.loras.values()))
    x = torch.randn(2, module.lora_down.in_features)
    module.multiplier = 1.0
    one = module.hook(None, (x,), torch.zeros(2, module.lora_up.out_features))
    module.multiplier = -2.5
    minus = module.hook(None, (x,), torch.zeros(2, module.lora_up.out_features))
    torch.testing.assert_close(minus, -2.5 * one)
    network.multiplier = 0.0
    # ...and through the whole UNet (in float64, to see past rounding) the change is linear to first
    # order in small multipliers.
    unet.double()
    network.double()
    inputs = (inputs[0].double(), inputs[1], inputs[2].to("cpu", torch.float64))
    base = _out(unet, inputs)
    with network.scaled(0.0):
        assert torch.equal(_out(unet, inputs), base)
    with network.scaled(1e-4):
        d1 = _out(unet, inputs) - base
    with network.scaled(-2e-4):
        d2 = _out(unet, inputs) - base
    assert d1.abs().max() > 1e-9
    torch.testing.assert_close(d2, -2 * d1, rtol=1e-3, atol=1e-3 * float(d1.abs().max()))


def test_scaled_restores_the_previous_multiplier(unet):
    network = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=2, alpha=1)
    network.multiplier = 0.5
    with network.scaled(2.0):
        assert network.multiplier == 2.0
        assert all(m.multiplier == 2.0 for m in network.loras.values())
    assert network.multiplier == 0.5
    with pytest.raises(RuntimeError):
        with network.scaled(-1.0):
            raise RuntimeError("boom")
    assert network.multiplier == 0.5


def test_detach_restores_the_unet_bit_for_bit(unet):
    inputs = _inputs(unet)
    before_state = {k: v.clone() for k, v in unet.state_dict().items()}
    base = _out(unet, inputs)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=4, alpha=1).attach()
    _randomise(network)
    network.multiplier = 1.0
    assert not torch.equal(_out(unet, inputs), base)
    network.detach()
    assert torch.equal(_out(unet, inputs), base)
    after_state = unet.state_dict()
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)


def test_fused_matches_the_hooks_and_restores_the_weights_bit_for_bit(unet):
    inputs = _inputs(unet)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=4, alpha=1).attach()
    _randomise(network, std=0.05)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    base = _out(unet, inputs)
    network.multiplier = -1.5
    hooked = _out(unet, inputs)
    assert not torch.allclose(hooked, base)
    with network.fused():
        assert network.multiplier == -1.5
        assert all(module.multiplier == 0.0 for module in network.loras.values())  # no double counting
        changed = [k for k in before if not torch.equal(before[k], unet.state_dict()[k])]
        assert len(changed) == len(network.loras)  # exactly the adapted layers' weights
        fused = _out(unet, inputs)
    torch.testing.assert_close(fused, hooked, rtol=1e-4, atol=1e-5)
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_out(unet, inputs), hooked)  # the hooks are back, at the same multiplier
    with pytest.raises(RuntimeError):
        with network.fused():
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], unet.state_dict()[k]) for k in before)
    assert torch.equal(_out(unet, inputs), hooked)


def test_fused_leaves_the_grad_mode_as_it_finds_it(unet):
    network = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=2, alpha=1).attach()
    _randomise(network)
    network.multiplier = 1.0
    stack = contextlib.ExitStack()
    with torch.no_grad():  # entered where gradients are off, as inside a pipeline call...
        stack.enter_context(network.fused())
    stack.close()  # ...and left where they are on
    assert torch.is_grad_enabled()
    with network.fused():
        assert torch.is_grad_enabled()


def test_fused_at_multiplier_zero_or_detached_changes_nothing(unet):
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=2, alpha=1)
    _randomise(network)
    with network.scaled(2.0), network.fused():  # not attached: no hooks, no fold
        assert torch.equal(_out(unet, inputs), base)
    network.attach()
    with network.fused():  # multiplier 0
        assert torch.equal(_out(unet, inputs), base)


def test_two_fused_sliders_add_like_two_hooked_ones(unet):
    inputs = _inputs(unet)
    a = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=2, alpha=1).attach()
    b = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=2, alpha=1).attach()
    _randomise(a, std=0.05, seed=1)
    _randomise(b, std=0.05, seed=2)
    a.multiplier, b.multiplier = 1.5, -2.0
    hooked = _out(unet, inputs)
    with a.fused(), b.fused():
        fused = _out(unet, inputs)
    torch.testing.assert_close(fused, hooked, rtol=1e-4, atol=1e-5)
    assert torch.equal(_out(unet, inputs), hooked)


def _names(unet, network_type, method):
    return [name for name, _ in select_targets(unet, network_type, method)]


def test_target_sets_follow_the_spec(unet):
    lierla = _names(unet, "lierla", "full")
    c3lier = _names(unet, "c3lier", "full")
    assert lierla and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in lierla)
    extra = set(c3lier) - set(lierla)
    assert set(lierla) <= set(c3lier)
    assert {n.rsplit(".", 1)[-1] for n in extra} == {"conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv"}
    assert any("downsamplers" in n for n in extra) and any("upsamplers" in n for n in extra)
    noxattn = _names(unet, "c3lier", "noxattn")
    assert noxattn and not any("attn2" in n for n in noxattn)
    assert any("attn1" in n for n in noxattn) and any("resnets" in n for n in noxattn)
    assert not any("attn2" in n for n in _names(unet, "c3lier", "innoxattn"))
    assert all("attn1" in n for n in _names(unet, "c3lier", "selfattn"))
    assert all("attn2" in n for n in _names(unet, "c3lier", "xattn"))
    strict = _names(unet, "c3lier", "xattn-strict")
    assert strict and all("attn2" in n and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") for n in strict)
    assert all(n.startswith("mid_block") for n in _names(unet, "c3lier", "noxattn-hspace"))
    last = len(unet.mid_block.resnets) - 1
    assert _names(unet, "c3lier", "noxattn-hspace-last") == [f"mid_block.resnets.{last}.conv2"]


# The official rules, restated on the dotted name of the attention/resnet/sampler block and the layer
# name inside it, so the expected sets below do not come from the code under test.
def _noxattn(block, layer):
    return "attn2" not in block and "time_embed" not in block


METHOD_RULES = {
    "full": lambda block, layer: True,
    "noxattn": _noxattn,
    "innoxattn": lambda block, layer: "attn2" not in block,
    "selfattn": lambda block, layer: "attn1" in block,
    "xattn": lambda block, layer: "attn2" in block,
    "xattn-strict": lambda block, layer: "attn2" in block and layer in ("to_q", "to_k", "to_v"),
    "noxattn-hspace": lambda block, layer: _noxattn(block, layer) and "mid_block" in block,
}


def _expected_layers(unet, network_type, method):
    """Every Linear/Conv2d inside an Attention (plus, for c3lier, a resnet or sampler) block that the
    method's rule keeps."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    kinds = (Attention,) if network_type == "lierla" else (Attention, ResnetBlock2D, Downsample2D, Upsample2D)
    last_mid = f"mid_block.resnets.{len(unet.mid_block.resnets) - 1}"
    expected = []
    for block_name, block in unet.named_modules():
        if not isinstance(block, kinds):
            continue
        for layer, module in block.named_modules():
            if not layer or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if method == "noxattn-hspace-last":
                keep = block_name == last_mid and layer == "conv2"
            else:
                keep = METHOD_RULES[method](block_name, layer)
            if keep:
                expected.append(f"{block_name}.{layer}")
    return expected


def test_every_training_method_has_a_rule(unet):
    assert set(TRAINING_METHODS) == set(METHOD_RULES) | {"noxattn-hspace-last"}
    # Every method selects something on a c3lier network of the tiny model, so the comparisons below
    # are never between two empty sets.
    assert all(_expected_layers(unet, "c3lier", method) for method in TRAINING_METHODS)


@pytest.mark.parametrize("network_type", ["lierla", "c3lier"])
@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_training_method_selects_the_official_layer_set(unet, method, network_type):
    expected = _expected_layers(unet, network_type, method)
    if not expected:
        with pytest.raises(InputError, match="selects no layer"):
            select_targets(unet, network_type, method)
        return
    names = _names(unet, network_type, method)
    assert len(names) == len(set(names))
    assert set(names) == set(expected)


def test_noxattn_hspace_drops_the_mid_block_cross_attention(unet):
    names = _names(unet, "c3lier", "noxattn-hspace")
    assert names and all(n.startswith("mid_block") for n in names)
    assert not any("attn2" in n for n in names)
    assert any("attn1" in n for n in names) and any("resnets" in n for n in names)


def test_empty_selection_is_an_error(unet):
    with pytest.raises(InputError, match="selects no layer"):
        select_targets(unet, "lierla", "noxattn-hspace-last")


def test_c3lier_never_leaks_into_a_later_lierla_network(unet):
    before = _names(unet, "lierla", "noxattn")
    SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1)
    assert _names(unet, "lierla", "noxattn") == before
    for method in TRAINING_METHODS:
        try:
            select_targets(unet, "lierla", method)
        except InputError:
            continue


def test_conv_and_linear_ranks_are_capped(unet):
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=10_000, alpha=0)
    kinds = set()
    for name, module in network.loras.items():
        base = network._bases[name]
        if isinstance(base, torch.nn.Conv2d):
            assert module.rank == min(10_000, base.in_channels, base.out_channels)
        else:
            assert module.rank == min(10_000, base.in_features, base.out_features)
        assert float(module.alpha) == module.rank  # alpha 0 means alpha = rank
        kinds.add(type(base))
    assert kinds == {torch.nn.Conv2d, torch.nn.Linear}


def test_slider_params_stay_fp32_under_bf16_base(unet):
    unet = unet.to(torch.bfloat16)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1).attach()
    assert all(p.dtype == torch.float32 for p in network.parameters())
    latents, t, cond = _inputs(unet)
    with network.scaled(1.0):
        out = predict_noise(unet, latents, t, cond)
    assert out.dtype == torch.bfloat16


def test_composition_of_two_sliders_adds_deltas(unet):
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    a = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=2, alpha=1).attach()
    b = SliderNetwork.create(unet, network_type="c3lier", training_method="full", rank=2, alpha=1).attach()
    _randomise(a, std=0.05, seed=1)
    _randomise(b, std=0.05, seed=2)
    # On every adapted layer, the two sliders' deltas add, each at its own multiplier.
    for key in list(a.loras)[:: max(1, len(a.loras) // 8)]:
        layer = a._bases[key]
        shape = (2, layer.in_features) if isinstance(layer, torch.nn.Linear) else (1, layer.in_channels, 6, 6)
        x = torch.randn(shape)
        outputs = {}
        for ma, mb in ((0.0, 0.0), (1.5, 0.0), (0.0, -2.0), (1.5, -2.0)):
            a.multiplier, b.multiplier = ma, mb
            with torch.no_grad():
                outputs[ma, mb] = layer(x)
        expected = outputs[1.5, 0.0] + outputs[0.0, -2.0] - outputs[0.0, 0.0]
        torch.testing.assert_close(outputs[1.5, -2.0], expected)
        assert not torch.equal(outputs[1.5, 0.0], outputs[0.0, 0.0])
    a.multiplier, b.multiplier = 1.0, 1.0
    assert not torch.equal(_out(unet, inputs), base)
    a.detach()
    b.detach()
    assert torch.equal(_out(unet, inputs), base)


def test_save_load_round_trip(unet, tmp_path):
    inputs = _inputs(unet)
    network = SliderNetwork.create(unet, network_type="c3lier", training_method="noxattn", rank=3, alpha=1.5).attach()
    _randomise(network)
    with network.scaled(1.5):
        expected = _out(unet, inputs)
    path = network.save(tmp_path / "s.safetensors", {"sliders_config": json.dumps({"a": 1})})
    network.detach()
    tensors, metadata = read_slider_file(path)
    assert set(tensors) == set(network.state_dict_kohya())
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in tensors if "lora_" in k.split(".", 1)[1]} <= {
        "lora_down.weight", "lora_up.weight"}
    assert metadata["ss_network_dim"] == "3" and metadata["ss_network_alpha"] == "1.5"
    assert metadata["sliders_network_type"] == "c3lier" and metadata["sliders_training_method"] == "noxattn"
    assert metadata["ss_output_name"] == "s" and json.loads(metadata["sliders_config"]) == {"a": 1}
    loaded = load_slider(path, unet)
    assert loaded.rank == 3 and loaded.alpha == 1.5
    with loaded.scaled(1.5):
        torch.testing.assert_close(_out(unet, inputs), expected)
    # Rename the file: nothing about it comes from the name.
    renamed = tmp_path / "rank99_alpha7_whatever.safetensors"
    path.rename(renamed)
    assert load_slider(renamed, unet, attach=False).rank == 3


def test_save_precision_sets_the_stored_dtype(unet, tmp_path):
    network = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=2, alpha=1)
    path = network.save(tmp_path / "half.safetensors", precision="bf16")
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(path)).values())


def test_save_leaves_no_partial_file(unet, tmp_path, monkeypatch):
    network = SliderNetwork.create(unet, network_type="lierla", training_method="full", rank=2, alpha=1)
    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"earlier good file")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sliders.slider_files.save_file", broken)
    with pytest.raises(OSError):
        network.save(target)
    assert target.read_bytes() == b"earlier good file"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


def test_bad_slider_files_are_clear_errors(unet, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_slider(tmp_path / "missing.safetensors", unet)
    pickle_like = tmp_path / "x.pt"
    pickle_like.write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="not .safetensors"):
        load_slider(pickle_like, unet)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_slider(garbage, unet)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)}, str(foreign))
    with pytest.raises(InputError, match="which this base model lacks"):
        load_slider(foreign, unet)
    name, module = select_targets(unet, "lierla", "full")[0]
    key = "lora_unet_" + name.replace(".", "_")
    wrong = tmp_path / "wrong_shape.safetensors"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, module.in_features + 1),
               f"{key}.lora_up.weight": torch.zeros(module.out_features, 2)}, str(wrong))
    with pytest.raises(InputError, match="do not fit|needs"):
        load_slider(wrong, unet)
    text_encoder = tmp_path / "te.safetensors"
    save_file({"lora_te1_text_model.lora_down.weight": torch.zeros(1, 1)}, str(text_encoder))
    with pytest.raises(InputError, match="no UNet LoRA weights .only 1 text-encoder"):
        load_slider(text_encoder, unet)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"something.else.weight": torch.zeros(1, 1)}, str(unknown))
    with pytest.raises(InputError, match="not a UNet LoRA key"):
        load_slider(unknown, unet)


def test_diffusers_load_lora_weights_reads_our_file(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_model_dir))
    network = SliderNetwork.create(pipe.unet, network_type="c3lier", training_method="noxattn", rank=4, alpha=1)
    _randomise(network)
    path = network.save(tmp_path / "slider.safetensors")
    latents, t, cond = _inputs(pipe.unet)
    base = _out(pipe.unet, (latents, t, cond))
    network.attach()
    with network.scaled(1.0):
        ours = _out(pipe.unet, (latents, t, cond))
    network.detach()
    pipe.load_lora_weights(str(path), adapter_name="slider")
    state = pipe.unet.state_dict()
    # Every layer of the slider arrived: one lora_A and one lora_B per adapted layer.
    assert sum(k.endswith("lora_A.slider.weight") for k in state) == len(network.loras)
    pipe.set_adapters(["slider"], adapter_weights=[1.0])
    theirs = _out(pipe.unet, (latents, t, cond))
    assert not torch.allclose(theirs, base)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
