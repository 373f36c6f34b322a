"""Networks: the FCN on a VGG16 trunk (plain PyTorch, no Lightning or Hydra)."""

from fcn.models.fcn import FCN, bilinear_kernel

__all__ = ["FCN", "bilinear_kernel"]
