"""Concept Sliders for SDXL: train and use low-rank adaptors that control one concept.

Nothing here loads a model or touches a device at import time.
"""

__version__ = "0.1.0"
