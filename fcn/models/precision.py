"""Inference in reduced precision (plain PyTorch): which precision a device runs natively, and a
network made ready to score in it.

``bf16`` scores run the trunk, fc6/fc7 and the score layers in bfloat16 under autocast, with
their weights cast to bfloat16 once (:func:`cast_for_inference`) instead of on every forward
pass as autocast alone would (about 14% of a paper-sized forward on a CPU); the score fusion and
the fixed bilinear upsamplers stay in float32 (:meth:`fcn.models.fcn.FCN._fuse`), so scores are
float32 and agree with autocast's to the last bit. ``auto`` is ``bf16`` where the device has
bfloat16 units (docs/performance.md#inference-precision), else ``fp32``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

#: The precisions a network scores in, and ``auto``.
PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CPU with AVX-512 BF16 or AMX units,
    a GPU of compute capability 8.0 (Ampere) or later. Elsewhere bfloat16 is emulated (slower
    than float32 on AVX2 CPUs) or not supported."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def accelerator_device(accelerator: str) -> str:
    """The device type a Lightning ``trainer.accelerator`` (``auto``, ``gpu``, ``cuda``, ``cpu``)
    runs on here: ``cuda`` where one is asked for or allowed and present, else ``cpu``."""
    gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "cuda" if gpu else "cpu"


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16`` for the option ``name`` (``fp32``, ``bf16`` or ``auto``) on
    ``device``; ValueError naming the choices for anything else."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of fp32, bf16, auto; got {name!r}")
    return name


def cast_for_inference(net: nn.Module, precision: str) -> nn.Module:
    """``net`` (changed in place, returned) ready to score under :func:`autocast_for`
    ``precision``: for ``bf16`` the weights of every ``Conv2d`` that autocast runs in bfloat16
    are cast to bfloat16 once. Transposed convs (the fixed upsamplers) and the score layers of
    scaled skips (at-once, scored in float32) keep float32. The network is then for inference
    only: its cast weights are not trained."""
    if precision == "fp32":
        return net
    full = {id(layer) for layer in _float32_layers(net)}
    for module in net.modules():
        if type(module) is nn.Conv2d and id(module) not in full:
            module.to(torch.bfloat16)
    return net


def _float32_layers(net: nn.Module) -> list[nn.Module]:
    """The conv layers an FCN runs in float32 under autocast: at-once's skip scores."""
    if not getattr(net, "skip_scaling", False):
        return []
    return [getattr(net, f"score_{skip}") for skip in getattr(net, "skips", ())]


def autocast_for(precision: str, device_type: str) -> AbstractContextManager:
    """Autocast to bfloat16 on ``device_type`` for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
