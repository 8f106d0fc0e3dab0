"""Images per second of a full training step (``Trainer.step``): the margin head alone
(``ot.weight=0``, ArcFace by default) against OTFace (the configured ``ot.weight``, default 1),
measured in the same run on the configured backbone.

    python benchmarks/train_step.py [--steps 20] [--warmup 3] [--classes N] [--json PATH] [key=value ...]

    # the GPU recipe, e.g. on 8 GPUs with a million classes:
    torchrun --nproc_per_node=8 benchmarks/train_step.py --classes 1000000 model.backbone=iresnet100 \
        model.input_size=112 "model.params={}" optim.batch_size=512 train.amp=bf16 train.compile=true

The trailing ``key=value`` arguments are config overrides (``otface train --list-keys``); without
any, the run is otface's default CPU run: the built-in synthetic faces (generated on first use and
cached in ``data.synthetic.cache_dir``, else $OTFACE_CACHE, else ~/.cache/otface), IResNet-18/4 at
56 px, batch 64. Each variant builds a fresh :class:`~otface.train.trainer.Trainer` (run folder: a
temporary directory), loads the first (warm-up + steps) x ``optim.grad_accum`` micro-batches of
epoch 0 from the trainer's own loader (real images; on the CPU with loader workers, already
converted to network inputs there, as in training) and moves them to the device once, cycling
through them if the epoch is shorter. A timed step is what training does per optimiser step after
the loader: ``Trainer._inputs`` (to float, resize, flip, on the device) for each micro-batch, then
``Trainer.step`` (forward, head, OT loss, backward, SGD). ``--steps`` steps are timed after
``--warmup`` (CUDA synchronised before each clock reading; with ``train.compile=true`` the warm-up
steps compile).

``--classes N`` trains the head over N classes instead of the data set's D identities (N >= D):
after the trainer is built its head is replaced by one over N classes, built by the trainer's own
``build_class_head`` (a :class:`~otface.heads.partial_fc.PartialFC` shard per process under torchrun or
with ``head.sample_rate`` < 1), its optimiser by an SGD over the new parameters, and each identity
of the data set is relabelled to a distinct random class in [0, N), so the batches keep their
P x K identity structure (the groups the OT loss mines). Auxiliary losses (``losses.*``) are sized
by the data set's classes and are refused with ``--classes``.

Under torchrun each process joins the process group (``init_distributed``), ``optim.batch_size``
is the global batch and rank 0 prints. Output: the device, torch version and command, then a
markdown table with a row per variant -- ms per step, images/s (``steps x batch_size x
grad_accum`` global images over the timed seconds), the OT loss's hard groups per global
micro-batch -- and the ratio of OTFace's images/s to the head alone's (below 1: the cost of the
OT loss). ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from otface.allocator import retain_freed_memory
from otface.config import Config, load_config
from otface.errors import ConfigError
from otface.heads.partial_fc import PartialFC
from otface.train.components import build_class_head, named_parameters
from otface.train.distributed import Processes, close_distributed, init_distributed, training_device
from otface.train.trainer import Trainer


def widen_head(trainer: Trainer, classes: int) -> None:
    """Give ``trainer`` a head over ``classes`` classes, built as the trainer builds its own
    (:func:`~otface.train.components.build_class_head`), and an optimiser over the new parameters."""
    if trainer.cfg.losses:
        raise ConfigError("--classes: the auxiliary losses (losses.*) are sized by the data set's classes")
    if classes < trainer.dataset.num_classes:
        raise ConfigError(f"--classes {classes}: fewer than the data set's {trainer.dataset.num_classes} identities")
    trainer.head = build_class_head(trainer.cfg, trainer.procs, classes, trainer.device)
    o = trainer.cfg.optim
    trainer.named_params = named_parameters(trainer.backbone, trainer.head, trainer.aux_losses)
    trainer.params = [p for _, p, _ in trainer.named_params]
    trainer.optimizer = torch.optim.SGD(trainer.params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def load_batches(trainer: Trainer, count: int, relabel: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``count`` micro-batches (images, labels) of epoch 0 from the trainer's loader, on
    its device; labels mapped through ``relabel`` when given."""
    batches = []
    for images, labels, _ in trainer._loader():
        if images is None:  # every sample unreadable (data.on_error=skip)
            continue
        if relabel is not None:
            labels = relabel[labels]
        batches.append((images.to(trainer.device), labels.to(trainer.device)))
        if len(batches) == count:
            break
    return batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: Config, procs: Processes, classes: int | None, steps: int, warmup: int) -> dict[str, Any]:
    """Time ``steps`` optimiser steps of a fresh trainer after ``warmup``."""
    accum = cfg.optim.grad_accum
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, procs)
        relabel = None
        if classes is not None:
            widen_head(trainer, classes)
            generator = torch.Generator().manual_seed(cfg.train.seed)  # the same on every process
            relabel = torch.randperm(classes, generator=generator)[: trainer.dataset.num_classes]
        batches = load_batches(trainer, (warmup + steps) * accum, relabel)

        def step(k: int) -> int:
            """Optimiser step ``k``; the OT loss's hard groups (0 for a non-finite, skipped step)."""
            if isinstance(trainer.head, PartialFC):
                trainer.head.draw_key = (0, k)
            group = []
            for j in range(k * accum, (k + 1) * accum):
                images, labels = batches[j % len(batches)]
                group.append((trainer._inputs(images, j % len(batches)), labels))
            result = trainer.step(group)
            return -1 if result is None else result.groups

        for k in range(warmup):
            step(k)
        synchronize(trainer.device)
        start = time.perf_counter()
        groups = [step(warmup + k) for k in range(steps)]
        synchronize(trainer.device)
        seconds = time.perf_counter() - start
        head_classes = trainer.head.num_classes
    images = steps * cfg.optim.batch_size * accum
    finite = [g for g in groups if g >= 0]
    return {"ot_weight": cfg.ot.weight, "head_classes": head_classes, "ms_per_step": seconds / steps * 1e3,
            "images_per_second": images / seconds, "non_finite_steps": steps - len(finite),
            "hard_groups_per_micro_batch": sum(finite) / max(len(finite), 1) / accum}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for otface train")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--classes", type=int, help="classes of the head (default: the data set's identities)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    retain_freed_memory()  # as otface commands do; OTFACE_KEEP_FREED_MEMORY=0 times glibc's default

    base = load_config(None, args.overrides)
    if base.ot.weight == 0:
        parser.error("ot.weight=0: the OTFace variant needs a positive ot.weight (the other variant sets 0)")
    device = training_device(base.train.device)
    procs = init_distributed(device)
    try:
        variants = {f"{base.head.name}, ot.weight=0": load_config(None, [*args.overrides, "ot.weight=0"]),
                    f"{base.head.name} + OT, ot.weight={base.ot.weight:g}": base}
        figures = {name: measure(cfg, procs, args.classes, args.steps, args.warmup) for name, cfg in variants.items()}
    finally:
        close_distributed()
    if not procs.is_main:
        return
    launcher = f"torchrun --nproc_per_node={os.environ['LOCAL_WORLD_SIZE']}" if procs.distributed else "python"
    setup = {"device": device_name(device), "torch": torch.__version__, "processes": procs.world_size,
             "command": f"{launcher} {shlex.join(sys.argv)}", "steps": args.steps, "warmup": args.warmup}
    m, o = base.model, base.optim
    first = next(iter(figures.values()))
    print(f"{setup['device']}; torch {setup['torch']}; {procs.world_size} process(es)")
    print(f"command: {setup['command']}")
    print(f"{m.backbone} {m.params} at {m.input_size} px, batch {o.batch_size} x {o.grad_accum} accumulated, "
          f"{first['head_classes']} classes (head.sample_rate={base.head.sample_rate:g}), amp {base.train.amp}, "
          f"compile {base.train.compile}; {args.steps} steps timed after {args.warmup}\n")
    print("| variant | ms / step | images / s | hard groups / micro-batch |")
    print("|---|---:|---:|---:|")
    for name, f in figures.items():
        skipped = f" ({f['non_finite_steps']} non-finite steps)" if f["non_finite_steps"] else ""
        print(f"| {name} | {f['ms_per_step']:.1f} | {f['images_per_second']:.1f} | "
              f"{f['hard_groups_per_micro_batch']:.1f}{skipped} |")
    plain, ot = figures.values()
    ratio = ot["images_per_second"] / plain["images_per_second"]
    print(f"\nOTFace / head alone, images/s: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "variants": figures, "ratio": ratio}, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {err}")
