"""FLUX.1 base models beyond a diffusers folder: a single-file transformer in BFL's naming
(`pretrained_model.transformer`), and the frozen transformer quantized with bitsandbytes
(`pretrained_model.quantize`), on `builtin:tiny-flux`; for training, and for sliders-sample,
sliders-edit and sliders-eval (`--transformer`, `--quantize`).

The BFL files are written here from the tiny transformer by this file's own diffusers -> BFL
conversion, which is checked against diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
(BFL -> diffusers): that gives back exactly the tensors it started from. Loading goes through the
config and `load_pipeline` (and the CLI), as users' files do.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from sliders.cli import edit_main, eval_main, sample_main, train_main
from sliders.config import load_config
from sliders.errors import InputError
from sliders.families import FLUX, SDXL, family_of_source

MODEL = "builtin:tiny-flux"
PREFIX = "model.diffusion_model."

# diffusers layer -> BFL layer, outside the blocks (written out here, not taken from sliders).
TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
DOUBLE = {  # BFL layer of a double block -> the diffusers layers fused in it, in order
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
DOUBLE_NORMS = {"img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
                "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k"}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
          "modulation.lin": ("norm.linear",)}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}


def to_bfl(state: dict, double: int, single: int, prefix: str = "") -> dict:
    """A diffusers FluxTransformer2DModel state dict in BFL's naming: q/k/v (and the single blocks' MLP
    input) concatenated along the output rows; the final modulation's halves as (shift, scale)."""
    out = {}
    for ours, bfl in TOP.items():
        for param in ("weight", "bias"):
            if f"{ours}.{param}" in state:
                out[f"{bfl}.{param}"] = state[f"{ours}.{param}"]
    for param in ("weight", "bias"):
        scale, shift = state[f"norm_out.linear.{param}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale])
    for kind, count, fused, norms, ours_prefix in (
            ("double_blocks", double, DOUBLE, DOUBLE_NORMS, "transformer_blocks"),
            ("single_blocks", single, SINGLE, SINGLE_NORMS, "single_transformer_blocks")):
        for i in range(count):
            for bfl, parts in fused.items():
                for param in ("weight", "bias"):
                    out[f"{kind}.{i}.{bfl}.{param}"] = torch.cat(
                        [state[f"{ours_prefix}.{i}.{part}.{param}"] for part in parts])
            for bfl, ours in norms.items():
                out[f"{kind}.{i}.{bfl}.scale"] = state[f"{ours_prefix}.{i}.{ours}.weight"]
    return {prefix + key: value.contiguous() for key, value in out.items()}


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def folder(sliders_home):
    from sliders.models import resolve_model

    return resolve_model(MODEL)


@pytest.fixture(scope="module")
def folder_pipe(folder):
    from sliders.models import load_pipeline

    return load_pipeline(folder)


@pytest.fixture(scope="module")
def bfl_file(folder_pipe, tmp_path_factory):
    """The tiny transformer as ComfyUI's all-in-one `flux1-dev-fp8.safetensors` holds it: with the
    `model.diffusion_model.` prefix, beside other components' tensors (which are left alone)."""
    model = folder_pipe.transformer
    path = tmp_path_factory.mktemp("bfl") / "flux1-tiny.safetensors"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = to_bfl(state, len(model.transformer_blocks), len(model.single_transformer_blocks), PREFIX)
    tensors["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.ones(3)
    tensors["vae.decoder.conv_out.bias"] = torch.zeros(3)
    save_file(tensors, str(path))
    return path


def _inputs(model, seed=0):
    """Transformer inputs (as FluxPipeline gives them) for 4 image tokens and 3 text tokens."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    return dict(
        hidden_states=torch.randn(1, 4, config.in_channels, generator=generator),
        encoder_hidden_states=torch.randn(1, 3, config.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator),
        timestep=torch.tensor([0.6]), guidance=torch.tensor([3.5]),
        img_ids=torch.rand(4, 3, generator=generator), txt_ids=torch.zeros(3, 3), return_dict=False,
    )


def _write_config(tmp_path, **model):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text('- target: "circle"\n  positive: "large circle"\n  unconditional: "small circle"\n'
                       "  action: enhance\n  guidance_scale: 2\n  resolution: 64\n", encoding="utf-8")
    config = {
        "prompts_file": str(prompts),
        "pretrained_model": {"name_or_path": MODEL, **model},
        "network": {"rank": 2, "training_method": "full"},
        "train": {"precision": "fp32", "iterations": 2, "flow_steps": 4, "lr": 0.01},
        "save": {"name": "flux", "path": str(tmp_path / "models"), "per_steps": 10},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the BFL naming written here is BFL's


def test_our_bfl_conversion_is_the_inverse_of_diffusers(folder_pipe):
    """diffusers' converter (BFL -> diffusers) gives back every tensor this file's conversion started
    from. It hard-codes FLUX.1's width in the single blocks' split (3 x 3072 + 12288 rows of linear1), so
    there the tiny q/k/v/mlp are replaced by tensors of those row counts; all else is the tiny model's."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    model = folder_pipe.transformer
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for i in range(len(model.single_transformer_blocks)):
        for part, rows in (("attn.to_q", 3072), ("attn.to_k", 3072), ("attn.to_v", 3072), ("proj_mlp", 12288)):
            state[f"single_transformer_blocks.{i}.{part}.weight"] = torch.randn(rows, 3, generator=generator)
            state[f"single_transformer_blocks.{i}.{part}.bias"] = torch.randn(rows, generator=generator)
    for prefix in ("", PREFIX):
        bfl = to_bfl(state, len(model.transformer_blocks), len(model.single_transformer_blocks), prefix)
        assert f"{prefix}double_blocks.0.img_attn.qkv.weight" in bfl
        back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
        assert set(back) == set(state)
        for key, value in state.items():
            assert torch.equal(back[key], value), key


# ---------------------------------------------------------------- loading a single-file transformer


def test_a_bfl_file_is_recognised_as_flux_from_its_header(bfl_file, tmp_path):
    from sliders.models import load_pipeline

    assert family_of_source(str(bfl_file)) is FLUX
    plain = tmp_path / "flux1-dev.safetensors"  # without ComfyUI's prefix
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(plain))
    assert family_of_source(str(plain)) is FLUX
    # As the base model itself it is refused with the way to use it.
    with pytest.raises(InputError, match="pretrained_model.transformer"):
        load_pipeline(str(bfl_file))


def test_transformer_from_a_single_file_gives_the_folder_models_outputs(folder, folder_pipe, bfl_file, tmp_path):
    """Through the config: the transformer comes from the file, the rest from the folder, and it
    holds exactly the folder transformer's tensors."""
    from sliders.models import load_pipeline

    config = load_config(_write_config(tmp_path, name_or_path=folder, transformer=str(bfl_file)))
    model = config.pretrained_model
    assert model.transformer == str(bfl_file)
    pipe = load_pipeline(model.name_or_path, family=model.family, transformer=model.transformer)
    reference = folder_pipe.transformer
    with torch.no_grad():
        expected = reference(**_inputs(reference))[0]
        got = pipe.transformer(**_inputs(pipe.transformer))[0]
    # The same tensors exactly; the outputs agree to float rounding (the split tensors' memory layout
    # can pick another vectorised kernel path).
    ref_state = reference.state_dict()
    state = pipe.transformer.state_dict()
    assert set(state) == set(ref_state)
    assert all(torch.equal(value, ref_state[key]) for key, value in state.items())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert pipe.transformer.dtype == torch.float32
    # The rest is the folder's.
    assert torch.equal(pipe.vae.decoder.conv_out.weight, folder_pipe.vae.decoder.conv_out.weight)


def test_the_transformer_weights_come_from_the_file(folder, folder_pipe, tmp_path):
    """A file whose fused qkv has its k rows doubled and final modulation changed: exactly those
    tensors differ from the folder's, in the right places (so the file, not the folder, is read)."""
    from sliders.models import load_pipeline

    reference = folder_pipe.transformer
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    bfl = to_bfl(state, len(reference.transformer_blocks), len(reference.single_transformer_blocks))
    inner = reference.transformer_blocks[0].attn.to_q.out_features
    bfl["double_blocks.1.img_attn.qkv.weight"][inner:2 * inner] *= 2
    bfl["single_blocks.0.linear1.bias"][3 * inner:] += 1  # the MLP input's bias
    bfl["final_layer.adaLN_modulation.1.bias"][:3] = 7.0  # the shift half, first in BFL's order
    path = tmp_path / "changed.safetensors"
    save_file(bfl, str(path))
    pipe = load_pipeline(folder, transformer=str(path))
    loaded = dict(pipe.transformer.state_dict())
    changed = {key for key in state if not torch.equal(loaded[key], state[key])}
    assert changed == {"transformer_blocks.1.attn.to_k.weight", "single_transformer_blocks.0.proj_mlp.bias",
                       "norm_out.linear.bias"}
    assert torch.equal(loaded["transformer_blocks.1.attn.to_k.weight"], 2 * state["transformer_blocks.1.attn.to_k.weight"])
    half = state["norm_out.linear.bias"].shape[0] // 2
    assert torch.equal(loaded["norm_out.linear.bias"][half:half + 3], torch.full((3,), 7.0))


def test_bad_transformer_files_are_one_line(folder, folder_pipe, bfl_file, tmp_path, capsys):
    from safetensors.torch import load_file

    reference = folder_pipe.transformer
    bfl = load_file(str(bfl_file))
    narrow = dict(bfl)
    narrow[f"{PREFIX}double_blocks.0.img_attn.qkv.weight"] = narrow[f"{PREFIX}double_blocks.0.img_attn.qkv.weight"][:-3]
    fewer = {k: v for k, v in bfl.items() if ".single_blocks.1." not in k}
    more = {**bfl, **{k.replace(".single_blocks.1.", ".single_blocks.2."): v.clone()
                      for k, v in bfl.items() if ".single_blocks.1." in k}}
    files = {}
    for name, tensors in (("narrow", narrow), ("fewer", fewer), ("more", more),
                          ("sdxl", {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)})):
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(files[name]))
    files["garbage"] = tmp_path / "garbage.safetensors"
    files["garbage"].write_bytes(b"not a safetensors file")
    files["pickle"] = tmp_path / "flux1-dev.ckpt"
    files["pickle"].write_bytes(b"x")
    expected = {
        "missing": "does not exist", "pickle": "must be a .safetensors", "garbage": "not a readable",
        "sdxl": "not a FLUX.1 transformer", "narrow": "has shape", "fewer": "lacks", "more": "has no place",
    }
    files["missing"] = tmp_path / "nowhere.safetensors"
    assert len(reference.single_transformer_blocks) == 2
    for name, words in expected.items():
        config = _write_config(tmp_path, name_or_path=folder, transformer=str(files[name]))
        assert train_main(["--config", str(config), "--device", "cpu"]) == 2, name
        line = _error_line(capsys)
        assert words in line and str(files[name]) in line, (name, line)
    # Another family's base model with a FLUX transformer file.
    config = _write_config(tmp_path, name_or_path="builtin:tiny-sd1", transformer=str(bfl_file))
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    assert "is for FLUX.1" in _error_line(capsys)


# ---------------------------------------------------------------- a quantized base transformer


def test_quantize_is_validated_by_the_config(tmp_path):
    assert load_config(_write_config(tmp_path)).pretrained_model.quantize == "none"
    assert load_config(_write_config(tmp_path, quantize="4BIT")).pretrained_model.quantize == "4bit"
    with pytest.raises(InputError, match="pretrained_model.quantize.*8bit"):
        load_config(_write_config(tmp_path, quantize="8bits"))


def test_the_slider_wraps_bitsandbytes_layers_by_their_features(folder_pipe):
    """bnb's Linear8bitLt / Linear4bit are selected and wrapped like a Linear, the adaptor's shapes from
    in/out features (constructed only: nothing of bitsandbytes runs)."""
    import copy

    import bitsandbytes as bnb

    from sliders.models import quantized_linear
    from sliders.network import SliderNetwork

    model = copy.deepcopy(folder_pipe.transformer)
    block = model.single_transformer_blocks[0]
    shapes = {}
    for name, mode in (("proj_mlp", "8bit"), ("attn.to_q", "4bit")):
        parent, _, child = f"single_transformer_blocks.0.{name}".rpartition(".")
        linear = model.get_submodule(f"{parent}.{child}")
        shapes[name] = (linear.in_features, linear.out_features)
        setattr(model.get_submodule(parent), child, quantized_linear(linear, mode, torch.float32))
    assert isinstance(block.proj_mlp, bnb.nn.Linear8bitLt) and isinstance(block.attn.to_q, bnb.nn.Linear4bit)
    network = SliderNetwork.create(model, network_type="c3lier", training_method="full", rank=2, alpha=1)
    for name, (fan_in, fan_out) in shapes.items():
        lora = network.loras[f"lora_unet_single_transformer_blocks_0_{name.replace('.', '_')}"]
        assert lora.lora_down.weight.shape == (2, fan_in) and lora.lora_up.weight.shape == (fan_out, 2)
    assert network._bases["lora_unet_single_transformer_blocks_0_proj_mlp"] is block.proj_mlp


def _slider_gradients(model) -> torch.Tensor:
    """All slider parameters' gradients (flattened) for one loss on `model`, from a slider with fixed
    nonzero ups (so every down has a gradient at once)."""
    from sliders.network import SliderNetwork

    torch.manual_seed(0)
    network = SliderNetwork.create(model, network_type="lierla", training_method="full", rank=2, alpha=1).attach()
    for lora in network.loras.values():
        torch.nn.init.normal_(lora.lora_up.weight, std=0.1)
    with network.scaled(1.0):
        model(**_inputs(model))[0].square().mean().backward()
    grads = {k: p.grad for k, p in network.named_parameters()}
    network.detach()
    first = [g for k, g in grads.items() if "lora_unet_transformer_blocks_0_" in k and "lora_down" in k]
    assert first and all(g.abs().max() > 0 for g in first)  # back through every later block
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_layers_keep_the_function_and_pass_the_slider_gradient(folder_pipe, mode):
    """On this machine's bitsandbytes: every block Linear is replaced, the transformer's output stays
    near the float one, and the slider's gradient flows through the frozen quantized layers, close
    to its gradient on the float model, while the quantized weights stay as they are."""
    import copy

    import bitsandbytes as bnb

    from sliders.models import quantize_denoiser

    reference = copy.deepcopy(folder_pipe.transformer).requires_grad_(False).eval()
    model = copy.deepcopy(reference)
    linears = sum(type(m) is torch.nn.Linear for blocks in (model.transformer_blocks, model.single_transformer_blocks)
                  for m in blocks.modules())
    assert quantize_denoiser(model, mode, "cpu", FLUX, torch.float32) == linears
    model.eval()  # as the trainer has it: bitsandbytes takes other paths in eval mode without gradients
    kind = bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit
    assert isinstance(model.transformer_blocks[0].attn.to_q, kind)
    assert type(model.x_embedder) is torch.nn.Linear  # embedders stay float
    with torch.no_grad():
        expected = reference(**_inputs(model))[0]
        got = model(**_inputs(model))[0]
    assert not torch.equal(got, expected)  # it is quantized...
    assert (got - expected).abs().max() < 0.25 * expected.abs().max()  # ...and still the same function, roughly
    quantized = {k: v.clone() for k, v in model.state_dict().items() if v.dtype in (torch.int8, torch.uint8)}
    assert quantized
    cosine = torch.nn.functional.cosine_similarity(_slider_gradients(model), _slider_gradients(reference), dim=0)
    assert cosine > 0.9, float(cosine)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in quantized.items())


@pytest.mark.parametrize("mode, from_file", [("8bit", True), ("4bit", False)])
def test_quantized_flux_trains_through_the_cli(folder, bfl_file, tmp_path, mode, from_file):
    """End to end: two steps of a text slider on the quantized transformer (8-bit: read from the BFL
    file, both options at once); the slider learns, stats.json says what was quantized and gives no
    GPU memory on the CPU."""
    from safetensors.torch import load_file

    extra = {"transformer": str(bfl_file)} if from_file else {}
    config = _write_config(tmp_path, name_or_path=folder, quantize=mode, **extra)
    assert train_main(["--config", str(config), "--device", "cpu"]) == 0
    run = next((tmp_path / "models").glob("flux_*"))
    slider = load_file(str(run / "flux_last.safetensors"))
    assert any(k.endswith("lora_up.weight") and v.abs().max() > 0 for k, v in slider.items())
    stats = json.loads((run / "stats.json").read_text())
    assert stats["options"]["quantize"] == mode and stats["iterations"] == 2
    assert "cuda_peak_allocated_gib" not in stats["peak_memory"]


def test_quantize_is_refused_where_it_cannot_run(folder, tmp_path, capsys, monkeypatch):
    import bitsandbytes

    from sliders.models import check_quantize

    # A UNet family: before the model loads.
    config = _write_config(tmp_path, name_or_path="builtin:tiny-sd1", quantize="8bit")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    assert "is for FLUX.1" in _error_line(capsys)
    with pytest.raises(InputError, match="trains unquantized"):
        check_quantize("4bit", SDXL, "cpu")
    with pytest.raises(InputError, match="not mps"):
        check_quantize("8bit", FLUX, "mps")
    check_quantize("none", SDXL, "mps")  # nothing asked, nothing checked

    # A bitsandbytes whose CPU backend cannot run the layers (older versions): one line, exit 2.
    def unavailable(*args, **kwargs):
        raise NotImplementedError("no CPU kernel for int8 matmul")

    monkeypatch.setattr(bitsandbytes, "matmul", unavailable)
    config = _write_config(tmp_path, name_or_path=folder, quantize="8bit")
    assert train_main(["--config", str(config), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert "cannot run 8bit layers on cpu" in line and "no CPU kernel" in line


# ---------------------------------------------------------------- sliders-sample, -edit and -eval on them


@pytest.fixture(scope="module")
def slider(folder, tmp_path_factory):
    """A FLUX text slider trained for two steps on the tiny model's folder (which it records)."""
    tmp = tmp_path_factory.mktemp("flux_slider")
    assert train_main(["--config", str(_write_config(tmp, name_or_path=folder)), "--device", "cpu"]) == 0
    return next((tmp / "models").glob("flux_*/flux_last.safetensors"))


def _sample(slider, out, *extra):
    """sliders-sample at scales -2, 0, 2 (3 steps); its exit code."""
    return sample_main(["--slider", str(slider), "--scales=-2,0,2", "--steps", "3", "--prompt", "circle",
                        "--output", str(out), "--device", "cpu", *extra])


def _pngs(out):
    return {p.name: np.asarray(Image.open(p)).astype(int) for p in sorted(out.glob("*.png")) if p.name != "grid.png"}


def test_sample_takes_the_transformer_from_a_single_file(folder_pipe, slider, bfl_file, tmp_path):
    """`--transformer` beside the recorded folder: the folder model's images; a file with other
    weights gives other images (so the file is what is read)."""
    assert _sample(slider, tmp_path / "plain") == 0
    assert _sample(slider, tmp_path / "file", "--transformer", str(bfl_file)) == 0
    plain, from_file = _pngs(tmp_path / "plain"), _pngs(tmp_path / "file")
    assert len(plain) == 3 and plain.keys() == from_file.keys()
    for name in plain:  # the same tensors: equal up to float rounding, which may flip a pixel by one
        assert np.abs(plain[name] - from_file[name]).max() <= 1, name
    model = folder_pipe.transformer
    bfl = to_bfl({k: v.detach().clone() for k, v in model.state_dict().items()}, len(model.transformer_blocks),
                 len(model.single_transformer_blocks))
    bfl["final_layer.linear.weight"] = bfl["final_layer.linear.weight"] * 3
    changed = tmp_path / "changed.safetensors"
    save_file(bfl, str(changed))
    assert _sample(slider, tmp_path / "changed", "--transformer", str(changed)) == 0
    other = _pngs(tmp_path / "changed")
    assert all(np.abs(other[name] - plain[name]).mean() > 1 for name in plain)


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_sample_on_a_quantized_transformer(slider, tmp_path, capsys, mode):
    """`--quantize` on the CPU (bitsandbytes 0.50): images close to the float model's, and the slider
    still changes them."""
    assert _sample(slider, tmp_path / "plain") == 0
    assert _sample(slider, tmp_path / mode, "--quantize", mode.upper()) == 0  # any case, as the config key
    assert "wrote 3 images" in capsys.readouterr().out
    plain, quantized = _pngs(tmp_path / "plain"), _pngs(tmp_path / mode)
    assert plain.keys() == quantized.keys()
    for name in plain:
        assert 0 < np.abs(quantized[name] - plain[name]).mean() < 2, name  # quantized, but the same image
    zero = next(image for name, image in quantized.items() if name.endswith("+0.png"))
    assert all(np.abs(image - zero).mean() > 0.05 for name, image in quantized.items() if not name.endswith("+0.png"))


def test_eval_and_edit_take_both_options(slider, bfl_file, tmp_path):
    """sliders-eval and sliders-edit run on the file's transformer quantized, and record both options."""
    both = ["--transformer", str(bfl_file), "--quantize", "8bit"]
    out = tmp_path / "eval"
    assert eval_main(["--slider", str(slider), "--prompt", "circle", "--seeds", "0", "--scales=-1,0,1", "--steps", "2",
                      "--output", str(out), "--device", "cpu", *both]) == 0
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["transformer"] == str(bfl_file) and settings["quantize"] == "8bit"
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "edit"
    assert edit_main(["--image", str(photo), "--slider", str(slider), "--scales=-2,0,2", "--steps", "3", "--prompt",
                      "circle", "--inversion", "direct", "--output", str(out), "--device", "cpu",
                      "--transformer", str(bfl_file), "--quantize", "4bit"]) == 0
    settings = json.loads((out / "edits.json").read_text())["settings"]
    assert settings["transformer"] == str(bfl_file) and settings["quantize"] == "4bit"
    assert len(list(out.glob("photo_*.png"))) == 3


def test_bad_base_options_of_the_image_commands_are_one_line_before_the_model_loads(
        slider, bfl_file, tiny_pipe, tmp_path, capsys, monkeypatch, inject_loader):
    import bitsandbytes

    from sliders.config import TINY_MODEL
    from sliders.network import SliderNetwork

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded")

    inject_loader(forbidden)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    commands = {
        "sample": lambda path, *extra: _sample(path, tmp_path / "s", *extra),
        "edit": lambda path, *extra: edit_main(["--image", str(photo), "--slider", str(path), "--output",
                                                str(tmp_path / "e"), "--device", "cpu", *extra]),
        "eval": lambda path, *extra: eval_main(["--slider", str(path), "--prompt", "circle", "--output",
                                                str(tmp_path / "v"), "--device", "cpu", *extra]),
    }
    sdxl_keys = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(sdxl_keys))
    torch.manual_seed(0)
    sdxl_slider = SliderNetwork.create(tiny_pipe.unet, network_type="c3lier", training_method="noxattn", rank=2,
                                       alpha=1.0).save(tmp_path / "sdxl_slider.safetensors",
                                                       {"sliders_base_model": TINY_MODEL, "sliders_resolution": "64"})
    cases = [
        (slider, ["--transformer", str(tmp_path / "nowhere.safetensors")], "--transformer '", "does not exist"),
        (slider, ["--transformer", str(sdxl_keys)], "--transformer '", "not a FLUX.1 transformer"),
        (sdxl_slider, ["--transformer", str(bfl_file)], "--transformer is for FLUX.1", "Stable Diffusion XL"),
        (sdxl_slider, ["--quantize", "4bit"], "--quantize is for FLUX.1", "Stable Diffusion XL"),
    ]
    for name, command in commands.items():
        for path, extra, *words in cases:
            assert command(path, *extra) == 2, (name, extra)
            line = _error_line(capsys)
            assert all(word in line for word in words), (name, line)
    for name in ("sample", "eval"):  # sliders-edit has no --fused
        assert commands[name](slider, "--quantize", "8bit", "--fused") == 2
        assert "--fused" in _error_line(capsys)
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal
        commands["sample"](slider, "--quantize", "2bit")
    assert stop.value.code == 2 and "--quantize: invalid choice: '2bit'" in _error_line(capsys)
    assert eval_main(["--edit_results", str(tmp_path), "--quantize", "8bit"]) == 2
    assert "drop --quantize" in _error_line(capsys)

    def unavailable(*args, **kwargs):
        raise NotImplementedError("no CPU kernel for int8 matmul")

    monkeypatch.setattr(bitsandbytes, "matmul", unavailable)
    for name, command in commands.items():
        assert command(slider, "--quantize", "8bit") == 2, name
        line = _error_line(capsys)
        assert "--quantize 8bit: bitsandbytes" in line and "cannot run 8bit layers on cpu" in line, (name, line)
