"""Forward+backward throughput of the cheap backbones on the CPU, to size CPU training runs.

    python benchmarks/bench_backbones_cpu.py [--threads 2] [--batch 64] [--sizes 112 56] [--steps 3]

Each row: one training step (train mode, forward, a scalar loss on the embedding, backward) on a
batch of random images, timed over ``--steps`` steps after one warm-up step. The optimizer step
and the classification head are not included.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from otface.allocator import retain_freed_memory
from otface.models import build_backbone

# (label, registered name, extra constructor arguments), cheapest last
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("iresnet18", "iresnet18", {}),
    ("iresnet18 width=0.5", "iresnet18", {"width": 0.5}),
    ("iresnet18 width=0.25", "iresnet18", {"width": 0.25}),
    ("mbf", "mbf", {}),
    ("mbf scale=1", "mbf", {"scale": 1}),
]


def forward_gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs for one image (a multiply-add counts as 2 FLOPs)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def images_per_second(model: torch.nn.Module, batch: int, size: int, steps: int) -> float:
    """Training-mode forward+backward images per second."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    for step in range(steps + 1):
        if step == 1:  # step 0 is the warm-up
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 56])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    retain_freed_memory()  # as otface commands do; OTFACE_KEEP_FREED_MEMORY=0 times glibc's default

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"{args.steps} timed steps, load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'backbone':<22}{'input':>6}{'params (M)':>12}{'fwd GFLOPs/img':>16}{'img/s':>9}")
    for label, name, kwargs in VARIANTS:
        for size in args.sizes:
            model = build_backbone(name, input_size=size, **kwargs)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            gflops = forward_gflops(model, size)
            rate = images_per_second(model, args.batch, size, args.steps)
            print(f"{label:<22}{size:>6}{params:>12.2f}{gflops:>16.3f}{rate:>9.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
