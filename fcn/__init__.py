"""fcn: FCN-32s/16s/8s semantic segmentation with Lightning, Hydra, torchmetrics and wandb."""

__version__ = "0.1.0"
