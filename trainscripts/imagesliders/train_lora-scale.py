"""The official SD 1.x/2.x `train_lora-scale.py` command line, running `sliders-train-images`.

Accepts the official flags (--config_file, --alpha, --rank, --device, --name, --attributes,
--folder_main, --folders, --scales) and hands them over unchanged; no logic of its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sliders.cli import train_images_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_images_main())
