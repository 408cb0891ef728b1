"""Paired image folders for image-pair sliders: scanning, validation, image loading, VAE latents.

Holds:
  * ``scan_pairs`` - checks ``folder_main/<folder>/<stem>.<ext>`` sets before any training starts and
    returns a ``PairedFolders`` index (every problem is one ``InputError`` naming folder and file);
  * ``load_image`` - one image as a ``(3, R, R)`` tensor in [-1, 1] (EXIF transposed, RGB,
    shorter-side resize and centre crop);
  * ``LatentSource`` - scaled VAE latents of one image, a fresh sample of its posterior on every call
    (the posterior optionally cached).

Does not hold: prompt handling, the training loop, the choice of which folders form a pair at each
step, or model loading. Nothing here touches a model or a device at import time.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sliders.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 rotate by 90 degrees, so width and height swap after exif_transpose.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
# Paired images whose aspect ratios differ by more than this get different centre crops.
_ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class PairedFolders:
    """A validated set of sibling folders that hold the same image stems.

    ``files[i][j]`` is the image of ``folders[i]`` for ``stems[j]``; ``scales[i]`` is that folder's
    slider scale.
    """

    root: Path
    folders: tuple[str, ...]
    scales: tuple[float, ...]
    stems: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]
    captions: tuple[str, ...] | None = None  # ``captions[j]`` describes ``stems[j]`` in every folder

    def path(self, folder_index: int, stem_index: int) -> Path:
        """The image file of ``folders[folder_index]`` for ``stems[stem_index]``."""
        return self.files[folder_index][stem_index]


# --------------------------------------------------------------------------------------------------
# Scanning and validation
# --------------------------------------------------------------------------------------------------


def _check_folder_names(folders: Sequence[str]) -> tuple[str, ...]:
    # A bare string would otherwise be iterated character by character into nonsense folders.
    if isinstance(folders, (str, bytes)) or not isinstance(folders, Sequence):
        raise InputError(
            f"folders must be a list of sub-folder names, got {folders!r}; "
            "write e.g. folders: ['low', 'high']"
        )
    names = tuple(folders)
    if not names:
        raise InputError("folders is empty; give at least one sub-folder name, e.g. ['low', 'high']")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(
                f"folders[{index}] is {name!r}; every folder must be a non-empty sub-folder name"
            )
        if os.path.isabs(name):
            # root / absolute_path silently drops root, which would read images from elsewhere.
            raise InputError(
                f"folders[{index}] {name!r} is an absolute path; give a sub-folder name of folder_main"
            )
        if name in seen:
            raise InputError(
                f"folder {name!r} is listed twice in folders (positions {seen[name]} and {index}); "
                "list each sub-folder once"
            )
        seen[name] = index
    return names


def _check_scales(scales: Sequence[float], folders: tuple[str, ...]) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise InputError(
            f"scales must be a list of numbers, one per folder, got {scales!r}; "
            "write e.g. scales: [-1, 1]"
        )
    if len(scales) != len(folders):
        raise InputError(
            f"{len(folders)} folders {list(folders)} but {len(scales)} scales {list(scales)}; "
            "give exactly one scale per folder"
        )
    values = []
    for folder, scale in zip(folders, scales):
        # bool is a Real subclass, but 'true' as a scale is certainly a typo.
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise InputError(
                f"scale of folder {folder!r} is {scale!r}, not a number; give a non-zero number"
            )
        value = float(scale)
        if not math.isfinite(value):
            raise InputError(
                f"scale of folder {folder!r} is {value!r}; give a finite non-zero number"
            )
        if value == 0.0:
            # Scale 0 means 'no concept', which cannot be learned as a direction.
            raise InputError(
                f"scale of folder {folder!r} is 0; give a non-zero number "
                "(negative for the 'less' side, positive for the 'more' side)"
            )
        values.append(value)
    return tuple(values)


def _is_image_file(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
    )


def _list_folder(root: Path, folder: str) -> dict[str, Path]:
    """Stem -> image path of one sub-folder, rejecting missing/empty folders and clashing stems."""
    directory = root / folder
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise InputError(
            f"folder {folder!r} ({directory}) {what}; create it inside folder_main '{root}' "
            "or fix the name in folders"
        )
    by_stem: dict[str, Path] = {}
    ignored = 0
    for entry in sorted(directory.iterdir()):
        if not _is_image_file(entry):
            ignored += 1
            continue
        other = by_stem.get(entry.stem)
        if other is not None:
            raise InputError(
                f"folder {folder!r} has two files with stem {entry.stem!r}: "
                f"'{other.name}' and '{entry.name}'; keep one image per name"
            )
        by_stem[entry.stem] = entry
    if ignored:
        logger.debug("folder %r: ignored %d non-image or hidden entries", folder, ignored)
    if not by_stem:
        raise InputError(
            f"folder {folder!r} ({directory}) holds no images; add {'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return by_stem


def _check_same_stems(folders: tuple[str, ...], listings: list[dict[str, Path]]) -> tuple[str, ...]:
    all_stems = sorted(set().union(*listings))
    problems: list[str] = []
    for stem in all_stems:
        holders = [i for i, listing in enumerate(listings) if stem in listing]
        if len(holders) == len(folders):
            continue
        if len(holders) == 1 and len(folders) > 2:
            # Present in one of three or more folders: that folder's extra file, not everyone
            # else's gap. With two folders either reading fits, so the 'has no file' form is used.
            holder = holders[0]
            problems.append(
                f"folder {folders[holder]!r} has file '{listings[holder][stem].name}' that no other "
                f"folder has (missing from {folders[next(i for i in range(len(folders)) if i != holder)]!r})"
            )
        else:
            lacking = next(i for i in range(len(folders)) if i not in holders)
            problems.append(
                f"folder {folders[lacking]!r} has no file {stem!r} "
                f"(present in {folders[holders[0]]!r} as '{listings[holders[0]][stem].name}')"
            )
    if problems:
        more = f" ({len(problems) - 1} more unmatched names)" if len(problems) > 1 else ""
        raise InputError(
            f"{problems[0]}{more}; every folder must hold the same file names"
        )
    return tuple(all_stems)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block only matters for this size hint
        orientation = None
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _check_image(path: Path, folder: str) -> tuple[int, int]:
    """Open and fully decode one image; return its size after EXIF orientation."""
    try:
        # verify() checks structure (e.g. PNG checksums) but leaves the file unusable, so reopen;
        # load() is what catches truncated pixel data.
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            size = _oriented_size(image)
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise InputError(
            f"folder {folder!r} file '{path.name}' ({path}) is not a readable image: {error}; "
            "re-export or remove it from every folder"
        ) from error
    if size[0] < 1 or size[1] < 1:
        raise InputError(
            f"folder {folder!r} file '{path.name}' has size {size[0]}x{size[1]}; replace it"
        )
    return size


def _warn_on_aspect_mismatch(
    folders: tuple[str, ...], stems: tuple[str, ...], sizes: list[list[tuple[int, int]]]
) -> None:
    # Different aspect ratios mean the centre crops of a pair show different regions, which makes
    # the slider learn framing instead of the concept. Legal, but worth a warning.
    mismatched = []
    for j, stem in enumerate(stems):
        ratios = [sizes[i][j][0] / sizes[i][j][1] for i in range(len(folders))]
        if max(ratios) - min(ratios) > _ASPECT_TOLERANCE * min(ratios):
            mismatched.append(stem)
    if mismatched:
        logger.warning(
            "%d image name(s) have different aspect ratios across folders (first: %r); their centre "
            "crops will not line up",
            len(mismatched),
            mismatched[0],
        )


def read_captions(root: Path, stems: Sequence[str]) -> tuple[str, ...]:
    """The caption of every stem: the text of ``root/<stem>.txt``, stripped, on one line.

    One caption per pair, beside the sub-folders rather than inside them, because it describes
    what the images of a pair share (the concept is what differs between the folders).
    """
    captions = []
    for stem in stems:
        path = root / f"{stem}.txt"
        if not path.is_file():
            raise InputError(
                f"caption file '{path}' for image name {stem!r} does not exist; write one caption per "
                f"image name into folder_main as <name>.txt, or turn data.captions off"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"caption file '{path}' cannot be read as UTF-8 text ({error}); re-save it") from error
        caption = " ".join(text.split())
        if not caption:
            raise InputError(f"caption file '{path}' is empty; write the caption of {stem!r} into it")
        captions.append(caption)
    return tuple(captions)


def scan_pairs(
    folder_main: str | os.PathLike, folders: Sequence[str], scales: Sequence[float], captions: bool = False
) -> PairedFolders:
    """Validate ``folder_main/<folders[i]>`` image sets and index them.

    Raises ``InputError`` (one problem, naming folder and file) for: a missing folder_main or
    sub-folder, duplicate folder names, a folders/scales count mismatch, a zero or non-finite
    scale, an empty folder, two files with one stem in a folder, a stem missing from a folder or
    present in one folder only, and any image PIL cannot fully decode. With ``captions``, every
    stem also needs a non-empty ``folder_main/<stem>.txt`` (see ``read_captions``).
    """
    names = _check_folder_names(folders)
    scale_values = _check_scales(scales, names)

    root = Path(folder_main).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise InputError(
            f"folder_main '{root}' {what}; point folder_main at the folder that holds "
            f"the sub-folders {list(names)}"
        )

    listings = [_list_folder(root, name) for name in names]

    # Different spellings can still be one folder (case-insensitive file systems, 'a' vs 'a/.').
    for i in range(len(names)):
        for k in range(i):
            if os.path.samefile(root / names[i], root / names[k]):
                raise InputError(
                    f"folders {names[k]!r} and {names[i]!r} are the same folder on disk; "
                    "list each sub-folder once"
                )

    stems = _check_same_stems(names, listings)
    files = tuple(tuple(listing[stem] for stem in stems) for listing in listings)
    stem_captions = read_captions(root, stems) if captions else None

    sizes = [
        [_check_image(path, name) for path in folder_files]
        for name, folder_files in zip(names, files)
    ]
    _warn_on_aspect_mismatch(names, stems, sizes)

    logger.info(
        "image pairs: %d names in each of %d folders under %s", len(stems), len(names), root
    )
    return PairedFolders(
        root=root, folders=names, scales=scale_values, stems=stems, files=files, captions=stem_captions
    )


# --------------------------------------------------------------------------------------------------
# Image loading
# --------------------------------------------------------------------------------------------------


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 1:
        raise InputError(f"resolution is {resolution!r}; give a positive whole number of pixels, e.g. 1024")
    return int(resolution)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # PIL's own convert clips these at 255 instead of rescaling, which turns most of a
        # 16-bit image white. For our extensions "I"/"I;16" only come from 16-bit PNGs.
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            peak = 1.0 if values.size and values.max() <= 1.0 else 255.0
        else:
            peak = 65535.0
        eight_bit = np.clip(np.rint(values / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def _square_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    if width == height == resolution:
        return image
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    # Resizing only the centred square box is the same as "shorter side to resolution, then centre
    # crop", without rounding the intermediate size; the filter still reads pixels outside the box.
    return image.resize(
        (resolution, resolution),
        Image.Resampling.LANCZOS,
        box=(left, top, left + side, top + side),
    )


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as 8-bit RGB, upright (EXIF orientation applied), fully decoded. PIL's own errors
    pass through: callers name the file in their message."""
    with Image.open(path) as opened:
        opened.load()
        return _to_rgb(ImageOps.exif_transpose(opened))


def centre_square(image: Image.Image, resolution: int) -> Image.Image:
    """The centre square of `image`, resized to `resolution` pixels a side (Lanczos)."""
    return _square_crop_resize(image, _check_resolution(resolution))


def to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a ``(3, H, W)`` float32 tensor in [-1, 1]."""
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1).contiguous()
    return (tensor / 127.5 - 1.0).clamp_(-1.0, 1.0)


def load_image(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """One image as a ``(3, resolution, resolution)`` float32 tensor in [-1, 1].

    EXIF orientation is applied, any colour mode becomes RGB (alpha on white), the shorter side is
    resized to ``resolution`` (Lanczos) and the centre square is kept.
    """
    resolution = _check_resolution(resolution)
    path = Path(path)
    try:
        image = _square_crop_resize(read_rgb(path), resolution)
    except Exception as error:
        raise InputError(
            f"image '{path.name}' in folder '{path.parent.name}' ({path}) could not be loaded: "
            f"{error}; re-export or remove it"
        ) from error
    return to_pixels(image)


# --------------------------------------------------------------------------------------------------
# VAE latents
# --------------------------------------------------------------------------------------------------


def _config_value(config, name: str):
    value = getattr(config, name, None)
    if value is None and isinstance(config, dict):
        value = config.get(name)
    return value


class LatentSource:
    """Gives VAE latents of one image: a fresh sample of its posterior on every call, as the official
    code draws one every step.

    ``get`` returns ``(1, C, resolution/f, resolution/f)`` float32 on ``device``:
    ``(mean + std * e - shift_factor) * scaling_factor``, where ``mean`` and ``std`` are the image's VAE
    posterior and ``e`` is drawn from the caller's generator. With ``cache=True`` the posterior's
    mean and std are kept per image; without, the image is encoded on every call. Either way the
    same generator state gives the same latents. The image is encoded in the VAE's own dtype and device
    (read from its parameters); ``dtype`` and ``device`` are used for encoding only when the VAE
    has no parameters to read them from.
    """

    def __init__(
        self,
        pairs: PairedFolders,
        vae,
        resolution: int,
        *,
        cache: bool = True,
        device="cpu",
        dtype=torch.float32,
    ) -> None:
        self.pairs = pairs
        self.vae = vae
        self.resolution = _check_resolution(resolution)
        self.cache = bool(cache)
        self.device = torch.device(device)
        self.dtype = dtype
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        block_out_channels = _config_value(vae.config, "block_out_channels")
        if block_out_channels:
            factor = 2 ** (len(block_out_channels) - 1)
            if self.resolution % factor:
                raise InputError(
                    f"resolution {self.resolution} is not a multiple of the VAE's downsampling "
                    f"factor {factor}; use e.g. {max(factor, self.resolution // factor * factor)}"
                )
        if _config_value(vae.config, "scaling_factor") is None:
            raise ValueError("the VAE config has no scaling_factor")

    def _vae_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(iter(self.vae.parameters()), None) if hasattr(self.vae, "parameters") else None
        if parameter is None:
            return self.device, self.dtype
        if parameter.dtype != self.dtype:
            logger.debug("VAE runs in %s; encoding in that instead of %s", parameter.dtype, self.dtype)
        return parameter.device, parameter.dtype

    def _check_index(self, folder_index: int, stem_index: int) -> None:
        if not 0 <= folder_index < len(self.pairs.folders):
            raise IndexError(f"folder_index {folder_index} out of range 0..{len(self.pairs.folders) - 1}")
        if not 0 <= stem_index < len(self.pairs.stems):
            raise IndexError(f"stem_index {stem_index} out of range 0..{len(self.pairs.stems) - 1}")

    def _encode(self, folder_index: int, stem_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and std, each ``(1, C, R/f, R/f)`` float32 on ``device``."""
        vae_device, vae_dtype = self._vae_device_dtype()
        image = load_image(self.pairs.path(folder_index, stem_index), self.resolution)
        image = image.unsqueeze(0).to(device=vae_device, dtype=vae_dtype)
        with torch.no_grad():
            posterior = self.vae.encode(image).latent_dist
        return (
            posterior.mean.to(device=self.device, dtype=torch.float32),
            posterior.std.to(device=self.device, dtype=torch.float32),
        )

    def _posterior(self, folder_index: int, stem_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cache:
            return self._encode(folder_index, stem_index)
        key = (folder_index, stem_index)
        if key not in self._cache:
            self._cache[key] = self._encode(folder_index, stem_index)
        return self._cache[key]

    def get(self, folder_index: int, stem_index: int, generator: torch.Generator) -> torch.Tensor:
        """A new posterior sample of ``pairs.path(folder_index, stem_index)``: ``(1, C, R/f, R/f)``
        float32 on ``device``, its noise the next draw of ``generator``."""
        self._check_index(folder_index, stem_index)
        mean, std = self._posterior(folder_index, stem_index)
        # Drawn where the generator lives (the training loop's is on the CPU, like the step's noise)
        # and then moved, so the sample does not depend on the device or on caching.
        noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(self.device)
        sample = mean + std * noise
        shift = _config_value(self.vae.config, "shift_factor")
        if shift is not None:
            sample = sample - shift
        return sample * _config_value(self.vae.config, "scaling_factor")

    def prepare(self) -> None:
        """With ``cache=True``, encode every posterior once (call before training); otherwise do nothing."""
        if not self.cache:
            return
        total = len(self.pairs.folders) * len(self.pairs.stems)
        for folder_index in range(len(self.pairs.folders)):
            for stem_index in range(len(self.pairs.stems)):
                key = (folder_index, stem_index)
                if key not in self._cache:
                    self._cache[key] = self._encode(folder_index, stem_index)
        logger.info("cached the VAE posteriors of %d images", total)
