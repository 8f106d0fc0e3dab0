"""Peak memory and time of the classification head's forward + backward per process, against the
number of classes C, the number of processes N and Partial FC's sample rate r.

    python benchmarks/head_memory.py [--classes 10000 100000 1000000 2000000] [--world-sizes 1 8]
        [--rates 1.0 0.1] [--head arcface] [--batch B] [--embedding E] [--repeats 5]
        [--device auto|cpu|cuda] [--max-gb G] [--threads T] [--json PATH]

One process stands for process k of N: it builds ``PartialFC(build_head(head, E, C_k), C_k,
world_size=1, sample_rate=r)`` over the C_k = ceil(C / N) classes of one shard. With N processes
the only collectives of :class:`~otface.heads.partial_fc.PartialFC` exchange tensors of the global
batch's size ((B, E) embeddings, (B,) labels, maxima and sums), so a one-process head over C_k
classes does the same work and holds the same memory as one process of the N-process head, those
all-reduces and all-gathers aside. The input is a global batch of B random embeddings (B = 512,
E = 512 on CUDA; B = 128 and a small E = 128 on the CPU) whose labels are drawn from the shard's
classes: every target is held here, the most positives a shard can hold, so the classes scored
per step, S = max(distinct positives, ceil(r C_k)) (:meth:`PartialFC.sample_classes`), are exact
whenever r C_k >= B and an upper bound below that. Each step draws a new sample (``draw_key``) and
sets the weight's gradient to None first, as the trainer's ``zero_grad(set_to_none=True)`` does.

Measured per configuration:

- ms / step: median wall time of ``--repeats`` forward + backward steps after one warm-up step
  (CUDA synchronised around each);
- peak MB: the most memory the step holds beyond what was allocated before it (the weight and the
  embeddings, no gradient yet). On CUDA, ``torch.cuda.max_memory_allocated`` over the timed steps
  minus ``memory_allocated`` before them (after the warm-up, its gradients released). On the CPU
  torch's allocations are not tracked (tracemalloc does not see them), so each configuration runs
  in a fresh process (multiprocessing, spawn) and the figure is the growth of its resident set's
  high-water mark (``ru_maxrss``) during the first step over the resident set just before it.
  That process first runs a step of a 16-class head, so that torch's lazy set-up on first use
  (thread pools, kernel buffers: about 12 MB) is not counted; building the head leaves no freed
  memory behind, so the high-water mark is the resident set when the step starts, and the figure
  is good to about a MB (the allocator may reuse memory it kept). A step that does not raise the
  mark is shown as "<= MB";
- state MB: weight + gradient + SGD momentum, 3 C_k E float32 (computed, not measured), what the
  process keeps between steps.

How to read it: ms, and the parts of the peak that are (B, S) (scores, logits, their gradients)
or (S, E) (the normalised rows scored and their gradient), follow S, i.e. r C / N. The peak also
holds the weight's gradient, dense (C_k, E) whatever r -- the rows not sampled get a zero gradient,
as in Partial FC v2 -- so at small r it falls towards that floor of C_k E x 4 bytes rather than by
the full factor r; the state scales as C / N, whatever r. A configuration whose estimated
footprint (state plus the step's temporaries, see :func:`estimated_bytes`) exceeds ``--max-gb``
(default: 8 GB on the CPU, 90 % of the device's memory on CUDA) is skipped; one that still runs
out of memory is reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from otface.heads import build_head
from otface.heads.partial_fc import PartialFC
from otface.train.distributed import resolve_device

MB = 2**20
# float32 temporaries a step holds at once, for the skip estimate (measured on the CPU: about 4 of each)
ROW_TEMPORARIES = 4  # (S, E): the rows scored, normalised, their gradients
LOGIT_TEMPORARIES = 5  # (B, S): scores, logits, exponentials, their gradients
FIRST_USE_CLASSES = 16  # the head of the CPU process's first step, run before the measured one


@dataclass
class Setting:
    """One configuration and the inputs common to all."""

    classes: int
    world_size: int
    rate: float
    head: str
    batch: int
    embedding: int
    repeats: int
    device: str
    threads: int

    @property
    def held(self) -> int:
        """C_k, the classes of one process's shard (the largest shard)."""
        return -(-self.classes // self.world_size)


@dataclass
class Row:
    classes: int
    world_size: int
    rate: float
    held: int  # C_k, classes per process
    scored: int  # S, classes scored per step
    state_mb: float
    ms: float | None = None
    peak_mb: float | None = None
    peak_is_bound: bool = False  # the step did not raise the CPU high-water mark: peak_mb is an upper bound
    note: str = ""


def state_bytes(held: int, embedding: int) -> int:
    """Weight, gradient and momentum of C_k rows of E float32."""
    return 3 * held * embedding * 4


def scored_classes(held: int, rate: float, batch: int) -> int:
    """S for ``batch`` labels in the shard, before drawing them: at most max(B, ceil(r C_k))."""
    return held if rate == 1.0 else min(held, max(batch, math.ceil(rate * held)))


def estimated_bytes(s: Setting) -> int:
    """The footprint assumed for skipping: the state (weight, gradient, momentum) and the step's
    :data:`ROW_TEMPORARIES` (S, E) and :data:`LOGIT_TEMPORARIES` (B, S) float32 temporaries."""
    scored = scored_classes(s.held, s.rate, s.batch)
    step = ROW_TEMPORARIES * scored * s.embedding + LOGIT_TEMPORARIES * s.batch * scored
    return state_bytes(s.held, s.embedding) + 4 * step


def rss_bytes() -> int:
    """The resident set of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def max_rss_bytes() -> int:
    """The high-water mark of this process's resident set (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def unmeasured(s: Setting, note: str) -> Row:
    """The row of a configuration that was not measured, with the reason."""
    return Row(s.classes, s.world_size, s.rate, s.held, scored_classes(s.held, s.rate, s.batch),
               state_bytes(s.held, s.embedding) / MB, note=note)


def measure(s: Setting) -> Row:
    """Build the shard's head and inputs, then measure the forward + backward steps."""
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    with torch.device(device):  # the weight is initialised where it lives
        head = PartialFC(build_head(s.head, s.embedding, s.held), s.held, sample_rate=s.rate)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch, s.embedding, generator=gen).to(device).requires_grad_()
    labels = torch.randint(s.held, (s.batch,), generator=gen).to(device)
    rows = head.sample_classes(labels)
    row = Row(s.classes, s.world_size, s.rate, s.held, s.held if rows is None else len(rows),
              state_bytes(s.held, s.embedding) / MB)

    def clear() -> None:
        head.zero_grad(set_to_none=True)
        x.grad = None

    def step(i: int) -> None:
        head.draw_key = (i,)
        clear()
        head(x, labels).backward()

    cuda = device.type == "cuda"
    if cuda:
        step(0)  # warm-up: kernels, cuBLAS workspace
        clear()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # a step of a tiny head first: torch's lazy set-up (thread pools, kernels' buffers) is not the step's
        tiny = PartialFC(build_head(s.head, s.embedding, FIRST_USE_CLASSES), FIRST_USE_CLASSES)
        tiny(x, labels % FIRST_USE_CLASSES).backward()
        x.grad = None
        before, mark = rss_bytes(), max_rss_bytes()
        step(0)  # warm-up and the memory measurement
        after = max_rss_bytes()
        row.peak_mb = (max(after, mark) - before) / MB
        row.peak_is_bound = after <= mark
    times = []
    for i in range(1, s.repeats + 1):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(i)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    row.ms = statistics.median(times) * 1e3
    if cuda:
        row.peak_mb = (torch.cuda.max_memory_allocated(device) - before) / MB
    return row


def run(s: Setting) -> Row:
    """:func:`measure` in this process on CUDA, in a fresh spawned process on the CPU."""
    if s.device.startswith("cuda"):
        try:
            return measure(s)
        except torch.OutOfMemoryError:
            return unmeasured(s, "out of memory")
        finally:
            torch.cuda.empty_cache()
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure, s).result()
    except BrokenProcessPool:
        return unmeasured(s, "the process died (out of memory?)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 2_000_000],
                        help="C, the classes of all processes together")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 8], help="N, the processes simulated")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1], help="r, Partial FC's sample rate")
    parser.add_argument("--head", default="arcface", help="head name (otface.heads.HEADS), paper defaults")
    parser.add_argument("--batch", type=int, help="B, the global batch (default 512 on CUDA, 128 on the CPU)")
    parser.add_argument("--embedding", type=int, help="E (default 512 on CUDA, 128 on the CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--max-gb", type=float,
                        help="skip configurations estimated above this (default: 8 on the CPU, 90%% of the GPU's)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (torch.set_num_threads); 0: torch's default")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (512 if cuda else 128)
    embedding = args.embedding or (512 if cuda else 128)
    if args.max_gb is not None:
        limit = args.max_gb * 2**30
    else:
        limit = 0.9 * torch.cuda.get_device_properties(device).total_memory if cuda else 8 * 2**30
    where = (torch.cuda.get_device_name(device) if cuda
             else f"CPU, {args.threads or torch.get_num_threads()} threads, one process per configuration")
    print(f"{where}; torch {torch.__version__}; head {args.head}, B = {batch}, E = {embedding}, "
          f"median of {args.repeats} steps; limit {limit / 2**30:.1f} GB")
    print(f"command: python {shlex.join(sys.argv)}\n")
    print("| classes C | N | r | classes per process C/N | scored per step S | state MB | ms / step | peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for classes in args.classes:
        for world_size in args.world_sizes:
            for rate in args.rates:
                s = Setting(classes, world_size, rate, args.head, batch, embedding, args.repeats, str(device),
                            args.threads)
                estimate = estimated_bytes(s)
                row = unmeasured(s, f"skipped: about {estimate / 2**30:.1f} GB") if estimate > limit else run(s)
                rows.append(row)
                if row.ms is None:
                    measured = f"| {row.note} | |"
                else:
                    measured = f"| {row.ms:.1f} | {'<= ' if row.peak_is_bound else ''}{row.peak_mb:.1f} |"
                print(f"| {classes} | {world_size} | {rate:g} | {row.held} | {row.scored} | {row.state_mb:.1f} "
                      + measured, flush=True)
    if args.json:
        setup = {"device": where, "torch": torch.__version__, "head": args.head, "batch": batch,
                 "embedding": embedding, "repeats": args.repeats, "command": shlex.join(["python", *sys.argv])}
        args.json.write_text(json.dumps({"setup": setup, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
