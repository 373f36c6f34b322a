"""Export a trained FCN to ONNX: ``python -m fcn.export ckpt_path=<file>``.

The graph takes ``image`` (N, 3, H, W), normalised as the model was trained, for any N, H and W,
and returns ``scores`` (N, classes, H, W). The normalisation, class names and variant are written
into the file's metadata. After export, onnxruntime runs the file on ``check_sizes`` inputs and
the scores are compared with PyTorch's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from fcn.data.transforms import NORMALIZATIONS
from fcn.errors import ConfigError, FCNError, exit_on_user_error
from fcn.files import atomic_write, refuse_existing
from fcn.inference import load_model
from fcn.models.fcn import FCN

log = logging.getLogger("fcn.export")
logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per graph pass otherwise

EXPORT_EXTRA = 'pip install -e ".[export]" (onnx, onnxscript, onnxruntime)'


def export_onnx(
    net: FCN, path: Path, sample_size: tuple[int, int], metadata: dict, replace: bool = True
) -> None:
    """Write ``net`` as ONNX with dynamic batch, height and width; ``metadata`` (str values)
    goes into the model's metadata properties. The file appears whole or not at all;
    ``replace`` False refuses an existing ``path``."""
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"ONNX export needs onnx and onnxscript: {EXPORT_EXTRA}") from None
    dynamic = torch.export.Dim.DYNAMIC
    example = torch.randn(1, 3, *sample_size)
    program = torch.onnx.export(
        net.eval(),
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["scores"],
        dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic}},
        verbose=False,
    )
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata)
    atomic_write(path, lambda partial: onnx.save(model, str(partial)), replace)


def compare_with_torch(
    net: FCN, path: Path, sizes: list[tuple[int, int]], seed: int = 0
) -> list[tuple[tuple[int, int], float, float]]:
    """Run the ONNX file and ``net`` on random inputs of each size: ``(size, max |difference|,
    range of the scores)`` per size."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"checking the export needs onnxruntime: {EXPORT_EXTRA}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    results = []
    for height, width in sizes:
        x = torch.randn(1, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = net.eval()(x).numpy()
        got = session.run(["scores"], {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise FCNError(
                f"ONNX scores {got.shape} for input {tuple(x.shape)}, expected {expected.shape}"
            )
        spread = float(expected.max() - expected.min())
        results.append(((height, width), float(np.abs(got - expected).max()), spread))
    return results


def _size(value, key: str) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise ConfigError(f"{key} must be [height, width] of positive integers, got {list(value)}")
    return int(value[0]), int(value[1])


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` to ``cfg.output_file`` and check it; return the file."""
    sample = _size(cfg.sample_size, "sample_size")
    checks = [_size(s, "check_sizes") for s in cfg.check_sizes]
    out = Path(cfg.output_file)
    refuse_existing(out, cfg.overwrite)
    model = load_model(cfg, cfg.ckpt_path)
    order, mean, std = NORMALIZATIONS[model.normalization]
    metadata = {
        "variant": model.net.variant,
        "class_names": json.dumps(model.class_names),
        "class_colors": json.dumps(model.class_colors),
        "normalization": json.dumps(
            {"name": model.normalization, "channel_order": order, "mean": mean, "std": std}
        ),
        "input": "image: float32 (N, 3, H, W), (pixel 0-255 in channel_order - mean) / std",
        "source": str(cfg.ckpt_path),
    }
    log.info("exporting %s from %s", model.net.variant, cfg.ckpt_path)
    export_onnx(model.net, out, sample, metadata, cfg.overwrite)
    for size, diff, spread in compare_with_torch(model.net, out, checks):
        ok = diff <= cfg.tolerance * max(spread, 1.0)
        print(
            f"input {size[0]}x{size[1]}: max |ONNX - PyTorch| {diff:.2e} (scores span {spread:.2f})"
        )
        if not ok:
            raise FCNError(
                f"{out}: ONNX scores differ from PyTorch's by {diff:.2e} at {size[0]}x{size[1]} "
                f"(tolerance {cfg.tolerance} x {max(spread, 1.0):.2f})"
            )
    print(f"written to {out}")
    return out


@hydra.main(version_base="1.3", config_path="pkg://fcn.conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point; a user error ends with its message alone and exit status 1."""
    export(cfg)


if __name__ == "__main__":
    main()
