"""Weights into an FCN: ImageNet VGG16 (torchvision's or the Caffe conversion), whole FCN files
(the reference port's ``*_from_caffe.pth``, our checkpoints), and staged training (FCN-16s from
FCN-32s, FCN-8s from FCN-16s). Files are read with ``weights_only=True``: loading never runs
code from a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from fcn.checkpoint import read_weights
from fcn.errors import DataError
from fcn.files import file_digests
from fcn.models.downloads import RELEASED, TORCHVISION_VGG16, check_fits, fetch
from fcn.models.fcn import FCN

VGG16_FILE = TORCHVISION_VGG16.filename
VGG16_URL = TORCHVISION_VGG16.url
#: torchvision VGG16 ``features`` indices of the 13 convs, in order conv1_1 ... conv5_3.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: Layers a staged run may add to the file it starts from (the paper's 32s -> 16s -> 8s).
SKIP_SCORES = ("score_pool4", "score_pool3")


def load_fcn_weights(net: FCN, path: str | Path, strict: bool = False) -> list[str]:
    """Load a whole FCN's weights from ``path``; return the parameters the file did not have.

    See :func:`load_fcn_state`.
    """
    return load_fcn_state(net, read_weights(path), path, strict)


def load_fcn_state(
    net: FCN, state: Mapping[str, Tensor], path: str | Path, strict: bool = False
) -> list[str]:
    """Load a whole FCN's state dict (read from ``path``); return the parameters it lacked.

    Only the skip scores a staged run adds (``score_pool4``, ``score_pool3``) may be missing,
    and not even those with ``strict`` (evaluation and inference need every layer trained); the
    fixed bilinear upsamplers are never taken from files. Any other missing, unexpected or
    differently shaped tensor is an error naming it (a class-count mismatch shows as
    ``score_fr.weight``).
    """
    upsamplers = {n for n, p in net.named_parameters() if not p.requires_grad}
    own = {k: v for k, v in net.state_dict().items() if k not in upsamplers}
    state = {k: v for k, v in state.items() if not k.startswith("upscore")}
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    new = [] if strict else [k for k in missing if k.split(".")[0] in SKIP_SCORES]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    problems = []
    if unexpected:
        problems.append(f"not in this model: {', '.join(unexpected[:6])}")
    if sorted(set(missing) - set(new)):
        problems.append(f"missing from the file: {', '.join(sorted(set(missing) - set(new))[:6])}")
    if shapes:
        problems.append("different shapes (classes or widths differ?): " + "; ".join(shapes[:4]))
    if problems:
        raise DataError(
            f"weights in {path} do not fit this {_describe(net)}: " + ". ".join(problems)
        )
    net.load_state_dict(state, strict=False)
    return new


def vgg16_to_fcn(vgg: Mapping[str, Tensor], net: FCN) -> dict[str, Tensor]:
    """torchvision VGG16 tensors under FCN names; fc6/fc7 reshaped from the classifier."""
    if net.conv1_1.out_channels != 64 or net.fc6.out_channels != 4096:
        raise DataError(
            "ImageNet VGG16 weights need the full-width network "
            f"(model.trunk_width=64, model.fc_width=4096), not {_describe(net)}"
        )
    names = [f"conv{s}_{i}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True)
             for i in range(1, n + 1)]  # fmt: skip
    out = {}
    for name, index in zip(names, VGG16_CONV_INDICES, strict=True):
        out[f"{name}.weight"] = vgg[f"features.{index}.weight"]
        out[f"{name}.bias"] = vgg[f"features.{index}.bias"]
    out["fc6.weight"] = vgg["classifier.0.weight"].view(4096, 512, 7, 7)
    out["fc6.bias"] = vgg["classifier.0.bias"]
    out["fc7.weight"] = vgg["classifier.3.weight"].view(4096, 4096, 1, 1)
    out["fc7.bias"] = vgg["classifier.3.bias"]
    return out


def load_vgg16_imagenet(net: FCN, path: str | Path | None = None) -> None:
    """Initialise the trunk and fc6/fc7 from ImageNet VGG16 (the 1000-way classifier dropped).

    ``path`` None: torchvision's file from the torch hub cache, fetched and checked there on
    first use (:func:`fcn.models.downloads.fetch`).
    """
    if path is None:
        path = fetch(TORCHVISION_VGG16)
    state = read_weights(path)
    try:
        converted = vgg16_to_fcn(state, net)
    except KeyError as err:
        raise DataError(f"{path} is not a torchvision VGG16 state dict: no {err}") from None
    net.load_state_dict(converted, strict=False)


def _describe(net: FCN) -> str:
    return (
        f"{net.variant} ({net.num_classes} classes, trunk width {net.conv1_1.out_channels}, "
        f"fc width {net.fc6.out_channels})"
    )


WEIGHT_SOURCES = ("none", "imagenet", "fcn")


def weights_file(
    source: str,
    path: str | Path | None = None,
    name: str | None = None,
    url: str | None = None,
    net: FCN | None = None,
) -> Path | None:
    """The local file a weights config names: ``path`` as given, else the file ``name`` (one of
    :data:`fcn.models.downloads.RELEASED`) or, for ``imagenet``, torchvision's VGG16, fetched
    and checked on first use (``url``: a mirror); None for ``source=none``. A released FCN
    that is not ``net``'s network is refused before it is fetched."""
    if source not in WEIGHT_SOURCES:
        raise ValueError(f"source must be one of {list(WEIGHT_SOURCES)}, got {source!r}")
    if source == "none":
        return None
    if path is not None:
        return Path(path).expanduser()
    if name is not None:
        if name not in RELEASED:
            raise ValueError(f"name must be one of {list(RELEASED)}, got {name!r}")
        if net is not None:
            try:
                check_fits(RELEASED[name], name, list(net.skips), net.skip_scaling)
            except ValueError as err:
                raise ValueError(f"name={err}") from None
        return fetch(RELEASED[name], url)
    if source == "imagenet":
        return fetch(TORCHVISION_VGG16, url)
    raise ValueError(  # source fcn without a file
        "path must name an FCN weights file when source is fcn (or use "
        f"weights=released weights.name=<one of {list(RELEASED)}>)"
    )


def provenance(
    path: Path | None, source: str = "none", name: str | None = None
) -> dict[str, str | None]:
    """What a run records about its initialisation: the weights option it amounts to, the
    file's path and its SHA-256."""
    if source == "none":
        option = "none"
    elif name == "vgg16_caffe":
        option = "imagenet_caffe"
    elif name is not None:
        option = "released"
    else:
        option = source  # imagenet (torchvision's) or fcn (a file of one's own)
    if path is None or source == "none":
        return {"option": option, "file": None, "sha256": None}
    digest = file_digests(Path(path))["sha256"]
    return {"option": option, "file": str(Path(path).resolve()), "sha256": digest}


def init_weights(net: FCN, source: str = "none", path: str | Path | None = None) -> list[str]:
    """Apply the configured initialisation; return the parameters new to the model (staged
    training), which :func:`load_fcn_weights` allows only for the skip scores.

    ``none``: He init (as built); ``imagenet``: VGG16 trunk and fc6/fc7 from torchvision's file
    or ``path`` (the Caffe conversion too); ``fcn``: a whole FCN file at ``path``.
    """
    if source not in WEIGHT_SOURCES:
        raise ValueError(f"source must be one of {list(WEIGHT_SOURCES)}, got {source!r}")
    if source == "imagenet":
        load_vgg16_imagenet(net, path)
    elif source == "fcn":
        if path is None:
            raise ValueError("path must name an FCN weights file when source is fcn")
        return load_fcn_weights(net, path)
    return []
