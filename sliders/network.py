"""The slider network: a set of LoRA adaptors on one UNet (or FLUX transformer) with one multiplier.

Holds `SliderNetwork`, which hooks its `sliders.lora` adaptors into the layers `sliders.targets`
selects (so the base weights are never touched and removal restores the UNet exactly), sets and
scopes the multiplier, folds the delta into the weights, names its tensors in the key formats of
`sliders.formats` and saves itself as a slider file (`sliders.slider_files`); and `load_slider`,
which rebuilds one from a file's keys, shapes and metadata. It does not load models or train.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from . import __version__
from .config import DEFAULT_START_NOISE
from .errors import InputError
from .families import FLUX, detect_family
from .families.flux import kohya_tensors as flux_kohya_tensors
from .formats import (
    DEFAULT_KEY_FORMAT,
    NAMING_LABELS,
    NameMap,
    check_key_format,
    key_names,
    parse_tensors,
    unet_config,
)
from .lora import PREFIX, LoRAModule, lora_name
from .models import DTYPES
from .slider_files import DEFAULT_SCALES, read_slider_file, unfuse_flux, write_slider_file
from .targets import select_targets

logger = logging.getLogger(__name__)


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
        return write_slider_file(path, self.state_dict_for(key_format, DTYPES[precision]), meta)


def _device_of(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


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
        tensors = unfuse_flux(tensors, metadata, unet, path)
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
