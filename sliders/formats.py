"""Slider file formats: the key namings of every tool that writes UNet LoRAs, read and written.

A slider's layers are named, inside `sliders`, by their diffusers module path with "." replaced by
"_" (`down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`). Files name them in one of these
ways, and this module turns each into that name and back:

- `kohya`: kohya sd-scripts' SDXL naming, the LDM/SGM module paths of the original SDXL code
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight`, `.lora_up.weight`,
  `.alpha`). AUTOMATIC1111, Forge and ComfyUI look these names up directly in the checkpoint's own
  module names; diffusers maps them with the UNet config. Our default.
- `diffusers`: the same kohya key layout with diffusers module paths (`lora_unet_down_blocks_...`),
  as the official Concept Sliders code, ai-toolkit and our files before `save.key_format` write.
  AUTOMATIC1111 maps these with a rule written for SD 1.x that misplaces SDXL's first upsampler.
- `peft`: diffusers' `save_lora_weights` naming (`unet.<path>.lora_A.weight`, `.lora_B.weight`),
  which has no alpha; `alpha / rank` is folded into `lora_B` when written.

FLUX.1 files (`sliders.families.flux`) name the transformer's layers: kohya's fused BFL paths
(`lora_unet_double_blocks_0_img_attn_qkv`), diffusers paths behind `lora_unet_` (the official
flux-sliders `.pt` files: `lora_unet_transformer_blocks_0_attn_to_q`), or `transformer.<path>` (PEFT);
`is_flux_file` tells them from UNet files by their names.

Read only: diffusers' older training-script naming (`unet.<path>.lora.down.weight`,
`<path>.processor.to_q_lora.down.weight`), PEFT alphas from diffusers' `lora_adapter_metadata`, and
LDM paths under `diffusion_model.`. Text-encoder keys are counted and left out.

The LDM <-> diffusers path map is computed from the UNet config (layers per block, which blocks
have attention or a sampler), so it holds for the tiny test model as for SDXL. No torch models are
loaded here; file reading lives in `sliders.slider_files`, slider rebuilding in `sliders.network`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .config import KEY_FORMATS
from .errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_KEY_FORMAT = "kohya"
UNET_PREFIX = "lora_unet_"

# How each reading of a key is called in messages.
NAMING_LABELS = {
    "kohya": "kohya SDXL naming (lora_unet_input_blocks_...)",
    "diffusers": "diffusers-path kohya naming (lora_unet_down_blocks_...)",
    "peft": "diffusers/PEFT naming (unet.<path>.lora_A.weight)",
    "training-script": "diffusers training-script naming (<path>.lora.down.weight)",
    "ldm": "LDM naming (diffusion_model.<path>)",
}

# The UNet of stabilityai/stable-diffusion-xl-base-1.0 (the fields that shape its modules). Used
# only for files that do not record their base model (the official `.pt` sliders, files from
# model sites) when a command has no base model to read the layout from.
SDXL_BASE_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

# Inside a resnet block the LDM code names layers by their place in a Sequential.
_RESNET_TO_LDM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}
_DOWNSAMPLER_TO_LDM = {"conv": "op"}


@dataclass(frozen=True)
class _Block:
    diffusers: str  # dotted, e.g. "down_blocks.1.resnets.0"
    ldm: str  # dotted, e.g. "input_blocks.4.0"
    renames: Mapping[str, str] = field(default_factory=dict)  # diffusers leaf -> LDM leaf


def _per_block(value: Any, count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def _blocks(config: Mapping[str, Any]) -> list[_Block]:
    """Every diffusers block of a UNet2DConditionModel config and its LDM place.

    LDM numbers input blocks 1.. one per layer, then one for the level's downsampler; output
    blocks one per layer (layers + 1 per level), the upsampler sitting in the level's last output
    block after its resnet (.0) and attention (.1), so at .2 with attention and .1 without.
    """
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    layers = _per_block(config.get("layers_per_block", 2), len(down_types))
    blocks = [
        _Block("conv_in", "input_blocks.0.0"),
        _Block("time_embedding.linear_1", "time_embed.0"),
        _Block("time_embedding.linear_2", "time_embed.2"),
        _Block("add_embedding.linear_1", "label_emb.0.0"),
        _Block("add_embedding.linear_2", "label_emb.0.2"),
        _Block("conv_norm_out", "out.0"),
        _Block("conv_out", "out.2"),
    ]
    index = 1
    for i, kind in enumerate(down_types):
        for j in range(layers[i]):
            blocks.append(_Block(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0", _RESNET_TO_LDM))
            if "CrossAttn" in kind:
                blocks.append(_Block(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{index}.1"))
            index += 1
        if i < len(down_types) - 1:
            blocks.append(_Block(f"down_blocks.{i}.downsamplers.0", f"input_blocks.{index}.0", _DOWNSAMPLER_TO_LDM))
            index += 1
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid:
        attention = "CrossAttn" in mid
        for k in range(2):
            blocks.append(_Block(f"mid_block.resnets.{k}", f"middle_block.{2 * k if attention else k}", _RESNET_TO_LDM))
        if attention:
            blocks.append(_Block("mid_block.attentions.0", "middle_block.1"))
    up_layers = [n + 1 for n in reversed(layers)]
    index = 0
    for i, kind in enumerate(up_types):
        attention = "CrossAttn" in kind
        for j in range(up_layers[i]):
            blocks.append(_Block(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", _RESNET_TO_LDM))
            if attention:
                blocks.append(_Block(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1"))
            if j == up_layers[i] - 1 and i < len(up_types) - 1:
                blocks.append(_Block(f"up_blocks.{i}.upsamplers.0", f"output_blocks.{index}.{2 if attention else 1}"))
            index += 1
    return blocks


def _rename(name: str, pairs: list[tuple[str, str, Mapping[str, str]]], separator: str) -> str | None:
    for source, target, renames in pairs:
        if name == source:
            return target
        if name.startswith(source + separator):
            leaf = name[len(source) + 1 :]
            return f"{target}{separator}{renames.get(leaf, leaf)}"
    return None


class NameMap:
    """diffusers <-> LDM layer names for one UNet config.

    `separator` "_" works on kohya's underscore names (no prefix), "." on module paths.
    """

    def __init__(self, config: Mapping[str, Any], separator: str = "_"):
        self.separator = separator

        def form(text: str) -> str:
            return text.replace(".", separator)

        blocks = _blocks(config)
        # Longest prefixes first, so "down_blocks_1_resnets_1" never claims "..._resnets_10_...".
        forward = [(form(b.diffusers), form(b.ldm), {form(k): form(v) for k, v in b.renames.items()}) for b in blocks]
        self._to_ldm = sorted(forward, key=lambda p: -len(p[0]))
        self._to_diffusers = sorted(((l, d, {v: k for k, v in r.items()}) for d, l, r in forward), key=lambda p: -len(p[0]))

    def to_ldm(self, name: str) -> str | None:
        return _rename(name, self._to_ldm, self.separator)

    def to_diffusers(self, name: str) -> str | None:
        return _rename(name, self._to_diffusers, self.separator)


def unet_config(unet: Any) -> dict[str, Any]:
    """The plain-dict config of a diffusers UNet (what the name map and file metadata need)."""
    return {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}


# Key beginnings only FLUX files have: kohya's BFL blocks, diffusers' transformer blocks (behind lora_unet_,
# as the official flux-sliders code names them, or PEFT's transformer. prefix).
_FLUX_KEY_PREFIXES = ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_unet_transformer_blocks_",
                      "lora_unet_single_transformer_blocks_", "transformer.transformer_blocks.",
                      "transformer.single_transformer_blocks.")


def is_flux_file(keys) -> bool:
    """Whether a slider file's tensor names are those of a FLUX transformer (no UNet key has these)."""
    return any(str(key).startswith(_FLUX_KEY_PREFIXES) for key in keys)


def is_ldm_name(name: str) -> bool:
    return name.startswith(("input_blocks_", "middle_block_", "output_blocks_", "out_", "time_embed_", "label_emb_"))


@dataclass
class LayerWeights:
    """One adapted layer as a file holds it: down/up weights, alpha if any, and where it came from."""

    key: str  # the file's name for the layer (for messages)
    naming: str
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


@dataclass
class ParsedFile:
    layers: dict[str, LayerWeights]  # by diffusers underscore name
    namings: list[str]  # every naming found, most common first
    text_encoder_layers: int = 0

    @property
    def naming(self) -> str:
        return self.namings[0] if self.namings else "unknown"


_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                          "te1.", "te2.", "lora_prior_te_")
_KOHYA_LEAVES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
# Dotted-name endings -> (part, naming); the longest ending is tried first.
_DOTTED_LEAVES = [
    (".lora_A.default.weight", "down", "peft"),
    (".lora_B.default.weight", "up", "peft"),
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".lora_linear_layer.down.weight", "down", "training-script"),
    (".lora_linear_layer.up.weight", "up", "training-script"),
    ("_lora.down.weight", "down", "training-script"),
    ("_lora.up.weight", "up", "training-script"),
    (".lora.down.weight", "down", "training-script"),
    (".lora.up.weight", "up", "training-script"),
    (".alpha", "alpha", None),
]


def _layer_of(key: str) -> str:
    """The layer part of a key of any naming (its weight/alpha ending removed)."""
    if key.startswith("lora_"):
        return key.split(".", 1)[0]
    for ending, _, _ in _DOTTED_LEAVES:
        if key.endswith(ending):
            return key[: -len(ending)]
    return key


def _scalar(tensor: torch.Tensor, key: str) -> float:
    if tensor.numel() != 1:
        raise InputError(f"alpha '{key}' has {tensor.numel()} values; an alpha is one number (re-save the file)")
    return float(tensor.reshape(-1)[0].float())


def _dotted_path(path: str) -> str:
    """A diffusers dotted module path as an older script wrote it -> the module's real path."""
    path = path.replace(".processor.", ".")
    # attention-processor LoRAs: 'attn1.processor.to_out_lora' names attn1.to_out.0
    if path.endswith("to_out"):
        path += ".0"
    return path


def _split_key(key: str, name_map: NameMap) -> tuple[str, str, str, str] | None:
    """(diffusers underscore name, part, naming, the file's layer name) of one UNet key, or None."""
    if key.startswith(UNET_PREFIX):
        layer, _, leaf = key.partition(".")
        part = _KOHYA_LEAVES.get(leaf)
        if part is None:
            return None
        name = layer[len(UNET_PREFIX):]
        if is_ldm_name(name) and name_map is not None:
            return name_map.to_diffusers(name) or f"?{name}", part, "kohya", layer
        return name, part, "diffusers", layer
    for ending, part, naming in _DOTTED_LEAVES:
        if key.endswith(ending):
            path = key[: -len(ending)]
            break
    else:
        return None
    layer = path
    for prefix in ("base_model.model.", "unet.", "transformer."):
        if path.startswith(prefix):
            path = path[len(prefix):]
    if path.startswith("diffusion_model.") and name_map is not None:
        name = path[len("diffusion_model."):].replace(".", "_")
        return name_map.to_diffusers(name) or f"?{name}", part, "ldm", layer
    if naming is None:  # an '.alpha' beside dotted weights: the naming of its weights decides
        naming = "peft"
    return _dotted_path(path).replace(".", "_"), part, naming, layer


def _peft_alphas(metadata: Mapping[str, str]) -> tuple[float | None, dict[str, float]]:
    """lora_alpha and alpha_pattern of diffusers' `lora_adapter_metadata`, when the file has it."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return None, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InputError("the file's lora_adapter_metadata is not JSON, so its alphas are unknown; re-save the file") from None
    if data.get("unet.use_dora"):
        raise InputError("the file is a DoRA adapter (use_dora), which sliders cannot apply; use a plain LoRA")
    alpha = data.get("unet.lora_alpha")
    pattern = data.get("unet.alpha_pattern") or {}
    return (float(alpha) if alpha is not None else None), {str(k): float(v) for k, v in pattern.items()}


def _pattern_alpha(path_dotted: str, default: float | None, pattern: Mapping[str, float]) -> float | None:
    # PEFT matches an alpha_pattern key against the end of the module path.
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path_dotted):
            return value
    return default


def parse_tensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], config: Mapping[str, Any], where: str
) -> ParsedFile:
    """Group a LoRA state dict of any known naming into layers named the diffusers way.

    `config` is the UNet config that places LDM names; `where` names the file in messages. A key of
    no known naming is an InputError; text-encoder keys are counted, not returned.
    """
    name_map = NameMap(config) if "down_block_types" in config else None  # None: a transformer (FLUX), no LDM map
    layers: dict[str, LayerWeights] = {}
    counts: dict[str, int] = {}
    text_encoder: set[str] = set()
    for key, tensor in tensors.items():
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            text_encoder.add(_layer_of(key))
            continue
        if "dora_scale" in key or "lora_magnitude_vector" in key:
            raise InputError(f"{where} has DoRA key '{key}', which sliders cannot apply; use a plain LoRA file")
        split = _split_key(key, name_map)
        if split is None:
            raise InputError(
                f"{where} has key '{key}', which is not a UNet LoRA key of a known naming "
                "(kohya lora_unet_*, diffusers/PEFT unet.*.lora_A/B, training-script *.lora.down/up); "
                "re-save it with one of these"
            )
        name, part, naming, layer = split
        weights = layers.setdefault(name, LayerWeights(key=layer, naming=naming))
        if part == "alpha":
            weights.alpha = _scalar(tensor, key)
        else:
            # The weights, not a dotted '.alpha' beside them, say which naming the layer has.
            weights.naming, weights.key = naming, layer
            setattr(weights, part, tensor)
        counts[naming] = counts.get(naming, 0) + (part != "alpha")
    default_alpha, pattern = _peft_alphas(metadata)
    if default_alpha is not None or pattern:
        for name, weights in layers.items():
            if weights.naming == "peft" and weights.alpha is None:
                weights.alpha = _pattern_alpha(weights.key.removeprefix("unet."), default_alpha, pattern)
    if text_encoder:
        logger.warning(
            "%s has %d text-encoder LoRA layer(s); sliders adapt the UNet only, so they are not applied",
            where, len(text_encoder),
        )
    namings = sorted(counts, key=lambda n: -counts[n])
    return ParsedFile(layers=layers, namings=namings, text_encoder_layers=len(text_encoder))


def key_names(name: str, key_format: str, name_map: NameMap, dotted: str) -> tuple[str, str, str | None]:
    """(down key, up key, alpha key or None) of one layer in `key_format`.

    `name` is the diffusers underscore name, `dotted` the module path (PEFT keeps the dots).
    """
    if key_format == "diffusers":
        layer = UNET_PREFIX + name
    elif key_format == "kohya":
        ldm = name_map.to_ldm(name)
        if ldm is None:
            raise InputError(f"layer '{dotted}' has no place in the LDM UNet; save with key_format 'diffusers'")
        layer = UNET_PREFIX + ldm
    elif key_format == "peft":
        return f"unet.{dotted}.lora_A.weight", f"unet.{dotted}.lora_B.weight", None
    else:
        raise InputError(f"key format {key_format!r} is unknown; choose one of {', '.join(KEY_FORMATS)}")
    return f"{layer}.lora_down.weight", f"{layer}.lora_up.weight", f"{layer}.alpha"


def check_key_format(key_format: str, what: str = "key format") -> str:
    if key_format not in KEY_FORMATS:
        raise InputError(f"{what} {key_format!r} is unknown; choose one of {', '.join(KEY_FORMATS)}")
    return key_format
