"""FLUX.1 (dev and schnell): a flow-matching transformer instead of a UNet.

What differs from the UNet families, and how sliders handles it:

- Denoiser: `pipe.transformer` (FluxTransformer2DModel) on 2x2-packed latent tokens with rotary
  position ids; `predict` packs (B, C, h, w) latents, calls it and unpacks, so objectives and the
  trainer keep working on (B, C, h, w) tensors. It predicts a velocity `noise - x0`, not a noise.
- Schedule: flow matching, `x_sigma = (1 - sigma) x0 + sigma noise`, sigma from 1 to 0; the model's
  timestep is `sigma * 1000` (the transformer takes it divided by 1000). The pipeline's own schedule
  (N sigmas `linspace(1, 1/N)`, shifted by `mu` from the image's token count) is used for partial
  denoising and sampling.
- Conditioning: CLIP's pooled output (the `pooled` vector) and T5's last hidden state (the `embeds`
  sequence), no added time ids. Prompts are encoded once; the text encoders then leave the device.
- Guidance: no classifier-free guidance and no unconditional prompt; FLUX-dev takes the guidance
  scale as an embedding (`guidance`, default 3.5); schnell has none (the value is ignored).
- start_noise: the slider is off while `sigma * 1000` is above start_noise (default 750, the paper's
  switch on the timestep scale, read on the flow schedule's own timesteps).
- Layers (network type and training method): every Linear of the attention modules of the double
  blocks (image stream to_q/to_k/to_v/to_out.0, text stream add_q_proj/add_k_proj/add_v_proj/
  to_add_out) and of the single blocks (to_q/to_k/to_v), plus with `c3lier` the MLPs (double blocks'
  ff/ff_context linears, single blocks' proj_mlp/proj_out). Training methods: `full` all of these;
  `noxattn` and `innoxattn` leave out the text stream (add_*_proj, to_add_out, ff_context), the
  closest FLUX has to leaving out cross-attention; `xattn` only the text stream's projections and
  the single blocks' attention (where image and text tokens attend jointly); `xattn-strict` only
  add_q/k/v_proj; `selfattn` only the image stream's to_q/to_k/to_v/to_out.0; the h-space methods
  (UNet mid block) have no FLUX counterpart and are refused.
- Files: kohya's FLUX naming uses the original (BFL) module paths with fused projections
  (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1` = q, k, v, mlp):
  our separate q/k/v adaptors are written stacked (down weights concatenated, up weights
  block-diagonal, alpha times the number of parts, which is the same function) and split back on
  reading. diffusers/PEFT naming is `transformer.<path>.lora_A/B.weight`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..config import DEFAULT_START_NOISE
from .base import Defaults, Family

# kohya/BFL fused layers -> the diffusers module paths stacked in them (relative to the block), in order.
DOUBLE_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE_FUSED = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
IMAGE_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
TEXT_ATTENTION = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
DOUBLE_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
SINGLE_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v")
SINGLE_MLP = ("proj_mlp", "proj_out")


def _method_layers(method: str, network_type: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(double-block layers, single-block layers) of a training method; None for a method FLUX lacks."""
    mlp = network_type == "c3lier"
    text = TEXT_ATTENTION + (DOUBLE_MLP[2:] if mlp else ())
    if method == "full":
        return IMAGE_ATTENTION + text + (DOUBLE_MLP[:2] if mlp else ()), SINGLE_ATTENTION + (SINGLE_MLP if mlp else ())
    if method in ("noxattn", "innoxattn"):
        return IMAGE_ATTENTION + (DOUBLE_MLP[:2] if mlp else ()), SINGLE_ATTENTION + (SINGLE_MLP if mlp else ())
    if method == "xattn":
        return TEXT_ATTENTION[:3], SINGLE_ATTENTION
    if method == "xattn-strict":
        return TEXT_ATTENTION[:3], ()
    if method == "selfattn":
        return IMAGE_ATTENTION, ()
    return None


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 patches as tokens, in FluxPipeline's order."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) rotary position ids of the latent tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def flow_mu(scheduler, tokens: int) -> float | None:
    """The schedule shift `mu` FluxPipeline uses for an image of `tokens` latent tokens (dynamic shifting)."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return None
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (high - low) / (top - base)
    return tokens * slope + (low - slope * base)


def set_flow_schedule(scheduler, steps: int, h: int, w: int, device) -> None:
    """The pipeline's own N-step schedule for latents of (h, w): sigmas linspace(1, 1/N), shifted by mu."""
    import numpy as np

    sigmas = np.linspace(1.0, 1 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device, mu=flow_mu(scheduler, (h // 2) * (w // 2)))


# The transformer of black-forest-labs/FLUX.1-dev (the fields that shape its modules): the layout of FLUX
# files that record no base model (the official flux-sliders `.pt` files) and of the interop tests.
FLUX_DEV_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}


class FluxFamily(Family):
    flow_matching = True

    def claims(self, unet_config: Mapping[str, Any], pipeline_class: str | None = None) -> bool:
        if pipeline_class:
            return pipeline_class.startswith("Flux")
        return "joint_attention_dim" in unet_config and "num_single_layers" in unet_config

    def claims_checkpoint(self, keys: Sequence[str]) -> bool:
        return any(key.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for key in keys)

    def denoiser(self, pipe):
        return pipe.transformer

    def pixel_multiple(self, vae_factor: int) -> int:
        """Whole 2x2 patches of latent cells: 16 px for FLUX's 8 px VAE cells."""
        return 2 * vae_factor

    def text_encoders(self, pipe) -> tuple[list, list]:
        return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]

    @torch.no_grad()
    def encode_prompts(self, tokenizers, encoders, prompts, clip_skip=None):
        """{prompt: (T5 last hidden state (L, D), CLIP pooled output (P,))}, as FluxPipeline encodes them;
        L is the T5 tokenizer's model_max_length, at most 512 (dev's maximum)."""
        unique = list(dict.fromkeys(prompts))
        (clip_tokenizer, t5_tokenizer), (clip, t5) = tokenizers, encoders
        ids = clip_tokenizer(unique, padding="max_length", max_length=clip_tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        pooled = clip(ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output.float().cpu()
        length = min(t5_tokenizer.model_max_length, 512)
        ids = t5_tokenizer(unique, padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt").input_ids
        states = t5(ids.to(next(t5.parameters()).device), output_hidden_states=False)[0].float().cpu()  # (N, L, D)
        return {text: (states[i], pooled[i]) for i, text in enumerate(unique)}

    def sequence_length(self, pipe) -> int:
        return min(pipe.tokenizer_2.model_max_length, 512)

    def predict(self, model, latents, timestep, cond, guidance=None):
        """The transformer's velocity for latents (B, C, h, w) at `timestep` (sigma * 1000), in its dtype."""
        dtype = model.dtype
        b, _, h, w = latents.shape
        cond = cond.to(latents.device, dtype)
        timestep = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).reshape(-1).expand(b)
        embed = None
        if model.config.guidance_embeds:
            embed = torch.full((b,), self.defaults.guidance_scale if guidance is None else float(guidance),
                               device=latents.device, dtype=torch.float32)
        out = model(
            hidden_states=pack(latents.to(dtype)), timestep=(timestep / 1000).to(dtype), guidance=embed,
            pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds,
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=latents.device, dtype=dtype),
            img_ids=image_ids(h, w, latents.device, dtype), return_dict=False,
        )[0]
        return unpack(out, h, w)

    def target_modules(self, model, network_type: str, training_method: str):
        from ..errors import InputError

        layers = _method_layers(training_method, network_type)
        if layers is None:
            raise InputError(f"training method '{training_method}' has no FLUX counterpart (it names the UNet's mid "
                             "block); use full, noxattn, xattn, xattn-strict or selfattn")
        double, single = layers
        targets = []
        for kind, blocks, names in (("transformer_blocks", model.transformer_blocks, double),
                                    ("single_transformer_blocks", model.single_transformer_blocks, single)):
            for i, block in enumerate(blocks):
                for name in names:
                    try:
                        module = block.get_submodule(name)
                    except AttributeError:
                        continue
                    if isinstance(module, torch.nn.Linear):
                        targets.append((f"{kind}.{i}.{name}", module))
        return targets

    def pipeline_prompt(self, pipe, prompt, negative_prompt, device, clip_skip=None):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
                                               max_sequence_length=self.sequence_length(pipe))
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}  # (1, L, D), (1, P)

    def preview_pipeline(self, pipe, unet, vae, scheduler):
        return type(pipe)(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                          tokenizer_2=None, transformer=unet)


FLUX = FluxFamily(
    name="flux",
    label="FLUX.1",
    pipeline_class="FluxPipeline",
    # The official flux-sliders code: 512 px, 30 steps and guidance embedding 3.5 (dev).
    defaults=Defaults(resolution=512, sample_resolution=512, start_noise=DEFAULT_START_NOISE, guidance_scale=3.5, steps=30),
    kohya_ldm_names=True,
    base_version="flux1",
    comfyui_checkpoint="flux1-dev.safetensors",
    hub_id="black-forest-labs/FLUX.1-dev",
    unet_config=FLUX_DEV_CONFIG,
)


# ---------------------------------------------------------------- kohya FLUX naming (fused BFL layers)


def _fused_layers(model) -> list[tuple[str, list[str]]]:
    """(kohya layer name, [diffusers dotted paths stacked in it]) for every fused layer of `model`."""
    layers = []
    for i in range(len(model.transformer_blocks)):
        for name, parts in DOUBLE_FUSED.items():
            layers.append((f"lora_unet_double_blocks_{i}_{name}", [f"transformer_blocks.{i}.{p}" for p in parts]))
    for i in range(len(model.single_transformer_blocks)):
        for name, parts in SINGLE_FUSED.items():
            layers.append((f"lora_unet_single_blocks_{i}_{name}", [f"single_transformer_blocks.{i}.{p}" for p in parts]))
    return layers


def kohya_tensors(model, modules: Mapping[str, Any], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The slider's tensors in kohya's FLUX naming, and which parts each fused layer holds.

    `modules` maps a diffusers dotted path to its LoRAModule. The parts of a fused layer are stacked:
    downs concatenated (sum r, in), ups block-diagonal (sum out, sum r), rows of a part the slider
    does not adapt left zero; alpha = (alpha / r) * sum r, so the scale of each part is unchanged
    (parts of different scales have it folded into their ups and alpha = sum r)."""
    tensors, present = {}, {}
    for key, paths in _fused_layers(model):
        parts = [(path, modules.get(path)) for path in paths]
        adapted = [(path, lora) for path, lora in parts if lora is not None]
        if not adapted:
            continue
        scales = {lora.scale for _, lora in adapted}
        same = len(scales) == 1
        downs = [lora.lora_down.weight.detach().float() for _, lora in adapted]
        total = sum(d.shape[0] for d in downs)
        outs = [model.get_submodule(path).out_features for path in paths]
        up = torch.zeros(sum(outs), total)
        row = col = 0
        for (path, lora), out in zip(parts, outs):
            if lora is not None:
                weight = lora.lora_up.weight.detach().float() * (1.0 if same else lora.scale)
                up[row:row + out, col:col + weight.shape[1]] = weight
                col += weight.shape[1]
            row += out
        alpha = (next(iter(scales)) if same else 1.0) * total
        tensors[f"{key}.lora_down.weight"] = torch.cat(downs).to(dtype).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(alpha).to(dtype)
        present[key] = [path for path, _ in adapted]
    return tensors, present


def split_kohya(tensors: Mapping[str, torch.Tensor], model, fused_parts: Mapping[str, list[str]] | None
                ) -> dict[str, dict[str, Any]]:
    """Kohya FLUX keys -> {diffusers dotted path: {"down", "up", "alpha", "key"}}; other keys are left out.

    A fused layer's parts are recovered from the file's `sliders_fused_parts` record (ours), else from
    the columns each part's rows of the up weight use (block-diagonal stacking), else, for a LoRA
    trained fused (every part uses every column), each part keeps the whole down weight and its rows."""
    out: dict[str, dict[str, Any]] = {}
    for key, paths in _fused_layers(model):
        down, up = tensors.get(f"{key}.lora_down.weight"), tensors.get(f"{key}.lora_up.weight")
        if down is None or up is None:
            continue
        down, up = down.float(), up.float()
        alpha_t = tensors.get(f"{key}.alpha")
        total = down.shape[0]
        scale = (float(alpha_t) / total) if alpha_t is not None else 1.0
        outs = [model.get_submodule(path).out_features for path in paths]
        rows, start = {}, 0
        for path, size in zip(paths, outs):
            rows[path] = up[start:start + size]
            start += size
        recorded = (fused_parts or {}).get(key)
        columns: dict[str, torch.Tensor] = {}
        if recorded is not None:
            ranks = [total // len(recorded)] * len(recorded)
            col = 0
            for path, r in zip(recorded, ranks):
                columns[path] = torch.arange(col, col + r)
                col += r
        else:
            used = {p: (rows[p] != 0).any(0).nonzero().flatten() for p in paths}
            used = {p: c for p, c in used.items() if c.numel()}
            flat = torch.cat(list(used.values())) if used else torch.zeros(0, dtype=torch.long)
            disjoint = flat.numel() == flat.unique().numel()
            columns = used if disjoint else {p: torch.arange(total) for p in paths}
        for path, cols in columns.items():
            r = cols.numel()
            out[path] = {"down": down[cols], "up": rows[path][:, cols], "alpha": scale * r, "key": key}
    return out
