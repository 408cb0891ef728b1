"""The official SD 1.x/2.x `train_lora.py` command line, running `sliders-train`.

Accepts the official flags (--config_file, --prompts_file, --alpha, --rank, --device, --name,
--attributes) and hands them over unchanged; no logic of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sliders.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
