"""The LoRA layer: one low-rank adaptor on a Linear or Conv2d, applied through a forward hook.

Holds `LoRAModule` (SPEC section 1), whose `hook` adds `multiplier * (alpha / rank) * up(down(x))` to
its base layer's output without touching the base weights, and `lora_name`, the kohya-style key a
layer's adaptor goes by inside `sliders`. It does not choose layers (`sliders.targets`), group
adaptors into a slider (`sliders.network`) or read and write files (`sliders.slider_files`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PREFIX = "lora_unet"


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


def lora_name(dotted: str) -> str:
    """UNet path -> kohya key prefix: 'mid_block.resnets.0.conv1' -> 'lora_unet_mid_block_resnets_0_conv1'."""
    return f"{PREFIX}_{dotted.replace('.', '_')}"
