"""Optimisers with the paper's parameter groups.

The fixed bilinear upsamplers never reach the optimiser. Weights (conv kernels) get the configured
weight decay; biases can get their own learning-rate multiplier and decay, as in the paper
(biases at twice the learning rate, no decay).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn
from torch.optim import Optimizer


def parameter_groups(
    net: nn.Module,
    lr: float,
    weight_decay: float,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Two groups, ``weights`` and ``biases``, of the trainable parameters of ``net``."""
    weights, biases = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        (biases if name.endswith("bias") else weights).append(param)
    bias_wd = weight_decay if bias_weight_decay is None else bias_weight_decay
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
        {"params": biases, "lr": lr * bias_lr_mult, "weight_decay": bias_wd, "name": "biases"},
    ]


def build_optimizer(
    net: nn.Module,
    algorithm: str = "torch.optim.Adam",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
    **kwargs: Any,
) -> Optimizer:
    """Build ``algorithm`` (a dotted class path) over :func:`parameter_groups` of ``net``.

    Extra keyword arguments (momentum, betas, ...) go to the optimiser class.
    """
    check_optimizer_args(lr, weight_decay)
    cls = resolve_class(algorithm, "optimizer.algorithm")
    groups = parameter_groups(net, lr, weight_decay, bias_lr_mult, bias_weight_decay)
    return cls(groups, lr=lr, **kwargs)


def check_optimizer_args(lr: float, weight_decay: float) -> None:
    """Raise ValueError whose message starts with the name of the argument that cannot work."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or weight_decay < 0
    ):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")


def resolve_class(path: str, key: str) -> type:
    """Import ``package.module.Class``; the error names the config ``key``."""
    module_name, _, attr = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{key}: cannot import {path!r} ({err})") from None
