"""fcn: FCN-32s/16s/8s semantic segmentation with Lightning, Hydra, torchmetrics and wandb."""

import os

# albumentations asks PyPI for a newer version on every import (a 2 s network call, and an
# "Error fetching version info" warning without a network) unless this is set. Set here, before
# any module imports albumentations, so that every entry point stays off the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
