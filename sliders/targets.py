"""Target selection: which UNet layers a slider's network type and training method cover.

A pure function of the UNet's modules (`select_targets`), in UNet order: the attention projections
(`lierla`), plus the resnet and sampler convolutions (`c3lier`), filtered by the official training
methods (`noxattn`, `xattn`, the h-space ones, ...). FLUX.1's layers are chosen by its family
(`FluxFamily.target_modules`). Nothing here builds adaptors or touches the UNet.
"""

from __future__ import annotations

from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .config import NETWORK_TYPES, TRAINING_METHODS
from .errors import InputError

ATTENTION_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_LAYERS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj")
SAMPLER_LAYERS = ("conv",)


def _method_allows(method: str, block_name: str, layer: str) -> bool:
    """Whether a training method covers `layer` of the attention/resnet/sampler at `block_name`.

    `noxattn-hspace` is `noxattn` restricted to the mid block (no mid-block cross-attention), as in
    the official code, which applies the `noxattn` filter to both h-space methods first.
    """
    noxattn = "attn2" not in block_name and "time_embed" not in block_name
    if method == "full":
        return True
    if method == "noxattn":
        return noxattn
    if method == "innoxattn":
        return "attn2" not in block_name
    if method == "selfattn":
        return "attn1" in block_name
    if method == "xattn":
        return "attn2" in block_name
    if method == "xattn-strict":
        return "attn2" in block_name and layer in ("to_q", "to_k", "to_v")
    if method == "noxattn-hspace":
        return noxattn and "mid_block" in block_name
    raise AssertionError(method)


def _last_mid_resnet(unet: nn.Module) -> str | None:
    mid = getattr(unet, "mid_block", None)
    resnets = getattr(mid, "resnets", None)
    if not resnets:
        return None
    return f"mid_block.resnets.{len(resnets) - 1}"


def select_targets(unet: nn.Module, network_type: str, training_method: str, *, check_only: bool = False
                   ) -> list[tuple[str, nn.Module]]:
    """The (dotted name, layer) pairs a network of this type and method wraps; pure, in UNet order.
    `check_only` validates the names and selects nothing (FLUX's layers are `FluxFamily.target_modules`).

    `lierla`: to_q/to_k/to_v/to_out.0 of every attention module. `c3lier` adds conv1, conv2,
    conv_shortcut, time_emb_proj of resnet blocks and the conv of down/up-samplers.
    """
    if network_type not in NETWORK_TYPES:
        raise InputError(f"network type {network_type!r} is unknown; choose one of {', '.join(NETWORK_TYPES)}")
    if training_method not in TRAINING_METHODS:
        raise InputError(
            f"training method {training_method!r} is unknown; choose one of {', '.join(TRAINING_METHODS)}"
        )
    if check_only:
        return []
    last_mid = _last_mid_resnet(unet)
    targets: list[tuple[str, nn.Module]] = []
    for block_name, block in unet.named_modules():
        if isinstance(block, Attention):
            layers = ATTENTION_LAYERS
        elif network_type == "c3lier" and isinstance(block, ResnetBlock2D):
            layers = RESNET_LAYERS
        elif network_type == "c3lier" and isinstance(block, (Downsample2D, Upsample2D)):
            layers = SAMPLER_LAYERS
        else:
            continue
        for layer in layers:
            module = _submodule(block, layer)
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            if training_method == "noxattn-hspace-last":
                allowed = block_name == last_mid and layer == "conv2"
            else:
                allowed = _method_allows(training_method, block_name, layer)
            if allowed:
                targets.append((f"{block_name}.{layer}", module))
    if not targets:
        raise InputError(
            f"network type '{network_type}' with training method '{training_method}' selects no layer of this "
            "UNet; choose another combination (e.g. c3lier with noxattn-hspace-last needs a mid-block resnet)"
        )
    return targets


def _submodule(block: nn.Module, dotted: str) -> nn.Module | None:
    """`block.<dotted>`, or None where the block has no such layer (conv_shortcut is optional)."""
    try:
        return block.get_submodule(dotted)
    except AttributeError:
        return None
