"""Quantization of FLUX.1's transformer: `check_quantize` says in one line whether a
`pretrained_model.quantize` mode (8bit, 4bit) can run on this device with this bitsandbytes, and
`quantize_denoiser` replaces the Linear layers of the transformer's double and single blocks by
bitsandbytes' frozen 8-bit (LLM.int8) or 4-bit (NF4) layers, which a slider's adaptors hook as they
hook a Linear. Split out of `models.py`, which re-exports these names; it knows families only
through the `family` object passed in, so it imports nothing of sliders but `errors`.
"""

from __future__ import annotations

import logging

import torch

from .errors import InputError

logger = logging.getLogger(__name__)


QUANTIZED_BLOCKS = ("transformer_blocks", "single_transformer_blocks")  # FLUX's blocks: nearly all its weights


def check_quantize(mode: str, family, device: torch.device | str, compute_dtype: torch.dtype = torch.bfloat16,
                   option: str = "pretrained_model.quantize") -> None:
    """One line unless `pretrained_model.quantize` `mode` can run here: FLUX.1 only (a UNet family
    trains unquantized), on CUDA or the CPU, with a bitsandbytes that runs a small layer of that kind
    forward and backward on this device (its CPU backend depends on its version). `option` names the
    setting as the user gave it (`--quantize` on the image-making commands)."""
    if mode == "none":
        return
    where = f"{option} {mode}"
    off = f"leave {option} out" if option.startswith("--") else f"set {option} to none"
    if not family.flow_matching:
        raise InputError(f"{where} quantizes FLUX.1's transformer; {family.label} trains unquantized (its UNet "
                         f"fits); {off}")
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"{where} runs on CUDA (or bitsandbytes' CPU backend), not {device.type}; "
                         f"use --device cuda or {off}")
    try:
        import bitsandbytes
    except ImportError:
        raise InputError(f"{where} needs bitsandbytes: pip install 'sliders[8bit]', or {off}") from None
    failure = _quantized_failure(mode, device, compute_dtype)
    if failure:
        raise InputError(f"{where}: bitsandbytes {bitsandbytes.__version__} cannot run {mode} layers on {device.type} "
                         f"({failure}); use a CUDA GPU or {off}")


def quantize_denoiser(model: torch.nn.Module, mode: str, device: torch.device | str, family,
                      compute_dtype: torch.dtype = torch.bfloat16, option: str = "pretrained_model.quantize") -> int:
    """Replace every Linear of a FLUX transformer's double and single blocks by bitsandbytes' 8-bit
    (LLM.int8, outlier threshold 6) or 4-bit (NF4) layer, quantized as it moves to `device` (one layer
    at a time: the float weights never reach the device). Embedders and the output layer stay float.
    The quantized weights are frozen; a slider's adaptors hook the new layers as they hook a Linear
    (they are Linear subclasses with the same in/out features) and stay float32. Returns the number
    of layers replaced; `mode` 'none' does nothing. Checked first (`check_quantize`, naming `option`)."""
    if mode == "none":
        return 0
    check_quantize(mode, family, device, compute_dtype, option)
    count = 0
    for blocks in QUANTIZED_BLOCKS:
        for module in list(getattr(model, blocks).modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(module, child_name, quantized_linear(child, mode, compute_dtype).to(device))
                    count += 1
    logger.info("%s %s: %d Linear layers of the transformer quantized on %s", option, mode, count, device)
    return count


def quantized_linear(linear: torch.nn.Linear, mode: str, compute_dtype: torch.dtype) -> torch.nn.Linear:
    """A bitsandbytes copy of `linear` (frozen), not yet quantized: that happens when it moves to a device."""
    import bitsandbytes as bnb

    bias = linear.bias is not None
    if mode == "8bit":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                    threshold=6.0)
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    elif mode == "4bit":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                                  quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        # bitsandbytes' repacked CPU inference kernel (no-grad calls in eval mode) refuses layers whose sizes
        # are not multiples of its blocks; the plain 4-bit path computes the same function at any size.
        layer.support_avx512bf16_for_cpu = False
    else:
        raise InputError(f"pretrained_model.quantize is {mode!r}; choose none, 8bit or 4bit")
    if bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.train(linear.training)


def _quantized_failure(mode: str, device: torch.device, compute_dtype: torch.dtype) -> str:
    """'' when this bitsandbytes runs a `mode` layer's forward and backward (to its input, as the
    slider's gradient flows) on `device`, else the first line of what went wrong."""
    try:
        layer = quantized_linear(torch.nn.Linear(64, 64), mode, compute_dtype).to(device)
        inputs = torch.randn(2, 64, device=device, dtype=compute_dtype, requires_grad=True)
        layer.eval()
        with torch.no_grad():  # as in partial denoising and the frozen predictions
            layer(inputs)
        layer(inputs).float().sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return "no finite gradient through the layer"
    except Exception as error:  # noqa: BLE001 - any failure of the library means it cannot run here
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return ""
