"""How far the paper-sized FCN-8s runs from the machine's ceiling, ours against a bare module.

Our `caffe` and `same` alignments and the reference computation written as a bare PyTorch module
here, in fp32 and bf16, with contiguous and channels-last memory, at batch 1 and 8, measured side
by side, with the FLOPs each run does and the device's matmul rate.

    python bench/model_speed.py [--device cpu|cuda] [--height 375 --width 500] [--repeats 5]
        [--batches 1 8] [--networks bare caffe same] [--settings fp32 fp32+cl bf16 bf16+cl]
        [--no-inference | --no-train] [--force-bf16]
    python bench/model_speed.py --check
    python bench/model_speed.py --memory [--repeats 5]

Printed, in order:

- the hardware: the CPU's model, its features (AVX2, AVX-512, AVX-512 BF16, AMX) and ATen's CPU
  capability, torch's threads and version; on ``--device cuda`` the GPU's name, compute
  capability and memory. Whether the device computes in bf16 natively.
- the ceiling: the best rate of square matmuls (2 n^3 FLOPs; n = 1024, 2048, 4096 on a CPU,
  4096 and 8192 on a GPU; best of 3 after a warm-up) in fp32 and, where bf16 is native (or with
  ``--force-bf16``), in bf16. tf32 is off on CUDA (matmuls and cuDNN), so fp32 means fp32 here
  and in the networks.
- the FLOPs per image of an inference (the forward) and of a training step (forward and
  backward), counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device once per
  network and batch: they depend on neither precision nor memory format.
- a table, one row per network, setting and batch (21 classes): inference (eval,
  inference_mode) and one training step (forward, summed cross-entropy, backward, SGD momentum
  step), each as seconds per image, achieved GFLOP/s, % of the matching ceiling (fp32 rows of
  the fp32 one, bf16 rows of the bf16 one) and the speed-up per image over the bare module in
  fp32 at the same batch. Settings: ``fp32``; ``fp32+cl`` (weights and input channels-last);
  ``bf16``: our inference as evaluate/predict score (a copy of the network with its weights cast
  to bf16 once by ``cast_for_inference``, run under ``autocast_for``), the training step under
  plain bf16 autocast on the fp32 master weights; ``bf16+cl`` both. The bare module runs fp32
  only, whatever ``--settings``: it is the baseline. bf16 settings are skipped, with a note, on a
  device without native bf16 unless ``--force-bf16``. For each batch, after one warm-up run of
  each, runs alternate between all configurations in a rotating order (none always first);
  medians of ``--repeats``. Memory: one fp32 network (and its momentum) per name, switched
  between memory formats as a setting needs; a bf16 copy only during its inference, gradients
  freed after each step.
- the cost of evaluation's metric update per image against the `same` fp32 forward (batch 1).
- the targets, each ``met`` or ``missed`` with the measured number, at each batch measured.

Targets. On a device with native bf16: `same` bf16+cl inference >= 5x faster than the bare
module in fp32 and >= 35% of the bf16 ceiling; its training step >= 3.5x faster; `same` fp32
inference (the better of fp32 and fp32+cl) >= 65% of the fp32 ceiling. Elsewhere (all fp32,
contiguous): ours `caffe` within 5% of the bare module (time <= 1.05x), `same` inference >= 1.8x
and training step >= 1.6x faster than it.

``--check`` prints the largest difference between the bare module and ours `caffe` on the same
weights: float rounding only (on a CPU ours runs fc6/fc7 as matrix products, the bare module as
convolutions; 0 where both run convolutions).

``--memory`` instead measures the peak resident memory of a training step at 500x500 for the
bare module and for ours, each in a fresh process, ``--repeats`` times (target: ours no more).
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcn.models.fcn import FCN, bilinear_kernel  # noqa: E402
from fcn.models.precision import autocast_for, cast_for_inference, native_bf16  # noqa: E402
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


BARE = "bare (reference)"
BUILDERS = {
    BARE: BareFCN8s,
    "ours, caffe": lambda: FCN(alignment="caffe", dropout=0.5),
    "ours, same": lambda: FCN(alignment="same", dropout=0.5),
}
#: ``--networks`` choices.
NETWORK_KEYS = {"bare": BARE, "caffe": "ours, caffe", "same": "ours, same"}
#: ``--settings`` choices: (precision, memory format of the weights and the input).
SETTINGS = {
    "fp32": ("fp32", torch.contiguous_format),
    "fp32+cl": ("fp32", torch.channels_last),
    "bf16": ("bf16", torch.contiguous_format),
    "bf16+cl": ("bf16", torch.channels_last),
}
HALVES = ("inference", "train")
Clock = Callable[[Callable[[], object]], float]


def networks(only: str | None = None) -> dict[str, nn.Module]:
    """The three networks (or just ``only``), paper-sized, 21 classes."""
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items() if only in (None, name)}


def wall_clock(run: Callable[[], object]) -> float:
    """Seconds ``run()`` takes (CPU)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def cuda_clock(run: Callable[[], object]) -> float:
    """Seconds the GPU work queued by ``run()`` takes, between a pair of CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def inference(
    net: nn.Module, x: torch.Tensor, clock: Clock = wall_clock, precision: str = "fp32"
) -> float:
    net.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast_for(precision, x.device.type):
            net(x)

    return clock(forward)


def train_step(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    clock: Clock = wall_clock,
    precision: str = "fp32",
) -> float:
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_for(precision, x.device.type):  # bf16: plain autocast, fp32 weights
            loss = F.cross_entropy(net(x), y, ignore_index=255, reduction="sum")
        loss.backward()
        opt.step()

    return clock(step)


def sgd(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in net.parameters() if p.requires_grad], 1e-10, momentum=0.99)


# --- the machine and its ceiling -----------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_hardware(device: torch.device) -> None:
    yes = {True: "yes", False: "no"}
    features = {
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512f": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx_tile": torch.cpu._is_amx_tile_supported(),
    }
    print(f"CPU: {cpu_name()}; " + ", ".join(f"{k} {yes[bool(v)]}" for k, v in features.items())
          + f"; ATen capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 matmul "
          f"precision {torch.get_float32_matmul_precision()!r}")  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        major, minor = torch.cuda.get_device_capability(device)
        print(f"GPU: {torch.cuda.get_device_name(device)}, compute capability {major}.{minor}, "
              f"{props.total_memory / 2**30:.1f} GiB; tf32 off (cuda matmul "
              f"{torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32})"
              ": fp32 means fp32")  # fmt: skip
    print(f"native bf16 on {device.type}: {yes[native_bf16(device)]}")


def matmul_ceiling(
    dtype: torch.dtype, device: torch.device, sizes: Sequence[int], clock: Clock, repeats: int = 3
) -> tuple[float, int]:
    """The best GFLOP/s of ``n x n`` matmuls over ``sizes`` (best of ``repeats`` after a
    warm-up), and the ``n`` it was reached at."""
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        product = partial(torch.matmul, a, b)
        clock(product)  # warm-up: kernels, allocator
        for _ in range(repeats):
            rate = 2 * n**3 / clock(product) / 1e9
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def ceilings(device: torch.device, precisions: Sequence[str], clock: Clock) -> dict[str, float]:
    sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048, 4096)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    out = {}
    for precision in precisions:
        out[precision], n = matmul_ceiling(dtypes[precision], device, sizes, clock)
        print(f"ceiling {precision}: {out[precision]:8.1f} GFLOP/s (square matmuls, n in "
              f"{', '.join(map(str, sizes))}; best at n={n})")  # fmt: skip
    return out


def count_flops(name: str, batch: int, height: int, width: int) -> dict[str, int]:
    """FLOPs of an inference and of a training step's forward and backward, on the meta device
    (the same counts as on a CPU or GPU, in any precision or memory format)."""
    with torch.device("meta"):
        net = BUILDERS[name]()
        x = torch.randn(batch, 3, height, width)
        y = torch.randint(0, 21, (batch, height, width))
    with FlopCounterMode(display=False) as forward, torch.inference_mode():
        net.eval()(x)
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(net.train()(x), y, ignore_index=255, reduction="sum").backward()
    return {"inference": forward.get_total_flops(), "train": step.get_total_flops()}


# --- the networks --------------------------------------------------------------------------------


def to_memory_format(net: nn.Module, opt: torch.optim.Optimizer, fmt: torch.memory_format) -> None:
    """The weights (kept as the same parameters) and their momentum buffers in ``fmt``."""
    net.to(memory_format=fmt)
    for state in opt.state.values():
        buf = state.get("momentum_buffer")
        if buf is not None and buf.ndim == 4:
            state["momentum_buffer"] = buf.contiguous(memory_format=fmt)


def run_once(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    setting: str,
    x: torch.Tensor,
    y: torch.Tensor,
    halves: Sequence[str],
    clock: Clock,
) -> dict[str, float]:
    """Seconds of an inference and a training step of ``net`` in ``setting``. Only the fp32
    master network and its optimizer state stay alive afterwards (no bf16 copy, no gradients)."""
    precision, fmt = SETTINGS[setting]
    to_memory_format(net, opt, fmt)
    x = x.contiguous(memory_format=fmt)
    out = {}
    if "inference" in halves:
        # bf16 scores as evaluate/predict compute them: weights cast once, on a copy
        scorer = net if precision == "fp32" else cast_for_inference(copy.deepcopy(net), precision)
        out["inference"] = inference(scorer, x, clock, precision)
        del scorer
    if "train" in halves:
        out["train"] = train_step(net, x, y, opt, clock, precision)
        opt.zero_grad(set_to_none=True)
    return out


def measure(
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer],
    configs: list[tuple[str, str]],
    x: torch.Tensor,
    y: torch.Tensor,
    halves: Sequence[str],
    repeats: int,
    clock: Clock,
) -> dict[tuple[str, str], dict[str, float]]:
    """Median seconds per (network, setting) and half: one warm-up run each, then ``repeats``
    rounds over all of them, the order rotated each round."""
    times: dict[tuple[str, str], dict[str, list[float]]] = {
        c: {h: [] for h in halves} for c in configs
    }
    for name, setting in configs:  # warm-up: allocator, kernels
        run_once(nets[name], opts[name], setting, x, y, halves, clock)
    for r in range(repeats):
        k = r % len(configs)
        for name, setting in configs[k:] + configs[:k]:  # rotate: none always goes first
            for half, t in run_once(nets[name], opts[name], setting, x, y, halves, clock).items():
                times[name, setting][half].append(t)
    return {c: {h: statistics.median(v) for h, v in ts.items()} for c, ts in times.items()}


# --- the report ----------------------------------------------------------------------------------

Results = dict[tuple[str, str, int], dict[str, float]]  # (network, setting, batch): half: seconds
Flops = dict[tuple[str, int], dict[str, int]]  # (network, batch): half: FLOPs
Check = tuple[str, float | None, str, float, str]  # label, value, "<=" or ">=", target, unit


def speedup(results: Results, name: str, setting: str, batch: int, half: str) -> float | None:
    """How many times faster per image than the bare module in fp32 at the same batch."""
    base = results.get((BARE, "fp32", batch), {}).get(half)
    seconds = results.get((name, setting, batch), {}).get(half)
    return None if base is None or seconds is None else base / seconds


def share(
    results: Results,
    flops: Flops,
    ceiling: dict[str, float],
    key: tuple[str, str, int],
    half: str,
) -> tuple[float, float] | None:
    """GFLOP/s achieved by ``key``'s ``half`` and its % of the matching ceiling."""
    seconds = results.get(key, {}).get(half)
    if seconds is None:
        return None
    name, setting, batch = key
    rate = flops[name, batch][half] / seconds / 1e9
    return rate, 100 * rate / ceiling[SETTINGS[setting][0]]


def print_table(
    results: Results, flops: Flops, ceiling: dict[str, float], halves: Sequence[str]
) -> None:
    title = {"inference": " inference ", "train": " training step "}
    print(f"{'':<35}" + "  ".join(f"{title[h]:-^38}" for h in HALVES))
    columns = f"{'s/image':>10}{'GFLOP/s':>10}{'% ceil':>9}{'vs bare':>9}"
    print(f"{'network':<18}{'setting':<10}{'batch':>5}  " + "  ".join([columns] * len(HALVES)))
    order = list(BUILDERS), list(SETTINGS)
    for key in sorted(results, key=lambda k: (k[2], order[0].index(k[0]), order[1].index(k[1]))):
        name, setting, batch = key
        cells = []
        for half in HALVES:
            if half not in halves:
                cells.append(f"{'-':>10}{'-':>10}{'-':>9}{'-':>9}")
                continue
            rate, percent = share(results, flops, ceiling, key, half)
            ratio = speedup(results, name, setting, batch, half)
            cells.append(f"{results[key][half] / batch:>10.4f}{rate:>10.1f}{percent:>8.1f}%"
                         + (f"{ratio:>8.2f}x" if ratio else f"{'-':>9}"))  # fmt: skip
        print(f"{name:<18}{setting:<10}{batch:>5}  " + "  ".join(cells))


def judge(checks: Sequence[Check]) -> list[str]:
    """One line per ``(label, value, "<=" or ">=", target, "x" or "%")``: the value, the target
    and ``met`` / ``missed`` (``not measured`` where the value is None)."""
    width = max(len(check[0]) for check in checks) + 2
    lines = []
    for label, value, op, target, unit in checks:
        goal = f"(target {op} {_shown(target, unit)})"
        if value is None:
            verdict, value_text = "not measured", "-"
        else:
            met = value <= target if op == "<=" else value >= target
            verdict, value_text = ("met" if met else "missed"), _shown(value, unit)
        lines.append(f"  {label:<{width}}{value_text:>8}  {goal:<18}  {verdict}")
    return lines


def _shown(value: float, unit: str) -> str:
    return f"{value:.1f}%" if unit == "%" else f"{value:.2f}x"


def print_targets(
    results: Results, flops: Flops, ceiling: dict[str, float], batches: Sequence[int], bf16: bool
) -> None:
    same = "ours, same"

    def up(name: str, setting: str, b: int, half: str) -> float | None:
        return speedup(results, name, setting, b, half)

    def percent(setting: str, b: int) -> float | None:
        measured = share(results, flops, ceiling, (same, setting, b), "inference")
        return None if measured is None else measured[1]

    checks: list[Check] = []
    for b in batches:
        if bf16:
            fp32 = [p for s in ("fp32", "fp32+cl") if (p := percent(s, b)) is not None]
            checks += [
                (f"batch {b}: `same` bf16+cl inference, speed-up over bare fp32",
                 up(same, "bf16+cl", b, "inference"), ">=", 5.0, "x"),
                (f"batch {b}: `same` bf16+cl inference, % of the bf16 ceiling",
                 percent("bf16+cl", b), ">=", 35.0, "%"),
                (f"batch {b}: `same` bf16+cl training step, speed-up over bare fp32",
                 up(same, "bf16+cl", b, "train"), ">=", 3.5, "x"),
                (f"batch {b}: `same` fp32 inference (best of fp32, fp32+cl), % of the fp32 "
                 "ceiling", max(fp32, default=None), ">=", 65.0, "%"),
            ]  # fmt: skip
        else:
            for half, what in (("inference", "inference"), ("train", "training step")):
                ratio = up("ours, caffe", "fp32", b, half)
                checks.append((f"batch {b}: `caffe` {what}, time / bare's",
                               None if ratio is None else 1 / ratio, "<=", 1.05, "x"))  # fmt: skip
            checks += [
                (f"batch {b}: `same` inference, speed-up over bare",
                 up(same, "fp32", b, "inference"), ">=", 1.8, "x"),
                (f"batch {b}: `same` training step, speed-up over bare",
                 up(same, "fp32", b, "train"), ">=", 1.6, "x"),
            ]  # fmt: skip
    kind = "native bf16" if bf16 else "no native bf16: fp32, contiguous"
    print(f"targets ({kind}):")
    print("\n".join(judge(checks)))


def speed(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    clock = cuda_clock if device.type == "cuda" else wall_clock
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: ceiling and networks alike
    torch.backends.cudnn.allow_tf32 = False
    describe_hardware(device)
    bf16 = native_bf16(device)
    settings = list(dict.fromkeys(args.settings))
    if not bf16 and not args.force_bf16:
        skipped = [s for s in settings if SETTINGS[s][0] == "bf16"]
        settings = [s for s in settings if s not in skipped]
        if skipped:
            print(f"note: {', '.join(skipped)} skipped: no native bf16 on this {device.type} "
                  "(--force-bf16 measures it emulated)")  # fmt: skip
    names = [NETWORK_KEYS[k] for k in dict.fromkeys(args.networks)]
    configs = [(n, s) for n in names for s in (["fp32"] if n == BARE else settings)]
    if not configs:
        print("nothing to measure")
        return
    halves = [h for h in HALVES if not getattr(args, f"no_{h}")]
    precisions = dict.fromkeys(["fp32"] + [SETTINGS[s][0] for s in settings])
    ceiling = ceilings(device, list(precisions), clock)

    height, width, batches = args.height, args.width, list(dict.fromkeys(args.batches))
    flops = {(n, b): count_flops(n, b, height, width) for n in names for b in batches}
    print("GFLOP per image (FlopCounterMode): inference (forward) / training step (forward and "
          "backward)")  # fmt: skip
    for (name, b), count in flops.items():
        print(f"  {name:<18}batch {b:<4}{count['inference'] / b / 1e9:>10.2f} /"
              f"{count['train'] / b / 1e9:>10.2f}")  # fmt: skip

    torch.manual_seed(0)
    nets = {name: BUILDERS[name]().to(device) for name in names}
    opts = {name: sgd(net) for name, net in nets.items()}
    results: Results = {}
    for b in batches:
        x = torch.randn(b, 3, height, width, device=device)
        y = torch.randint(0, 21, (b, height, width), device=device)
        for (name, setting), t in measure(
            nets, opts, configs, x, y, halves, args.repeats, clock
        ).items():
            results[name, setting, b] = t
    print(f"FCN-8s, {height}x{width}, 21 classes, {device.type}, median of {args.repeats}; per "
          "image: seconds, GFLOP/s achieved, % of the matmul ceiling of the row's precision, "
          "speed-up over the bare module in fp32 at the same batch")  # fmt: skip
    print_table(results, flops, ceiling, halves)
    if "ours, same" in nets and "inference" in halves:
        same = nets["ours, same"]
        to_memory_format(same, opts["ours, same"], torch.contiguous_format)
        x = torch.randn(1, 3, height, width, device=device)
        y = torch.randint(0, 21, (1, height, width), device=device)
        metric_cost(same, x, y, args.repeats, clock)
    del nets, opts
    print_targets(results, flops, ceiling, batches, bf16)


def metric_cost(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, clock: Clock = wall_clock
) -> None:
    """Evaluation: the confusion-matrix update per image against the forward pass."""
    metrics = SegmentationMetrics(21).to(x.device)
    with torch.inference_mode():
        scores = net.eval()(x)
    forward, update = [], []
    for _ in range(repeats):
        forward.append(inference(net, x, clock))
        update.append(clock(lambda: metrics.update(scores, y)))
    f, u = statistics.median(forward), statistics.median(update)
    print(
        f"evaluation: metric update {u * 1e3:.1f} ms per image = {100 * u / f:.2f}% of the "
        f"`same` fp32 forward ({f:.3f} s, batch 1)"
    )


def peak_memory_of(name: str, size: int) -> None:
    """In this process: one training step of ``name``; print the peak resident set in MB."""
    net = networks(only=name)[name]
    opt = sgd(net)
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
    base = statistics.median(peaks[BARE])
    for name, values in peaks.items():
        peak = statistics.median(values)
        print(f"{name:<18}{peak:>8.0f} MB{peak / base:>7.2f}   (runs: "
              f"{', '.join(f'{v:.0f}' for v in values)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--networks", nargs="+", choices=NETWORK_KEYS, default=list(NETWORK_KEYS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--no-inference", action="store_true", help="time training steps only")
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument(
        "--force-bf16", action="store_true", help="measure bf16 where it is not native too"
    )
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
        if args.no_inference and args.no_train:
            parser.error("--no-inference and --no-train leave nothing to measure")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device available")
        if args.repeats < 1 or min(args.batches) < 1:
            parser.error("--repeats and --batches must be positive")
        speed(args)


if __name__ == "__main__":
    main()
