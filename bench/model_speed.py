"""The paper-sized FCN-8s on one image: our `caffe` and `same` alignments against the reference
computation written as a bare PyTorch module here, measured side by side.

    python bench/model_speed.py [--height 375 --width 500] [--repeats 5] [--memory]

Inference (eval, inference_mode) and one training step (forward, summed cross-entropy, backward,
SGD momentum step) at the given size, batch 1, 21 classes, float32. Runs alternate between the
three networks in a rotating order; medians of ``--repeats`` are printed with the ratios to the
bare module.
Targets: ours `caffe` within 5% of the bare module; `same` inference >= 1.8x and
training step >= 1.6x faster than it.

``--memory`` instead measures the peak resident memory of a training step at 500x500 for the
bare module and for ours, each in a fresh process, ``--repeats`` times (target: ours no more).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcn.models.fcn import FCN, bilinear_kernel  # noqa: E402
from fcn.training.metrics import SegmentationMetrics  # noqa: E402


class BareFCN8s(nn.Module):
    """The reference FCN-8s (Caffe alignment) as one plain module: VGG16 with conv1_1 padded by
    100 and ceil pooling, fc6 7x7 unpadded, fixed crops 5 / 9 / 31, bilinear upsamplers fixed."""

    def __init__(self, n_class: int = 21) -> None:
        super().__init__()
        cfg = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256),
               (256, 256), "M", (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512),
               (512, 512), "M"]  # fmt: skip
        layers: list[nn.Module] = []
        for i, item in enumerate(cfg):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(*item, 3, padding=100 if i == 0 else 1), nn.ReLU(True)]
        self.to_pool3 = nn.Sequential(*layers[:17])
        self.to_pool4 = nn.Sequential(*layers[17:24])
        self.to_pool5 = nn.Sequential(*layers[24:])
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.score_fr = nn.Conv2d(4096, n_class, 1)
        self.score_pool4 = nn.Conv2d(512, n_class, 1)
        self.score_pool3 = nn.Conv2d(256, n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, 8, bias=False)
        for up in (self.upscore2, self.upscore_pool4, self.upscore8):
            up.weight.data.copy_(bilinear_kernel(n_class, up.kernel_size[0]))
            up.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        h = self.to_pool5(pool4)
        h = F.dropout(F.relu(self.fc6(h)), 0.5, self.training)
        h = F.dropout(F.relu(self.fc7(h)), 0.5, self.training)
        up2 = self.upscore2(self.score_fr(h))
        s4 = self.score_pool4(pool4)[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
        up4 = self.upscore_pool4(up2 + s4)
        s3 = self.score_pool3(pool3)[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
        out = self.upscore8(up4 + s3)
        return out[:, :, 31 : 31 + x.shape[2], 31 : 31 + x.shape[3]].contiguous()


def same_weights(bare: BareFCN8s, ours: FCN) -> None:
    """Copy ``ours``'s weights into ``bare`` (convs in order, then the heads by name)."""
    bare_convs = [m for m in bare.modules() if type(m) is nn.Conv2d][:15]  # 13 convs, fc6, fc7
    names = [n for stage in ours.stage_names for n in stage] + ["fc6", "fc7"]
    for conv, name in zip(bare_convs, names, strict=True):
        conv.load_state_dict(getattr(ours, name).state_dict())
    for name in ("score_fr", "score_pool4", "score_pool3"):
        getattr(bare, name).load_state_dict(getattr(ours, name).state_dict())


def check_same_computation() -> tuple[float, float]:
    """Max |bare - ours caffe| and max |scores| on a random 97x131 input, shared weights."""
    nets = networks()
    bare, ours = nets["bare (reference)"].eval(), nets["ours, caffe"].eval()
    for layer in ours.score_layers:
        nn.init.normal_(layer.weight, std=0.01)
    same_weights(bare, ours)
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        scores = ours(x)
        return float((bare(x) - scores).abs().max()), float(scores.abs().max())


BUILDERS = {
    "bare (reference)": BareFCN8s,
    "ours, caffe": lambda: FCN(alignment="caffe", dropout=0.5),
    "ours, same": lambda: FCN(alignment="same", dropout=0.5),
}


def networks(only: str | None = None) -> dict[str, nn.Module]:
    """The three networks (or just ``only``), paper-sized, 21 classes."""
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items() if only in (None, name)}


def inference(net: nn.Module, x: torch.Tensor) -> float:
    net.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        net(x)
    return time.perf_counter() - start


def train_step(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer
) -> float:
    net.train()
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y, ignore_index=255, reduction="sum")
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def speed(height: int, width: int, repeats: int) -> None:
    nets = networks()
    x = torch.randn(1, 3, height, width)
    y = torch.randint(0, 21, (1, height, width))
    opts = {
        name: torch.optim.SGD([p for p in n.parameters() if p.requires_grad], 1e-10, momentum=0.99)
        for name, n in nets.items()
    }
    for name, net in nets.items():  # warm-up: allocator, kernels
        inference(net, x)
        train_step(net, x, y, opts[name])
    times: dict[str, dict[str, list[float]]] = {n: {"inf": [], "train": []} for n in nets}
    names = list(nets)
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate: no network always goes first
            times[name]["inf"].append(inference(nets[name], x))
            times[name]["train"].append(train_step(nets[name], x, y, opts[name]))
    print(f"FCN-8s, {height}x{width}, batch 1, {torch.get_num_threads()} threads, "
          f"median of {repeats}")  # fmt: skip
    print(f"{'network':<18}{'inference s':>12}{'speed-up':>10}{'train step s':>14}{'speed-up':>10}")
    base = {k: statistics.median(times["bare (reference)"][k]) for k in ("inf", "train")}
    for name in nets:
        inf, train = (statistics.median(times[name][k]) for k in ("inf", "train"))
        print(f"{name:<18}{inf:>12.3f}{base['inf'] / inf:>10.2f}{train:>14.3f}"
              f"{base['train'] / train:>10.2f}")  # fmt: skip
    metric_cost(nets["ours, same"], x, y, repeats)


def metric_cost(net: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
    """Evaluation: the confusion-matrix update per image against the forward pass."""
    metrics = SegmentationMetrics(21)
    with torch.inference_mode():
        scores = net.eval()(x)
    forward, update = [], []
    for _ in range(repeats):
        forward.append(inference(net, x))
        start = time.perf_counter()
        metrics.update(scores, y)
        update.append(time.perf_counter() - start)
    f, u = statistics.median(forward), statistics.median(update)
    print(
        f"evaluation: metric update {u * 1e3:.1f} ms per image = {100 * u / f:.2f}% of the "
        f"`same` forward ({f:.3f} s)"
    )


def peak_memory_of(name: str, size: int) -> None:
    """In this process: one training step of ``name``; print the peak resident set in MB."""
    net = networks(only=name)[name]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], 1e-10, momentum=0.99)
    x = torch.randn(1, 3, size, size)
    y = torch.randint(0, 21, (1, size, size))
    train_step(net, x, y, opt)
    train_step(net, x, y, opt)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(size: int, repeats: int) -> None:
    print(f"peak resident memory of a training step, FCN-8s {size}x{size}, a fresh process for "
          f"each run, median of {repeats}")  # fmt: skip
    peaks: dict[str, list[float]] = {name: [] for name in BUILDERS}
    for _ in range(repeats):
        for name in BUILDERS:
            out = subprocess.run(
                [sys.executable, __file__, "--peak-of", name, "--height", str(size)],
                capture_output=True, text=True, check=True,
            ).stdout.split()[-1]  # fmt: skip
            peaks[name].append(float(out))
    base = statistics.median(peaks["bare (reference)"])
    for name, values in peaks.items():
        peak = statistics.median(values)
        print(f"{name:<18}{peak:>8.0f} MB{peak / base:>7.2f}   (runs: "
              f"{', '.join(f'{v:.0f}' for v in values)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--check", action="store_true", help="bare and ours compute the same")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        diff, size = check_same_computation()
        print(f"max |bare - ours caffe| = {diff:.2e} (scores up to {size:.2e})")
    elif args.peak_of:
        peak_memory_of(args.peak_of, args.height)
    elif args.memory:
        memory(500, args.repeats)
    else:
        speed(args.height, args.width, args.repeats)


if __name__ == "__main__":
    main()
