"""The slider network: low-rank adaptors on a UNet's Linear and Conv2d layers.

Holds the LoRA module (SPEC section 1), the pure function that chooses which UNet layers a network
type and training method cover, the network that attaches to a UNet through forward hooks (so the
base weights are never touched and removal restores the UNet exactly), and save/load as
`.safetensors` in the key formats of `sliders.formats` (reading also the official `.pt` sliders,
weights only). It does not load models or train.
"""

from __future__ import annotations

import json
import logging
import math
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
from .families import FLUX, detect_family
from .families.flux import kohya_tensors as flux_kohya_tensors
from .families.flux import split_kohya as flux_split_kohya
from .files import atomic_tensor_path
from .formats import (
    DEFAULT_KEY_FORMAT,
    NAMING_LABELS,
    NameMap,
    check_key_format,
    key_names,
    parse_tensors,
    unet_config,
)
from .models import DTYPES

logger = logging.getLogger(__name__)

PREFIX = "lora_unet"
# What a slider file recommends to the UIs that use it, where training recorded nothing else: the
# paper's SDEdit-style switch (sliders off while the timestep is above 750) and the scales sampled.
DEFAULT_START_NOISE = 750
DEFAULT_SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0)
# Files read as a torch pickle, always with weights_only=True: no code in them runs.
TORCH_SUFFIXES = (".pt", ".ckpt", ".pth")
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
            # Capped like a conv: a rank above either side adds parameters and no expressiveness.
            rank = min(rank, base.in_features, base.out_features)
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"{name}: LoRA wraps nn.Linear or nn.Conv2d, not {type(base).__name__}")
        self.rank = rank
        alpha = float(alpha) if alpha else float(rank)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.scale = alpha / rank
        # `multiplier * scale` as a 0-d tensor as well as a float: a compiled UNet reads the tensor,
        # so a new multiplier changes a value in the graph instead of recompiling it.
        self.register_buffer("factor", torch.zeros(()), persistent=False)
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

    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multiplier = float(value)
        self.active = self._multiplier != 0
        with torch.no_grad():
            self.factor.fill_(self._multiplier * self.scale)

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # At multiplier 0 the LoRA branch is skipped entirely: the output is the base model's, bit for bit.
        if not self.active:
            return output
        branch = self._branch(inputs[0].to(self.lora_down.weight.dtype))
        return output + (branch * self.factor).to(output.dtype)

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
        self._dotted: dict[str, str] = {}
        self.loras = nn.ModuleDict()
        for dotted, base in targets:
            key = lora_name(dotted)
            self._dotted[key] = dotted
            layer_rank = (layer_ranks or {}).get(key, rank)
            layer_alpha = (layer_alphas or {}).get(key, alpha)
            self.loras[key] = LoRAModule(key, base, layer_rank, layer_alpha)
            self._bases[key] = base
        self.rank = rank
        self.alpha = float(alpha) if alpha else float(rank)
        self._handles: list = []
        self._multiplier = 0.0
        device = _device_of(unet)
        # A UNet on the meta device gives names and shapes only (file conversion): the slider's
        # weights then stay real, on the CPU.
        if device.type != "meta":
            self.to(device=device)

    @classmethod
    def create(
        cls, unet: nn.Module, *, network_type: str, training_method: str, rank: int, alpha: float | None
    ) -> "SliderNetwork":
        if FLUX.claims(unet_config(unet)):
            select_targets(unet, network_type, training_method, check_only=True)
            targets = FLUX.target_modules(unet, network_type, training_method)
        else:
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

    def state_dict_for(self, key_format: str = DEFAULT_KEY_FORMAT, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The slider's tensors named in `key_format` (`sliders.formats`), on the CPU in `dtype`.

        `peft` has no alpha: `alpha / rank` is folded into the up weights, which is what the
        diffusers/PEFT convention (scale 1 without alphas) then applies.
        """
        check_key_format(key_format)
        config = unet_config(self._unet_ref[0])
        if FLUX.claims(config):
            return self._flux_state_dict(key_format, dtype)
        name_map = NameMap(config)
        if key_format == "kohya" and not detect_family(config).kohya_ldm_names:
            key_format = "diffusers"  # kohya names SD 1.x/2.x layers by their diffusers paths
        tensors = {}
        for key, module in self.loras.items():
            down_key, up_key, alpha_key = key_names(key[len(PREFIX) + 1 :], key_format, name_map, self._dotted[key])
            up = module.lora_up.weight.detach().float()
            if alpha_key is None:
                up = up * module.scale
            tensors[down_key] = module.lora_down.weight.detach().to("cpu", dtype).contiguous()
            tensors[up_key] = up.to("cpu", dtype).contiguous()
            if alpha_key is not None:
                tensors[alpha_key] = module.alpha.detach().to("cpu", dtype)
        return tensors

    def _flux_state_dict(self, key_format: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """FLUX: kohya's fused BFL naming, diffusers-path kohya keys, or `transformer.` PEFT keys."""
        if key_format == "kohya":
            by_path = {self._dotted[key]: module for key, module in self.loras.items()}
            return flux_kohya_tensors(self._unet_ref[0], by_path, dtype)[0]
        tensors = {}
        for key, module in self.loras.items():
            dotted = self._dotted[key]
            up = module.lora_up.weight.detach().float()
            if key_format == "peft":
                tensors[f"transformer.{dotted}.lora_A.weight"] = module.lora_down.weight.detach().to("cpu", dtype).contiguous()
                tensors[f"transformer.{dotted}.lora_B.weight"] = (up * module.scale).to("cpu", dtype).contiguous()
            else:
                tensors[f"{key}.lora_down.weight"] = module.lora_down.weight.detach().to("cpu", dtype).contiguous()
                tensors[f"{key}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
                tensors[f"{key}.alpha"] = module.alpha.detach().to("cpu", dtype)
        return tensors

    def state_dict_kohya(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The tensors in kohya's SDXL naming, the default file format."""
        return self.state_dict_for("kohya", dtype)

    def save(
        self,
        path: str | Path,
        metadata: Mapping[str, str] | None = None,
        precision: str = "fp32",
        key_format: str = DEFAULT_KEY_FORMAT,
    ) -> Path:
        """Write a `.safetensors` file atomically (a temporary file renamed into place).

        `key_format` names the layers (`kohya`, the default, loads completely in diffusers,
        ComfyUI, Forge and AUTOMATIC1111; see `sliders.formats`). The recommended `start_noise`
        and scales for UIs are recorded where the caller's metadata has none.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InputError(f"slider file '{path}' must end in .safetensors")
        check_key_format(key_format, "save.key_format")
        meta = {
            "sliders_start_noise": str(DEFAULT_START_NOISE),
            "sliders_scales": json.dumps(list(DEFAULT_SCALES)),
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
            # What this file is, whatever the file it was loaded from said.
            "sliders_key_format": key_format,
            "sliders_unet_config": json.dumps(unet_config(self._unet_ref[0]), default=str),
            "sliders_family": detect_family(unet_config(self._unet_ref[0])).name,
        }
        if key_format == "kohya" and FLUX.claims(unet_config(self._unet_ref[0])):
            by_path = {self._dotted[key]: module for key, module in self.loras.items()}
            meta["sliders_fused_parts"] = flux_kohya_tensors(self._unet_ref[0], by_path, torch.float32)[1]
        meta.pop("lora_adapter_metadata", None)  # a source file's PEFT alphas are in the tensors now
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_tensor_path(path) as temporary:
            save_file(self.state_dict_for(key_format, DTYPES[precision]), temporary, metadata=meta)
        return path


def _device_of(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def read_slider_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a slider file.

    `.safetensors` files, and the official code's `.pt` sliders (a torch.save of the network's
    state_dict), read with `torch.load(weights_only=True)` so that no code in the file runs; those
    have no metadata. Anything else, or an unreadable file, is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"slider file '{path}' does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return _read_torch_file(path), {}
    if suffix != ".safetensors":
        raise InputError(
            f"slider file '{path}' is not .safetensors (nor a {'/'.join(TORCH_SUFFIXES)} state dict); "
            "give a slider file in one of these"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"slider file '{path}' is not a readable safetensors file ({error}); re-save or re-train it") from None
    return tensors, metadata


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"slider file '{path}' is not .safetensors and torch.load(weights_only=True) cannot read it ({reason}); "
            "only plain tensor state dicts load this way, never pickled code"
        ) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"slider file '{path}' holds no state dict of tensors; save the network's state_dict() instead")
    return {str(k): v for k, v in data.items()}


def _unfuse_flux(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], model: nn.Module, path: Path
                 ) -> dict[str, torch.Tensor]:
    """A FLUX file's kohya fused-layer keys (`lora_unet_double_blocks_0_img_attn_qkv`) as one diffusers-path
    key set per part (`sliders.families.flux.split_kohya`); other keys are kept as they are."""
    fused = [k for k in tensors if k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))]
    if not fused:
        return tensors
    try:
        recorded = json.loads(metadata.get("sliders_fused_parts", "null"))
    except json.JSONDecodeError:
        recorded = None
    parts = flux_split_kohya(tensors, model, recorded)
    known = {f"{part['key']}.{leaf}" for part in parts.values() for leaf in ("lora_down.weight", "lora_up.weight", "alpha")}
    unknown = [k for k in fused if k not in known]
    if unknown:
        raise InputError(f"slider file '{path}' (kohya FLUX naming) has key '{unknown[0]}', which this FLUX model "
                         "lacks or sliders does not adapt; load it with the base model it was trained on")
    out = {k: v for k, v in tensors.items() if k not in set(fused)}
    for dotted, part in parts.items():
        key = lora_name(dotted)
        out[f"{key}.lora_down.weight"] = part["down"]
        out[f"{key}.lora_up.weight"] = part["up"]
        out[f"{key}.alpha"] = torch.tensor(part["alpha"])
    return out


def load_slider(
    path: str | Path, unet: nn.Module, *, attach: bool = True, base: str = "this base model",
    fix: str = "load it with the base model it was trained on",
    contents: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None,
) -> SliderNetwork:
    """Rebuild a slider from its file (keys, weight shapes, metadata) onto `unet`; never from the file name.

    Every key naming (`sliders.formats`) is read. Every layer must be a Linear or Conv2d of this
    UNet with matching shapes; otherwise the slider was made for another base model, and the error
    says which naming the file has, which layer does not fit, the model (`base`) and the `fix`.
    Text-encoder layers are left out with a warning. `contents` is what `read_slider_file` gave for
    `path`, when the caller has read it already. On a UNet of the meta device (layer names and shapes,
    no weights) this checks that the slider fits without loading the model.
    """
    path = Path(path)
    tensors, metadata = contents if contents is not None else read_slider_file(path)
    if FLUX.claims(unet_config(unet)):
        tensors = _unfuse_flux(tensors, metadata, unet, path)
    parsed = parse_tensors(tensors, metadata, unet_config(unet), f"slider file '{path}'")
    if not parsed.layers:
        extra = f" (only {parsed.text_encoder_layers} text-encoder layers)" if parsed.text_encoder_layers else ""
        raise InputError(f"slider file '{path}' holds no UNet LoRA weights{extra}; re-train or re-save it")
    layers = {
        lora_name(name)[len(PREFIX) + 1 :]: (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    targets, ranks, alphas = [], {}, {}
    for name, parts in parsed.layers.items():
        naming = NAMING_LABELS[parts.naming]
        if name not in layers:
            raise InputError(
                f"slider file '{path}' ({naming}) adapts layer '{parts.key}', which {base} lacks; {fix}"
            )
        if parts.down is None or parts.up is None:
            raise InputError(
                f"slider file '{path}' ({naming}) lacks the down or up weight of '{parts.key}'; the file is incomplete"
            )
        # Ranks come from the weight shapes (conv ranks are capped per layer), alphas from the file.
        ranks[lora_name(name)] = parts.down.shape[0]
        alphas[lora_name(name)] = parts.alpha
        targets.append(layers[name])
    known = [a for a in alphas.values() if a is not None]
    network_alpha = None
    if known:
        network_alpha = float(metadata["ss_network_alpha"]) if "ss_network_alpha" in metadata else known[0]
    network = SliderNetwork(
        unet,
        targets,
        int(metadata.get("ss_network_dim", max(ranks.values()))),
        network_alpha,
        network_type=metadata.get("sliders_network_type", "c3lier"),
        training_method=metadata.get("sliders_training_method", "full"),
        metadata=metadata,
        layer_ranks=ranks,
        layer_alphas=alphas,
    )
    for key, module in network.loras.items():
        parts = parsed.layers[key[len(PREFIX) + 1 :]]
        down, up = module.lora_down.weight, module.lora_up.weight
        if parts.down.shape != down.shape or parts.up.shape != up.shape:
            raise InputError(
                f"slider file '{path}' ({NAMING_LABELS[parts.naming]}) layer '{parts.key}' has weights of shape "
                f"{tuple(parts.down.shape)}/{tuple(parts.up.shape)} where {base} needs "
                f"{tuple(down.shape)}/{tuple(up.shape)}; {fix}"
            )
        with torch.no_grad():
            down.copy_(parts.down)
            up.copy_(parts.up)
    network.requires_grad_(False)
    if attach:
        network.attach()
    return network
