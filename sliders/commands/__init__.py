"""The commands' flags and bodies, one module per concern; `sliders.cli` holds what they share and
the entry points, which import the command's module when it runs.

- `train.py`: `sliders-train` and `sliders-train-images` (flags to config overrides, checks, the run)
- `images.py`: the generation flags the image-making commands share, `sliders-sample`, `sliders-edit`
- `evaluate.py`: `sliders-eval` (generated images, rendered-scene edits, a `sliders-edit` folder)
- `conversion.py`: `sliders-convert` and `sliders-export` (slider files for other tools)
- `flags.py`: flags made from the config fields' metadata, and the overrides they give
"""
