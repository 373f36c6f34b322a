"""Training throughput of ``python -m fcn.train`` on the built-in data with 1, 2 and 4 DDP CPU
processes, and the scaling efficiency that implies.

    python bench/ddp_scaling.py [--processes 1 2 4] [--repeats 3]

Each setting runs the real entry point twice, for 1 and for 3 epochs of
``experiment=quickstart`` (800 images an epoch, not the quickstart's 400, and the default memory
format: the workload the README's figures were measured on; batch 16 per process, validation
off); the difference of the two wall times is two epochs of training with start-up, process
launch and compilation cancelled out. Every process gets cores // processes intra-op threads, so
the processes share the machine instead of oversubscribing it. Runs alternate between settings;
the median is reported.

Efficiency = throughput(N) / (N x throughput(1)) measures what DDP costs on one machine: with
as many processes as cores and one thread each, the ideal is 1.0; gradient all-reduce over gloo
and the loss of intra-op parallelism per process take it below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_EPOCH = 800


def run(processes: int, epochs: int, workdir: Path) -> float:
    """Wall seconds of one ``fcn.train`` run."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    args = [
        sys.executable, "-m", "fcn.train", "experiment=quickstart", "logger=none",
        f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu", f"trainer.devices={processes}",
        f"data.train_set.num_images={IMAGES_PER_EPOCH}", "module.channels_last=false",
        "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={workdir / f'p{processes}_e{epochs}_{time.monotonic_ns()}'}",
    ]  # fmt: skip
    if processes > 1:
        args.append("trainer.strategy=ddp")
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fcn.train failed with {processes} processes:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[int, list[float]] = {n: [] for n in args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in args.processes:
                short, long = run(n, 1, Path(tmp)), run(n, 3, Path(tmp))
                times[n].append(long - short)
    cores = os.cpu_count()
    print(f"{cores} CPU cores; 2 epochs x {IMAGES_PER_EPOCH} images; median of {args.repeats}")
    print(f"{'processes':>9} {'threads':>7} {'s/2 epochs':>10} {'images/s':>9} {'efficiency':>10}")
    base = None
    for n in args.processes:
        seconds = statistics.median(times[n])
        rate = 2 * IMAGES_PER_EPOCH / seconds
        base = base or (rate if n == 1 else None)
        eff = f"{rate / (n * base):.2f}" if base else "-"
        threads = max(1, (cores or 1) // n)
        print(f"{n:>9} {threads:>7} {seconds:>10.1f} {rate:>9.1f} {eff:>10}")


if __name__ == "__main__":
    main()
