"""The slider objectives: what one training step asks the slider to predict, and the table of them.

The concerns live in their own modules: `base` is the protocol (`Objective`, `Term`, `ObjectiveInputs`,
`ImagePairs`); `draws` the random draws and conditioning the objectives share; `unet` the UNet
objectives (`TextObjective`, the guided noise-difference target of SPEC section 2; `ImageObjective`,
the paired-image, multi-scale target of SPEC section 3); `flow` their flow-matching counterparts
(FLUX). Here: `OBJECTIVES`, the one table of them keyed by (kind, flow matching), and `make_objective`,
which builds the one a run's config and family call for. Every public name of the submodules is
re-exported, so `from sliders.objectives import ...` gives all of them; a test that replaces a
function an objective calls patches it in the submodule that calls it. No optimizer, checkpoint or
progress bar here.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from .base import ImagePairs, Objective, ObjectiveInputs, Term
from .draws import (
    choose_folders,
    draw_pairs,
    draw_size,
    draw_step,
    draw_time_ids,
    image_prompts,
    is_symmetric,
    pair_conditioning,
    pair_prompt,
    steps_in_range,
)
from .flow import FlowImageObjective, FlowTextObjective, flow_guidance, flow_target
from .unet import DENOISE_GUIDANCE, ImageObjective, TextObjective, guided_target

__all__ = [
    # the table
    "OBJECTIVES", "make_objective",
    # sliders.objectives.base
    "ImagePairs", "Objective", "ObjectiveInputs", "Term",
    # sliders.objectives.draws
    "choose_folders", "draw_pairs", "draw_size", "draw_step", "draw_time_ids", "image_prompts", "is_symmetric",
    "pair_conditioning", "pair_prompt", "steps_in_range",
    # sliders.objectives.unet
    "DENOISE_GUIDANCE", "ImageObjective", "TextObjective", "guided_target",
    # sliders.objectives.flow
    "FlowImageObjective", "FlowTextObjective", "flow_guidance", "flow_target",
]

# Every objective, keyed by the kind of slider ("text": prompt entries, "image": paired folders) and
# whether the family is flow-matching (`Family.flow_matching`). A new objective is a subclass of
# `Objective` with its `from_config`, and a row here.
OBJECTIVES: dict[tuple[str, bool], type[Objective]] = {
    ("text", False): TextObjective,
    ("text", True): FlowTextObjective,
    ("image", False): ImageObjective,
    ("image", True): FlowImageObjective,
}


def make_objective(kind: str, config: Config, inputs: ObjectiveInputs, data: Any) -> Objective:
    """The objective of a `kind` slider ("text" or "image") on `inputs.family`, built from `config`
    and `data` (`Objective.from_config`)."""
    return OBJECTIVES[kind, inputs.family.flow_matching].from_config(config, inputs, data)
