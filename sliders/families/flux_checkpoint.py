"""FLUX.1 single-file transformers in Black Forest Labs' original naming, read into diffusers' layout.

`flux1-dev.safetensors` names the transformer as BFL's reference code does (`double_blocks.0.img_attn.qkv`,
`single_blocks.0.linear1`, ...; ComfyUI exports add `model.diffusion_model.`), with q, k and v (and in
the single blocks the MLP input) fused into one Linear. `to_diffusers` renames and splits them into
FluxTransformer2DModel's state dict. The split sizes come from the model the file is loaded into
(its config), not from FLUX.1-dev's sizes, so a file of any width converts, and a file that does not
fit that model is one line naming the first tensor that differs. Loading is `sliders.models`'.
The conversion is checked in the tests against diffusers' `convert_flux_transformer_checkpoint_to_diffusers`,
which has FLUX.1's width written into it.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import InputError
from .flux import DOUBLE_FUSED, SINGLE_FUSED

PREFIX = "model.diffusion_model."  # ComfyUI's (and the LDM checkpoints') prefix of the diffusion model

# BFL layers outside the blocks -> diffusers layers.
TOP_LAYERS = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
# BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift).
SWAPPED_HALVES = ("final_layer.adaLN_modulation.1",)
# RMS norms of queries and keys: BFL's `.scale` is diffusers' `.weight`.
DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}


def transformer_keys(keys) -> list[str]:
    """The tensor names of a file that belong to the transformer: with ComfyUI's prefix, only the
    prefixed ones (an all-in-one checkpoint also holds `text_encoders.*` and `vae.*`), else all."""
    keys = list(keys)
    prefixed = [key for key in keys if key.startswith(PREFIX)]
    return prefixed or keys


def _bfl_name(kohya: str) -> str:
    """A fused layer's BFL path from its kohya name (`flux.DOUBLE_FUSED`): the last `_` is a dot
    (`img_attn_qkv` -> `img_attn.qkv`, `img_mlp_0` -> `img_mlp.0`, `linear1` stays)."""
    head, _, tail = kohya.rpartition("_")
    return f"{head}.{tail}" if head else kohya


def layer_map(double_blocks: int, single_blocks: int) -> dict[str, tuple[str, ...]]:
    """{BFL layer path: the diffusers layer paths it holds, in stacking order} for a transformer of this depth."""
    layers: dict[str, tuple[str, ...]] = dict((bfl, (ours,)) for bfl, ours in TOP_LAYERS.items())
    for i in range(double_blocks):
        for kohya, parts in DOUBLE_FUSED.items():
            layers[f"double_blocks.{i}.{_bfl_name(kohya)}"] = tuple(f"transformer_blocks.{i}.{p}" for p in parts)
        for bfl, ours in DOUBLE_NORMS.items():
            layers[f"double_blocks.{i}.{bfl}"] = (f"transformer_blocks.{i}.{ours}",)
    for i in range(single_blocks):
        for kohya, parts in SINGLE_FUSED.items():
            layers[f"single_blocks.{i}.{_bfl_name(kohya)}"] = tuple(f"single_transformer_blocks.{i}.{p}" for p in parts)
        for bfl, ours in SINGLE_NORMS.items():
            layers[f"single_blocks.{i}.{bfl}"] = (f"single_transformer_blocks.{i}.{ours}",)
    return layers


def to_diffusers(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], double_blocks: int,
                 single_blocks: int, *, source: str) -> dict[str, torch.Tensor]:
    """The diffusers state dict of a BFL-named transformer file, checked against `shapes` (the target
    model's state dict shapes): every tensor the model needs, of its shape, and nothing else.

    Fused layers are split along their output rows in the sizes of the model's parts (q, k, v, and the
    single blocks' MLP input), so the result is exactly what the model's separate layers hold."""
    layers = layer_map(double_blocks, single_blocks)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        layer, _, param = name.rpartition(".")
        parts = layers.get(layer)
        if parts is None or param not in ("weight", "bias", "scale"):
            unknown.append(key)
            continue
        param = "weight" if param == "scale" else param
        targets = [f"{part}.{param}" for part in parts]
        if any(target not in shapes for target in targets):
            unknown.append(key)
            continue
        sizes = [shapes[target][0] for target in targets]
        if tensor.ndim == 0 or tensor.shape[0] != sum(sizes):
            want = (sum(sizes), *shapes[targets[0]][1:])
            raise InputError(f"transformer file '{source}': tensor '{key}' has shape {tuple(tensor.shape)}, but the "
                             f"base model's transformer config needs {want}; give the transformer file of the same "
                             "FLUX.1 model as pretrained_model.name_or_path")
        if layer in SWAPPED_HALVES:
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift])
        for target, piece in zip(targets, tensor.split(sizes, dim=0)):
            out[target] = piece
    if unknown:
        raise InputError(f"transformer file '{source}' has {len(unknown)} tensors the base model's FLUX.1 transformer "
                         f"has no place for, e.g. '{unknown[0]}'; it is another model (or more blocks) than "
                         "pretrained_model.name_or_path")
    missing = [key for key in shapes if key not in out]
    if missing:
        raise InputError(f"transformer file '{source}' lacks {len(missing)} of the base model's transformer tensors, "
                         f"e.g. '{missing[0]}'; it is another model (or fewer blocks) than pretrained_model.name_or_path")
    for key, tensor in out.items():
        if tuple(tensor.shape) != tuple(shapes[key]):
            raise InputError(f"transformer file '{source}': '{key}' comes out as {tuple(tensor.shape)}, but the base "
                             f"model's transformer config needs {tuple(shapes[key])}; give the transformer file of the "
                             "same FLUX.1 model as pretrained_model.name_or_path")
    return out
