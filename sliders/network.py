"""The slider network: low-rank adaptors on a UNet's Linear and Conv2d layers.

Holds the LoRA module (SPEC section 1), the pure function that chooses which UNet layers a network
type and training method cover, the network that attaches to a UNet through forward hooks (so the
base weights are never touched and removal restores the UNet exactly), and save/load as kohya-style
`.safetensors`. It does not load models or train.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from . import __version__
from .config import NETWORK_TYPES, TRAINING_METHODS
from .errors import InputError
from .models import DTYPES

logger = logging.getLogger(__name__)

PREFIX = "lora_unet"
ATTENTION_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_LAYERS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj")
SAMPLER_LAYERS = ("conv",)


class LoRAModule(nn.Module):
    """`y = base(x) + multiplier * (alpha / rank) * up(down(x))` for one Linear or Conv2d.

    `up` starts at zero and `down` Kaiming-uniform, so a fresh module changes nothing. The
    parameters stay float32 whatever the base dtype; inputs are cast up and the delta cast back.
    """

    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float | None):
        super().__init__()
        self.name = name
        if isinstance(base, nn.Conv2d):
            rank = min(rank, base.in_channels, base.out_channels)
            self.lora_down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        elif isinstance(base, nn.Linear):
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"{name}: LoRA wraps nn.Linear or nn.Conv2d, not {type(base).__name__}")
        self.rank = rank
        alpha = float(alpha) if alpha else float(rank)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.scale = alpha / rank
        self.multiplier = 0.0
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        # Functional calls rather than the submodules' __call__: this runs for every adapted layer
        # on every UNet call, and module-call overhead dominates a host-bound step.
        down, up = self.lora_down, self.lora_up
        if isinstance(down, nn.Conv2d):
            return F.conv2d(F.conv2d(x, down.weight, None, down.stride, down.padding), up.weight)
        return F.linear(F.linear(x, down.weight), up.weight)

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # At multiplier 0 the LoRA branch is skipped entirely: the output is the base model's, bit for bit.
        if self.multiplier == 0:
            return output
        branch = self._branch(inputs[0].to(self.lora_down.weight.dtype))
        return output + (branch * (self.multiplier * self.scale)).to(output.dtype)

    def weight_delta(self) -> torch.Tensor:
        """`multiplier * (alpha / rank) * up @ down` in the base layer's weight shape, float32: the change
        the hook makes to the layer's output, written as a change of its weight."""
        up = self.lora_up.weight.flatten(1)  # (out, rank)
        down = self.lora_down.weight.flatten(1)  # (rank, in * kh * kw)
        return ((up @ down) * (self.multiplier * self.scale)).view(
            up.shape[0], *self.lora_down.weight.shape[1:]
        )


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


def select_targets(unet: nn.Module, network_type: str, training_method: str) -> list[tuple[str, nn.Module]]:
    """The (dotted name, layer) pairs a network of this type and method wraps; pure, in UNet order.

    `lierla`: to_q/to_k/to_v/to_out.0 of every attention module. `c3lier` adds conv1, conv2,
    conv_shortcut, time_emb_proj of resnet blocks and the conv of down/up-samplers.
    """
    if network_type not in NETWORK_TYPES:
        raise InputError(f"network type {network_type!r} is unknown; choose one of {', '.join(NETWORK_TYPES)}")
    if training_method not in TRAINING_METHODS:
        raise InputError(
            f"training method {training_method!r} is unknown; choose one of {', '.join(TRAINING_METHODS)}"
        )
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


def lora_name(dotted: str) -> str:
    """UNet path -> kohya key prefix: 'mid_block.resnets.0.conv1' -> 'lora_unet_mid_block_resnets_0_conv1'."""
    return f"{PREFIX}_{dotted.replace('.', '_')}"


class SliderNetwork(nn.Module):
    """A set of LoRA modules on one UNet with one signed multiplier.

    Create, then `attach()` to hook into the UNet; `detach()` removes every hook. Several networks
    may be attached to the same UNet at once: their deltas add, each at its own multiplier.
    """

    def __init__(
        self,
        unet: nn.Module,
        targets: list[tuple[str, nn.Module]],
        rank: int,
        alpha: float | None,
        *,
        network_type: str = "c3lier",
        training_method: str = "noxattn",
        metadata: Mapping[str, str] | None = None,
        layer_ranks: Mapping[str, int] | None = None,
        layer_alphas: Mapping[str, float | None] | None = None,
    ):
        super().__init__()
        self.network_type = network_type
        self.training_method = training_method
        self.metadata = dict(metadata or {})
        self._unet_ref = [unet]  # a list so the UNet is not registered as a submodule
        self._bases: dict[str, nn.Module] = {}
        self.loras = nn.ModuleDict()
        for dotted, base in targets:
            key = lora_name(dotted)
            layer_rank = (layer_ranks or {}).get(key, rank)
            layer_alpha = (layer_alphas or {}).get(key, alpha)
            self.loras[key] = LoRAModule(key, base, layer_rank, layer_alpha)
            self._bases[key] = base
        self.rank = rank
        self.alpha = float(alpha) if alpha else float(rank)
        self._handles: list = []
        self._multiplier = 0.0
        self.to(device=_device_of(unet))

    @classmethod
    def create(
        cls, unet: nn.Module, *, network_type: str, training_method: str, rank: int, alpha: float | None
    ) -> "SliderNetwork":
        targets = select_targets(unet, network_type, training_method)
        return cls(unet, targets, rank, alpha, network_type=network_type, training_method=training_method)

    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multiplier = float(value)
        for module in self.loras.values():
            module.multiplier = self._multiplier

    @contextmanager
    def scaled(self, multiplier: float) -> Iterator["SliderNetwork"]:
        """Set the multiplier for a block and restore the previous one on exit.

        Run backward inside the block: a recomputation after it would use the wrong multiplier.
        """
        previous = self._multiplier
        self.multiplier = multiplier
        try:
            yield self
        finally:
            self.multiplier = previous

    @contextmanager
    def fused(self) -> Iterator["SliderNetwork"]:
        """Fold the slider's delta at the current multiplier into the base weights, for a block that needs
        no gradient (the folded weights carry none to the slider).

        Inside, each adapted layer computes `(W + delta) x` in one call instead of `W x` plus the hooked
        branch: the same function with different float rounding (and, for half-precision weights, the
        delta rounded to the weight's precision). Costs one copy of the adapted layers' weights. On
        exit the original weight tensors are put back untouched, bit for bit, and the hooks resume.
        Nest several networks' blocks to fold several sliders; they unwind in reverse order.
        """
        originals: dict[str, torch.Tensor] = {}
        previous = self._multiplier
        try:
            if previous != 0 and self.attached:
                half = sorted({str(b.weight.dtype) for b in self._bases.values() if b.weight.dtype != torch.float32})
                if half:
                    # W + delta rounded to bf16/fp16 loses a large part of a small delta (27-34% of a
                    # slider's effect measured on a full-size bf16 UNet): refuse rather than be silently off.
                    raise InputError(
                        f"folding a slider into {', '.join(half)} weights would round its change away; "
                        "fold only into fp32 weights (precision fp32) or run the slider hooked"
                    )
                # Only the fold itself runs under no_grad: a no_grad held across the yield would,
                # when the block is left in another grad mode (a pipeline's no_grad ends first),
                # restore a stale mode and leave gradients off for the whole process.
                with torch.no_grad():
                    for key, module in self.loras.items():
                        weight = self._bases[key].weight
                        originals[key] = weight.data
                        delta = module.weight_delta().to(weight.device)
                        weight.data = (weight.data.float() + delta).to(weight.dtype)
                        module.multiplier = 0.0
            yield self
        finally:
            for key, data in originals.items():
                self._bases[key].weight.data = data
            self.multiplier = previous

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "SliderNetwork":
        if self.attached:
            return self
        for key, module in self.loras.items():
            self._handles.append(self._bases[key].register_forward_hook(module.hook))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def state_dict_kohya(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        tensors = {}
        for key, module in self.loras.items():
            tensors[f"{key}.lora_down.weight"] = module.lora_down.weight.detach().to("cpu", dtype).contiguous()
            tensors[f"{key}.lora_up.weight"] = module.lora_up.weight.detach().to("cpu", dtype).contiguous()
            tensors[f"{key}.alpha"] = module.alpha.detach().to("cpu", dtype)
        return tensors

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None, precision: str = "fp32") -> Path:
        """Write a `.safetensors` file atomically (a temporary file renamed into place)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InputError(f"slider file '{path}' must end in .safetensors")
        meta = {
            "sliders_version": __version__,
            "sliders_rank": str(self.rank),
            "sliders_alpha": str(self.alpha),
            "sliders_network_type": self.network_type,
            "sliders_training_method": self.training_method,
            "ss_network_module": "sliders.network",
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": str(self.alpha),
            "ss_output_name": path.stem,
            **self.metadata,
            **(metadata or {}),
        }
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(self.state_dict_kohya(DTYPES[precision]), temporary, metadata=meta)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path


def _device_of(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def read_slider_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slider file; anything but a readable `.safetensors` is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"slider file '{path}' does not exist; check the path")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"slider file '{path}' is not .safetensors; only safetensors sliders are loaded (never pickle)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"slider file '{path}' is not a readable safetensors file ({error}); re-save or re-train it") from None
    return tensors, metadata


def load_slider(path: str | Path, unet: nn.Module, *, attach: bool = True) -> SliderNetwork:
    """Rebuild a slider from its file (keys, weight shapes, metadata) onto `unet`; never from the file name.

    Every key must name a Linear or Conv2d of this UNet with matching shapes; otherwise the slider
    was made for another base model, and the error says which layer does not fit.
    """
    path = Path(path)
    tensors, metadata = read_slider_file(path)
    layers = {
        lora_name(name): (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        prefix, _, leaf = key.partition(".")
        if not key.startswith(PREFIX + "_") or leaf not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise InputError(
                f"slider file '{path}' has key '{key}', which is not a UNet LoRA key; "
                "only kohya-style lora_unet_* sliders are supported"
            )
        groups.setdefault(prefix, {})[leaf] = tensor
    if not groups:
        raise InputError(f"slider file '{path}' holds no LoRA weights; re-train or re-save it")
    targets, ranks, alphas = [], {}, {}
    for prefix, parts in groups.items():
        if prefix not in layers:
            raise InputError(
                f"slider file '{path}' adapts layer '{prefix}', which this base model lacks; "
                "load it with the base model it was trained on"
            )
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise InputError(f"slider file '{path}' lacks the down or up weight of '{prefix}'; the file is incomplete")
        # Ranks come from the weight shapes (conv ranks are capped per layer), alphas from the file.
        ranks[prefix] = parts["lora_down.weight"].shape[0]
        alphas[prefix] = float(parts["alpha"]) if "alpha" in parts else None
        targets.append(layers[prefix])
    network = SliderNetwork(
        unet,
        targets,
        int(metadata.get("ss_network_dim", max(ranks.values()))),
        float(metadata["ss_network_alpha"]) if "ss_network_alpha" in metadata else None,
        network_type=metadata.get("sliders_network_type", "c3lier"),
        training_method=metadata.get("sliders_training_method", "full"),
        metadata=metadata,
        layer_ranks=ranks,
        layer_alphas=alphas,
    )
    for prefix, module in network.loras.items():
        parts = groups[prefix]
        down, up = module.lora_down.weight, module.lora_up.weight
        if parts["lora_down.weight"].shape != down.shape or parts["lora_up.weight"].shape != up.shape:
            raise InputError(
                f"slider file '{path}' layer '{prefix}' has weights of shape "
                f"{tuple(parts['lora_down.weight'].shape)}/{tuple(parts['lora_up.weight'].shape)} where this base "
                f"model needs {tuple(down.shape)}/{tuple(up.shape)}; load it with the base model it was trained on"
            )
        with torch.no_grad():
            down.copy_(parts["lora_down.weight"])
            up.copy_(parts["lora_up.weight"])
    network.requires_grad_(False)
    if attach:
        network.attach()
    return network
