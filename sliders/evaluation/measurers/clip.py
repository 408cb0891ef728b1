"""CLIP scores against the slider's two texts, and LPIPS to the reference image: sliders on real models.

Numeric attributes, per image (CLIP score as in Hessel et al. 2021 without its clipping at 0 and
its weight 2.5: 100 x the cosine similarity of the image and text embeddings):
`clip_positive` the score against the positive text (what positive multipliers should add),
`clip_negative` against the negative text, `clip_direction` = clip_positive - clip_negative, the
attribute score the report's target defaults to (it rises as the image moves from the negative
text towards the positive one, and a change of the image that both texts share cancels).
Structure, against the reference image: `lpips` (Zhang et al. 2018, the `lpips` package, when it
imports) and `clip_image_distance`, 1 - cosine of the two CLIP image embeddings (always there).
The texts come from the slider file's recorded prompts (`slider_texts`) unless the options give
them. It does not aggregate (see `quality`, `report`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from ...errors import InputError
from . import DEFAULT_BATCH_SIZE, Measurer, check_options, parse_batch_size

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

LPIPS_NETS = ("alex", "vgg", "squeeze")
LPIPS_CHOICES = ("auto", *LPIPS_NETS, "off")
LPIPS_WEIGHTS = ("imagenet", "random")
CLIP_PRECISIONS = ("fp32", "fp16", "bf16")
LPIPS_INSTALL = "pip install 'sliders[eval]' (lpips and torchvision, a torchvision built for your torch)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def load_lpips(net: str, weights: str, device: "torch.device | str"):
    """(LPIPS model, None), or (None, why not) when the `lpips` package cannot be imported.

    `lpips` ships only its linear heads (a few kB, calibrated on human judgements); the backbone
    (AlexNet, VGG16 or SqueezeNet, ImageNet weights) is torchvision's, which downloads it into
    torch's hub cache (~/.cache/torch/hub/checkpoints) on first use. `weights="random"` keeps the
    backbone untrained: no download, for tests only, the distances then mean nothing."""
    try:
        import lpips
    except (ImportError, RuntimeError, OSError) as error:
        # A torchvision built for another torch (a CUDA one beside a CPU torch) fails with RuntimeError.
        return None, _first_line(error)
    try:
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=weights == "random", verbose=False)
    except (OSError, RuntimeError) as error:
        raise InputError(f"could not build LPIPS ({net}): {_first_line(error)}; its {net} ImageNet weights are "
                         "downloaded by torchvision on first use, so run once online or use --measurer_arg lpips=off"
                         ) from None
    return model.to(device).eval(), None


class ClipMeasurer(Measurer):
    """CLIP similarity to a positive and a negative text; LPIPS and CLIP image distance to the reference."""

    name: ClassVar[str] = "clip"
    numeric = ("clip_positive", "clip_negative", "clip_direction")
    categorical = ()
    target: ClassVar[str] = "clip_direction"
    positive_attribute = "clip_positive"
    negative_attribute = "clip_negative"
    options: ClassVar[Mapping[str, str]] = {
        "model": "CLIP folder or hub id in transformers' format (required), e.g. openai/clip-vit-large-patch14",
        "positive": "text positive multipliers move towards (default: the slider's recorded prompts)",
        "negative": "text negative multipliers move towards (default: the slider's recorded prompts)",
        "batch_size": f"images per CLIP (and LPIPS) call (default {DEFAULT_BATCH_SIZE})",
        "precision": "CLIP dtype: fp32 (default), fp16 or bf16",
        "device": "where CLIP runs (default: the run's device)",
        "lpips": "LPIPS backbone: auto (alex when the lpips package imports; default), alex, vgg, squeeze or off",
        "lpips_weights": "imagenet (default; torchvision downloads them once) or random (tests only)",
    }

    def __init__(self, model, processor, positive: str, negative: str, *, device: "torch.device | str" = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, lpips_model=None, lpips_net: str | None = None,
                 lpips_missing: str | None = None, model_name: str = "", text_source: str = "options"):
        import torch

        self.model, self.processor = model, processor
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.texts = (positive, negative)
        self.text_source = text_source
        self.model_name = model_name
        self.lpips_model, self.lpips_net, self.lpips_missing = lpips_model, lpips_net, lpips_missing
        self.preservation = "lpips" if lpips_model is not None else None
        self._image_cache: dict[str, "torch.Tensor"] = {}
        self._text = self._embed_texts([positive, negative])  # (2, D), unit length

    @classmethod
    def create(cls, options: Mapping[str, str], *, device: "torch.device | str" = "cpu",
               slider_prompts: Sequence[Mapping[str, Any]] = ()) -> "ClipMeasurer":
        """Checks every option before loading anything, then loads CLIP (and LPIPS)."""
        from ...models import DTYPES, load_clip, parse_device

        check_options(cls, options)
        model_name = options.get("model", "").strip()
        if not model_name:
            raise InputError("measurer 'clip' needs its model: --measurer_arg model=openai/clip-vit-large-patch14 "
                             "(a hub id) or model=PATH (a CLIP folder in transformers' format)")
        positive, negative, source = _texts(options, slider_prompts)
        batch_size = parse_batch_size(options.get("batch_size", DEFAULT_BATCH_SIZE))
        precision = options.get("precision", "fp32")
        if precision not in CLIP_PRECISIONS:
            raise InputError(f"--measurer_arg precision={precision}: choose one of {', '.join(CLIP_PRECISIONS)}")
        lpips_choice = options.get("lpips", "auto")
        if lpips_choice not in LPIPS_CHOICES:
            raise InputError(f"--measurer_arg lpips={lpips_choice}: choose one of {', '.join(LPIPS_CHOICES)}")
        weights = options.get("lpips_weights", "imagenet")
        if weights not in LPIPS_WEIGHTS:
            raise InputError(f"--measurer_arg lpips_weights={weights}: choose one of {', '.join(LPIPS_WEIGHTS)}")
        where = parse_device(options["device"]) if options.get("device") else device

        lpips_model, net, missing = None, None, None
        if lpips_choice == "off":
            missing = "turned off (--measurer_arg lpips=off)"
        else:
            net = "alex" if lpips_choice == "auto" else lpips_choice
            lpips_model, missing = load_lpips(net, weights, where)
            if lpips_model is None:
                if lpips_choice != "auto":
                    raise InputError(f"--measurer_arg lpips={lpips_choice}: the lpips package cannot be imported "
                                     f"({missing}); install it with {LPIPS_INSTALL}, or use lpips=off")
                logger.warning("LPIPS not measured: the lpips package cannot be imported (%s); %s", missing,
                               LPIPS_INSTALL)
                net = None
        model, processor = load_clip(model_name, DTYPES[precision], where)
        return cls(model, processor, positive, negative, device=where, batch_size=batch_size,
                   lpips_model=lpips_model, lpips_net=net, lpips_missing=missing, model_name=model_name,
                   text_source=source)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "positive": self.texts[0],
            "negative": self.texts[1],
            "texts_from": self.text_source,
            "lpips": self.lpips_net,
            "lpips_missing": self.lpips_missing,
        }

    # ----------------------------------------------------------------------------------------------

    def _embed_texts(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
            embeds = self.model.text_projection(hidden.pooler_output)
        return torch.nn.functional.normalize(embeds.float(), dim=-1)

    def _embed_images(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """(B, D) unit-length image embeddings; an image seen before (a reference) is not embedded again."""
        import torch

        keys = [_image_key(image) for image in images]
        new = [(key, image) for key, image in dict(zip(keys, images)).items() if key not in self._image_cache]
        if new:
            pixels = self.processor.image_processor(images=[image.convert("RGB") for _, image in new],
                                                    return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                hidden = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype))
                embeds = torch.nn.functional.normalize(self.model.visual_projection(hidden.pooler_output).float(), dim=-1)
            for (key, _), embed in zip(new, embeds):
                self._image_cache[key] = embed
        return torch.stack([self._image_cache[key] for key in keys])

    def measure(self, images: Sequence["Image.Image"]) -> list[dict[str, float]]:
        scores = 100.0 * self._embed_images(images) @ self._text.T  # (B, 2): positive, negative
        return [{"clip_positive": float(p), "clip_negative": float(n), "clip_direction": float(p - n)}
                for p, n in scores.tolist()]

    def __call__(self, image: "Image.Image") -> dict[str, float]:
        return self.measure([image])[0]

    def compare(self, references: Sequence["Image.Image"], images: Sequence["Image.Image"]) -> list[dict[str, float]]:
        distance = 1.0 - (self._embed_images(references) * self._embed_images(images)).sum(dim=-1)
        out = [{"clip_image_distance": float(d)} for d in distance.tolist()]
        if self.lpips_model is not None:
            for row, value in zip(out, self._lpips(references, images)):
                row["lpips"] = value
        return out

    def structure(self, image_a: "Image.Image", image_b: "Image.Image") -> dict[str, float]:
        return self.compare([image_a], [image_b])[0]

    def _lpips(self, references: Sequence["Image.Image"], images: Sequence["Image.Image"]) -> list[float]:
        import numpy as np
        import torch

        def tensor(image: "Image.Image", size: tuple[int, int]) -> "torch.Tensor":
            image = image.convert("RGB")
            if image.size != size:  # an input photo against its edit: compared at the edit's size
                image = image.resize(size)
            array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # lpips takes [-1, 1]
            return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)

        pairs = [(tensor(reference, image.size), tensor(image, image.size)) for reference, image in zip(references, images)]
        values: list[float] = [0.0] * len(pairs)
        by_size: dict[tuple[int, ...], list[int]] = {}  # one batch holds images of one size
        for index, (_, b) in enumerate(pairs):
            by_size.setdefault(tuple(b.shape), []).append(index)
        with torch.no_grad():
            for indices in by_size.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start:start + self.batch_size]
                    a = torch.stack([pairs[i][0] for i in chunk]).to(self.device)
                    b = torch.stack([pairs[i][1] for i in chunk]).to(self.device)
                    for i, value in zip(chunk, self.lpips_model(a, b).flatten().tolist()):
                        values[i] = float(value)
        return values


def _image_key(image: "Image.Image") -> str:
    digest = hashlib.sha1(image.tobytes()).hexdigest()
    return f"{image.mode}{image.size}{digest}"


def _texts(options: Mapping[str, str], slider_prompts: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """The positive and negative texts, from the options or else the first slider recording both."""
    recorded = [texts for texts in slider_prompts if texts.get("positive") and texts.get("negative")]
    if len({(t["positive"], t["negative"]) for t in recorded}) > 1 and not (options.get("positive") and options.get("negative")):
        logger.warning("the sliders record different texts; scoring every image against the first slider's "
                       "(%r, %r); give --measurer_arg positive=... negative=... to choose", *(recorded[0][k] for k in ("positive", "negative")))
    positive = options.get("positive") or (recorded[0]["positive"] if recorded else "")
    negative = options.get("negative") or (recorded[0]["negative"] if recorded else "")
    if not positive.strip() or not negative.strip():
        raise InputError("measurer 'clip' needs a positive and a negative text, and the slider file records "
                         "none (or an empty one); give --measurer_arg positive='old person' "
                         "--measurer_arg negative='young person'")
    given = [key for key in ("positive", "negative") if options.get(key)]
    source = "options" if len(given) == 2 else ("slider file" if not given else f"options ({', '.join(given)}) and slider file")
    return positive.strip(), negative.strip(), source


__all__ = ["ClipMeasurer", "LPIPS_NETS", "load_lpips"]
