"""The training loop: backbone -> margin head plus auxiliary terms (the OT loss on a stage's
feature maps among them), SGD with the paper's step schedule, periodic validation, atomic
checkpoints and exact resume, on one process or on several (torchrun, :mod:`.distributed`).

One optimiser step (:meth:`Trainer.step`) consumes ``optim.grad_accum`` micro-batches of
``optim.batch_size`` images; the loss is divided by ``grad_accum`` and the schedule counts
optimiser steps, so accumulation changes neither the effective loss scale nor the schedule (SPEC §9).

With N processes, ``optim.batch_size`` is the global batch: each process trains on its slice
(the samplers cut one global sequence), the backbone is replicated by DistributedDataParallel,
the head's classes are sharded (:class:`~otface.heads.partial_fc.PartialFC`), and the figures
logged -- losses, hard groups, images -- are those of the global batch. Rank 0 alone validates,
logs and writes; its checkpoint holds the whole head, so any number of processes can resume it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from otface.checkpoint import load_checkpoint
from otface.config import Config, save_config
from otface.data.skipping import BadSample, collate_skipping
from otface.data.transforms import flip_draws, flip_images, network_input
from otface.errors import ConfigError, RunError
from otface.eval.verification_suite import SUMMARY_KEYS, VerificationSuite, format_tar
from otface.heads.partial_fc import PartialFC, gradient_scaled
from otface.losses import build_aux_loss
from otface.models import build_backbone
from otface.progress import progress_bar
from otface.train.components import (
    build_class_head,
    build_model,
    build_sampler,
    build_scaler,
    build_terms,
    check_device_options,
    init_from,
    make_deterministic,
    named_parameters,
    whole_head,
)
from otface.train.data import open_training_set, prepare_data
from otface.train.distributed import SINGLE, Processes, barrier, global_sum, training_device
from otface.train.gradients import clip_global_norm, sync_replicated_gradients
from otface.train.metrics import MetricsLog
from otface.train.run_checkpoint import RunParts, restore_run, save_run
from otface.train.run_folder import CHECKPOINT
from otface.train.schedule import lr_factor
from otface.train.skips import KEPT_BAD_SAMPLES, check_records_left_out, check_skipped, record_bad_samples
from otface.train.state import TrainState, new_window, train_summary

log = logging.getLogger("otface.train")



class NonFiniteLossError(RunError):
    """Too many consecutive steps (across epochs) produced a NaN or infinite loss."""


@dataclass
class StepResult:
    """What one optimiser step trained on: global sums over its micro-batches."""

    loss: float
    terms: dict[str, float]
    groups: int
    images: int
    micro_batches: int
    overflow: bool


class Trainer:
    """Owns the model, head, losses, optimiser and data of one run folder, on this process."""

    def __init__(self, cfg: Config, run_dir: str | Path, procs: Processes = SINGLE) -> None:
        self.cfg = cfg
        self.procs = procs
        self.run_dir = Path(run_dir)
        if procs.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)  # the same stream on every process
        self.device = training_device(cfg.train.device)
        check_device_options(cfg, self.device, procs)
        make_deterministic(self.device, cfg.train.deterministic)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # exp(-C/eps) underflows to denormals, slow on CPUs

        train_root, val_paths = self._prepare_data()
        self.dataset = open_training_set(train_root, cfg.data)
        check_records_left_out(self.dataset, train_root, cfg.data.max_skip_fraction)
        self.backbone = build_backbone(
            cfg.model.backbone,
            embedding_size=cfg.model.embedding_size,
            input_size=cfg.model.input_size,
            **cfg.model.params,
        ).to(self.device)
        if cfg.train.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if cfg.train.sync_bn:
            self.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone)
        self.head = build_class_head(cfg, procs, self.dataset.num_classes, self.device)
        self.aux_losses = nn.ModuleDict({
            name: build_aux_loss(name, embedding_size=cfg.model.embedding_size,
                                 num_classes=self.dataset.num_classes, **spec.get("params", {}))
            for name, spec in cfg.losses.items()
        }).to(self.device)
        if cfg.model.init_from:
            init_from(Path(cfg.model.init_from), cfg, self.backbone, self.head, self.dataset.num_classes)
        self.terms = build_terms(cfg, self.backbone, self.aux_losses)
        self.model = build_model(cfg, self.backbone, self.terms, procs, self.device)
        self.validation = VerificationSuite(val_paths, image_size=cfg.model.input_size) if procs.is_main else None

        self.named_params = named_parameters(self.backbone, self.head, self.aux_losses)
        self.params = [p for _, p, _ in self.named_params]
        self.optimizer = torch.optim.SGD(
            self.params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.scaler = build_scaler(cfg, procs, self.device)
        self.sampler = build_sampler(cfg, self.dataset, procs)
        self.steps_per_epoch = len(self.sampler) // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.sampler)} micro-batches per epoch, fewer than optim.grad_accum="
                              f"{cfg.optim.grad_accum}: lower optim.grad_accum or optim.batch_size")
        self.state = TrainState(world_size=procs.world_size)
        self.saved_step: int | None = None  # the step of the checkpoint in the run folder, if any
        self.metrics: MetricsLog | None = None  # rank 0's records, while train() runs
        # uint8 batches become float inputs where the model runs; a CPU run with loader workers
        # leaves that to the workers, which have cores to spare while the main process trains
        on_cpu_with_workers = self.device.type == "cpu" and cfg.data.num_workers > 0
        self._worker_transform = (functools.partial(network_input, size=cfg.model.input_size)
                                  if on_cpu_with_workers else None)

    # ----------------------------------------------------------------------------- construction
    def _prepare_data(self) -> tuple[Path, dict[str, Path]]:
        """The data folders; the first process of each machine generates the synthetic set (into
        that machine's cache) while the others wait, then find it cached."""
        first = self.procs.local_rank == 0
        if first:
            found = prepare_data(self.cfg.data, progress=self.cfg.train.progress and self.procs.is_main)
        barrier(self.procs)
        return found if first else prepare_data(self.cfg.data, progress=False)

    @property
    def full_head(self) -> nn.Module:
        """The module whose state is the whole head's: the head, or a shard's wrapped head."""
        return whole_head(self.head)

    def _loader(self) -> torch.utils.data.DataLoader:
        self.sampler.set_epoch(self.state.epoch, start_batch=self.state.batch_in_epoch)
        # the loader draws its workers' seeds from this generator, not from torch's global one,
        # which a resumed run restores from the checkpoint; nothing random happens in the workers
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + self.state.epoch)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=generator,
            collate_fn=functools.partial(collate_skipping, transform=self._worker_transform),
            prefetch_factor=4 if workers else None,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"last good checkpoint: {self.checkpoint_path()} (step {self.saved_step})"

    def _parts(self) -> RunParts:
        return RunParts(self.backbone, self.head, self.aux_losses, self.optimizer, self.named_params, self.scaler)

    def save(self) -> None:
        """Write ``last.pt`` atomically (rank 0), holding the whole head and optimiser state;
        weights that became non-finite are never written (a :class:`NonFiniteWeightsError` on
        every process says where the last good checkpoint is). Every process calls it."""
        save_run(self.checkpoint_path(), self._parts(), self.state, self.cfg, self.procs, self.device,
                 f"optim.lr={self.cfg.optim.lr:g} may be too high): not saved; {self._last_good()}")
        self.saved_step = self.state.step

    def resume(self, ckpt: dict[str, Any] | None = None, changes: dict[str, list[Any]] | None = None) -> None:
        """Continue from ``ckpt`` (default: ``last.pt`` of the run folder, loaded here), written by
        any number of processes, recording the settings ``changes`` made by this resume (see
        :mod:`otface.train.resume`)."""
        path = self.checkpoint_path()
        self.state = restore_run(path, load_checkpoint(path) if ckpt is None else ckpt, self._parts(), self.procs,
                                 self.device)
        self.saved_step = self.state.step
        processes = [self.state.world_size, self.procs.world_size]
        if changes or processes[0] != processes[1]:
            self.state.resumes.append({"step": self.state.step, "changes": changes or {}, "world_size": processes})
            log.info("resumed with changed settings: %s",
                     ", ".join([f"{k} {old!r} -> {new!r}" for k, (old, new) in (changes or {}).items()]
                               + [f"processes {processes[0]} -> {processes[1]}"] * (processes[0] != processes[1])))
        self.state.world_size = self.procs.world_size
        log.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.state.epoch,
                 self.state.batch_in_epoch, self.state.step)

    # ----------------------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager:
        amp = self.cfg.train.amp
        if amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _set_lr(self) -> float:
        o = self.cfg.optim
        lr = o.lr * lr_factor(self.state.step, self.steps_per_epoch, o.milestones, o.gamma, o.warmup_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        """This process's total loss L_head + sum_k w_k L_k (Eq. 10 with the OT term), its terms,
        the hard groups (L_head is the global batch's; the terms are this process's slice's)."""
        with self._autocast():
            emb, features = self.model(images)
            # the head's loss is the global batch's on every process, so its gradient reaches each
            # process's embeddings exactly; DDP averages the backbone's gradients over the processes
            # (right for the terms, local means): the head's part is scaled to compensate
            head_input = gradient_scaled(emb, self.procs.world_size) if self.procs.distributed else emb
            losses = {"head": self.head(head_input, labels)}
        weights = {"head": 1.0}
        groups = 0
        for term in self.terms:
            losses[term.name], found = term(emb, labels, self.full_head, features)
            weights[term.name] = term.weight
            groups += found
        total = sum(weights[k] * v for k, v in losses.items())
        return total, {k: v.item() for k, v in losses.items()}, groups

    def _inputs(self, images: torch.Tensor, position: int) -> torch.Tensor:
        """The network inputs of this process's slice of the batch at ``position`` in the epoch:
        on the device, as floats, randomly flipped by (seed, epoch, position, place in the global
        batch) when ``data.flip``."""
        images = images.to(self.device, non_blocking=True)
        if self._worker_transform is None:
            images = network_input(images, self.cfg.model.input_size)
        if self.cfg.data.flip:
            first = self.procs.rank * self.sampler.local_batch_size
            flips = flip_draws(self.cfg.train.seed, self.state.epoch, position, first + len(images))[first:]
            images = flip_images(images, flips)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult | None:
        """One optimiser step over ``batches``, the micro-batches (inputs, labels) of this process.

        DDP synchronises the gradients of the last micro-batch only (``no_sync`` before it); the
        fp16 gradient scaler scales the loss and skips a step whose gradients overflowed; the
        gradients are unscaled before clipping. A non-finite loss on any process abandons the
        step on all of them (None).
        """
        sums = torch.zeros(5 + len(self.terms), dtype=torch.float64)
        for k, (images, labels) in enumerate(batches):
            last = k == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.procs.distributed else self.model.no_sync()
            with sync:
                loss, terms, groups = self._forward(images, labels)
                self.scaler.scale(loss / len(batches)).backward()
            value = loss.item()
            local = torch.tensor([not math.isfinite(value), value, groups, len(labels), *terms.values()],
                                 dtype=torch.float64)
            sums += global_sum(local, self.procs)
        if sums[0] > 0:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        sync_replicated_gradients(self.head, self.aux_losses, self.procs)
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            clip_global_norm(self.named_params, self.cfg.optim.grad_clip, self.procs, self.device)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # per micro-batch, summed over the processes: the head's loss (the global batch's) once per
        # process, each term's local value: / world is the global loss and its terms' means
        world = self.procs.world_size
        names = ["head", *(term.name for term in self.terms)]
        return StepResult(loss=sums[1].item() / world, terms={n: v / world for n, v in zip(names, sums[4:].tolist())},
                          groups=int(sums[2].item()), images=int(sums[3].item()), micro_batches=len(batches),
                          overflow=self.scaler.is_enabled() and self.scaler.get_scale() < scale)

    def train(self) -> dict[str, Any] | None:
        """Run (or continue) training to ``optim.epochs``, then evaluate; returns the results on
        rank 0 (None on the others).

        Raises :class:`RunError` kinds when the run cannot go on: it diverged, more data than
        ``data.max_skip_fraction`` was unreadable, or no step was trained at all.
        """
        cfg, procs = self.cfg, self.procs
        if procs.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        log.info("data: %d images of %d identities; %d optimiser steps per epoch; device %s%s",
                 len(self.dataset), self.dataset.num_classes, self.steps_per_epoch, self.device,
                 f"; {procs.world_size} processes" if procs.distributed else "")
        total_steps = self.steps_per_epoch * cfg.optim.epochs
        self.metrics = MetricsLog(self.run_dir, self.saved_step or 0) if procs.is_main else None
        try:
            return self._train_to_the_end(total_steps)
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _train_to_the_end(self, total_steps: int) -> dict[str, Any] | None:
        cfg, procs = self.cfg, self.procs
        bar = progress_bar(total=total_steps, initial=self.state.step, desc="train", unit="step",
                           enabled=cfg.train.progress and procs.is_main, dynamic_ncols=True)
        while self.state.epoch < cfg.optim.epochs:
            self._train_epoch(bar)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.save()
            check_skipped(self.state, self.state.samples, self.cfg.data.max_skip_fraction)
            if cfg.train.val_interval and self.state.epoch % cfg.train.val_interval == 0 \
                    and self.state.epoch < cfg.optim.epochs and procs.is_main:
                self._log_validation(self.validation.evaluate(self.backbone, self.device, progress=False))
        bar.close()
        if self.state.step == 0:
            raise RunError(f"trained no step in {self.state.epoch} epochs: every batch was unreadable "
                           f"({self.state.skipped_samples} samples skipped) or gave a non-finite loss "
                           f"({self.state.skipped_steps} batches)")
        return self.finish() if procs.is_main else None

    def _micro_batch(self, images: torch.Tensor | None, labels: torch.Tensor | None, bad: list[BadSample],
                     position: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This process's inputs and labels of the micro-batch at ``position``, or None when it
        cannot be trained on: all its samples were unreadable or, with several processes, some
        sample of any process was (every process then drops it). Samples drawn and lost are
        counted over all processes."""
        lost = len(bad)
        counts = torch.tensor([lost + (0 if labels is None else len(labels)), lost, images is None,
                               bool(bad) and self.cfg.data.on_error == "raise"], dtype=torch.float64)
        drawn, lost_all, empty, stop = global_sum(counts, self.procs).tolist()
        self.state.samples += int(drawn)
        if stop:
            if bad and self.cfg.data.on_error == "raise":
                raise bad[0].error
            raise RunError("another process stopped on an unreadable training sample (data.on_error=raise): "
                           "its message names the file and record")
        self._handle_bad(bad, int(lost_all))
        if empty or (self.procs.distributed and lost_all):
            return None
        return self._inputs(images, position), labels.to(self.device, non_blocking=True)

    def _train_epoch(self, bar: tqdm) -> None:
        cfg, st = self.cfg, self.state
        accum = cfg.optim.grad_accum
        micro_batches = self.steps_per_epoch * accum
        self.model.train()
        self.head.train()
        self.aux_losses.train()
        last = time.perf_counter()
        lr = self._set_lr()
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        consumed = 0  # micro-batches drawn since the last step, usable or not
        for images, labels, bad in self._loader():
            position = st.batch_in_epoch + consumed
            if position >= micro_batches:
                break
            consumed += 1
            if isinstance(self.head, PartialFC):
                self.head.draw_key = (st.epoch, position)
            batch = self._micro_batch(images, labels, bad, position)
            if batch is not None:
                group.append(batch)
            if len(group) < accum:
                continue
            result = self.step(group)
            st.batch_in_epoch += consumed
            consumed = 0
            group = []
            if result is None:
                self._count_non_finite()
                continue
            st.bad_in_row = 0
            self._count(result)
            st.step += 1
            now = time.perf_counter()
            st.seconds += now - last
            last = now
            bar.update(1)
            lr = self._set_lr()
            if st.step % cfg.train.log_interval == 0:
                self._log_window(lr, bar)
            if cfg.train.checkpoint_steps and st.step % cfg.train.checkpoint_steps == 0:
                self.save()

    def _count_non_finite(self) -> None:
        cfg, st = self.cfg, self.state
        st.bad_in_row += 1
        st.skipped_steps += 1
        log.warning("non-finite loss at epoch %d step %d: step skipped (%d skipped in all)",
                    st.epoch, st.step, st.skipped_steps)
        if st.bad_in_row >= cfg.train.max_bad_steps:
            raise NonFiniteLossError(
                f"{st.bad_in_row} consecutive non-finite losses (train.max_bad_steps="
                f"{cfg.train.max_bad_steps}) at epoch {st.epoch} step {st.step}; the run diverged "
                f"(optim.lr={cfg.optim.lr:g} may be too high); {self._last_good()}")

    def _count(self, result: StepResult) -> None:
        """Add a step's global figures to the log window and the run's totals."""
        st, window = self.state, self.state.window
        images = result.images
        window["loss"] += result.loss
        for name, value in result.terms.items():
            window["terms"][name] = window["terms"].get(name, 0.0) + value
        window["groups"] += result.groups
        window["n"] += result.micro_batches
        window["images"] += images
        st.images += images
        st.hard_groups += result.groups
        st.overflow_steps += result.overflow

    # ----------------------------------------------------------------------------- unreadable data
    def _handle_bad(self, bad: list[BadSample], lost: int) -> None:
        """Count the ``lost`` samples of all processes, keep this process's ``bad`` ones, and stop
        once more samples were skipped than ``data.max_skip_fraction`` of those planned allows."""
        if lost:
            record_bad_samples(self.state, bad, lost)
            o = self.cfg.optim
            check_skipped(self.state, o.epochs * self.steps_per_epoch * o.grad_accum * o.batch_size,
                          self.cfg.data.max_skip_fraction)

    # ----------------------------------------------------------------------------- reporting
    def _log_window(self, lr: float, bar: tqdm) -> None:
        st = self.state
        window = st.window
        elapsed = st.seconds - window["seconds_at_start"]
        n = max(window["n"], 1)
        terms = {f"{name}_loss": value / n for name, value in window["terms"].items()}
        row = {
            "epoch": st.epoch, "step": st.step, "lr": lr, "loss": window["loss"] / n, **terms,
            "hard_groups": window["groups"] / n, "images_per_second": window["images"] / max(elapsed, 1e-9),
        }
        st.history.append(row)
        if self.metrics is not None:
            self.metrics.record("train", st.step, {k: v for k, v in row.items() if k != "step"})
        bar.set_postfix(loss=f"{row['loss']:.3f}", groups=f"{row['hard_groups']:.1f}")
        parts = ", ".join(f"{name} {value / n:.4f}" for name, value in window["terms"].items())
        log.info("epoch %d step %d | lr %.4g | loss %.4f (%s) | hard groups %.1f | %.1f img/s",
                 row["epoch"], row["step"], lr, row["loss"], parts, row["hard_groups"], row["images_per_second"])
        st.window = new_window() | {"seconds_at_start": st.seconds}

    def _log_validation(self, results: dict[str, dict[str, Any]]) -> None:
        for name, r in results.items():
            log.info("val %s: accuracy %.4f ± %.4f, TAR@FAR=%g %s", name, r["accuracy"],
                     r["accuracy_std"], r["far_target"], format_tar(r))
            if self.metrics is not None:
                figures = {key: r.get(key) for key in SUMMARY_KEYS}
                self.metrics.record("validation", self.state.step, {"set": name, **figures}, group=name)

    def finish(self) -> dict[str, Any]:
        """Final evaluation, ROC picture and the results (``results.json`` of the run)."""
        roc = self.run_dir / "roc.png"
        results = self.validation.evaluate(self.backbone, self.device, progress=self.cfg.train.progress,
                                           roc_path=roc)
        self._log_validation(results)
        if self.metrics is not None:
            self.metrics.picture("roc", roc, self.state.step)
        loss_scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        summary = {
            "verification": results,
            "train": train_summary(self.state, self.cfg.optim.grad_accum, self.dataset.skipped[:KEPT_BAD_SAMPLES],
                                   len(self.dataset.skipped), self.procs.world_size, self.cfg.train.amp, loss_scale),
            "config": self.cfg.to_dict(),
        }
        return summary
