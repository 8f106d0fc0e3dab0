"""The training loop: backbone -> margin head (+ OT loss on a stage's feature maps), SGD with the
paper's step schedule, periodic validation, atomic checkpoints and exact resume.

One optimiser step consumes ``optim.grad_accum`` micro-batches of ``optim.batch_size`` images;
the loss is divided by ``grad_accum`` and the schedule counts optimiser steps, so accumulation
changes neither the effective loss scale nor the schedule (SPEC §9).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from otface.config import Config, save_config
from otface.data.samplers import PKBatchSampler, RandomBatchSampler
from otface.data.skipping import BadSample, collate_skipping
from otface.data.transforms import flip_draws, flip_images, network_input
from otface.errors import ConfigError, ModelFileError, RunError
from otface.heads import build_head
from otface.losses import OTLoss, build_aux_loss
from otface.models import build_backbone
from otface.train.checkpoint import check_entries, load_checkpoint, load_into, save_checkpoint
from otface.train.data import open_training_set, prepare_data
from otface.train.evaluate import VerificationSuite, format_tar
from otface.train.run_folder import CHECKPOINT
from otface.train.schedule import lr_factor

log = logging.getLogger("otface.train")

KEPT_BAD_SAMPLES = 100  # skipped samples listed by name in the checkpoint and results (all are counted)
CHECKPOINT_ENTRIES = ("backbone", "head", "losses", "optimizer", "train_state", "torch_rng", "config")


class NonFiniteLossError(RunError):
    """Too many consecutive steps (across epochs) produced a NaN or infinite loss."""


class NonFiniteWeightsError(RunError):
    """The weights became NaN or infinite; they are not saved over the last good checkpoint."""


def _new_window() -> dict[str, Any]:
    """Sums over the steps since the last log line (checkpointed, so a resumed run logs the same)."""
    return {"loss": 0.0, "terms": {}, "groups": 0, "n": 0, "images": 0, "seconds_at_start": 0.0}


@dataclass
class TrainState:
    """What a checkpoint stores besides the weights: where the run is and what it has seen."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    images: int = 0
    seconds: float = 0.0
    hard_groups: int = 0
    skipped_steps: int = 0
    bad_in_row: int = 0  # consecutive non-finite losses; spans epochs
    samples: int = 0  # drawn from the loader, readable or not
    skipped_samples: int = 0
    bad_samples: list = field(default_factory=list)
    history: list = field(default_factory=list)
    window: dict = field(default_factory=_new_window)
    resumes: list = field(default_factory=list)  # per --resume: the step and the settings it changed


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a device that does not exist here is a
    :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name: use 'auto', 'cpu' or 'cuda[:i]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'no'}); use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: only 'cpu' and 'cuda' devices are supported")
    return device


def make_deterministic(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels: always on the CPU (where they cost next to nothing), on CUDA when
    asked (cuDNN's autotuner off, cuBLAS with a fixed workspace; slower). An operation without a
    deterministic CUDA kernel then raises instead of silently varying."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


class Trainer:
    """Owns the model, head, losses, optimiser and data of one run folder."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        make_deterministic(self.device, cfg.train.deterministic)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # exp(-C/eps) underflows to denormals, slow on CPUs

        train_root, val_paths = prepare_data(cfg.data, progress=cfg.train.progress)
        self.dataset = open_training_set(train_root, cfg.data)
        self._check_records_left_out(train_root)
        self.backbone = build_backbone(
            cfg.model.backbone,
            embedding_size=cfg.model.embedding_size,
            input_size=cfg.model.input_size,
            **cfg.model.params,
        ).to(self.device)
        self.head = build_head(
            cfg.head.name, cfg.model.embedding_size, self.dataset.num_classes, **cfg.head.params
        ).to(self.device)
        self.ot_loss = self._build_ot_loss()
        self.aux_losses = nn.ModuleDict({
            name: build_aux_loss(name, embedding_size=cfg.model.embedding_size,
                                 num_classes=self.dataset.num_classes, **spec.get("params", {}))
            for name, spec in cfg.losses.items()
        }).to(self.device)
        self.aux_weights = {name: float(spec["weight"]) for name, spec in cfg.losses.items()}
        self.validation = VerificationSuite(val_paths, image_size=cfg.model.input_size)

        self.params = [p for m in (self.backbone, self.head, self.aux_losses) for p in m.parameters()]
        self.optimizer = torch.optim.SGD(
            self.params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.sampler = self._build_sampler()
        self.steps_per_epoch = len(self.sampler) // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.sampler)} micro-batches per epoch, fewer than optim.grad_accum="
                              f"{cfg.optim.grad_accum}: lower optim.grad_accum or optim.batch_size")
        self.state = TrainState()
        self.saved_step: int | None = None  # the step of the checkpoint in the run folder, if any
        # uint8 batches become float inputs where the model runs; a CPU run with loader workers
        # leaves that to the workers, which have cores to spare while the main process trains
        on_cpu_with_workers = self.device.type == "cpu" and cfg.data.num_workers > 0
        self._worker_transform = (functools.partial(network_input, size=cfg.model.input_size)
                                  if on_cpu_with_workers else None)

    # ----------------------------------------------------------------------------- construction
    def _build_ot_loss(self) -> OTLoss | None:
        o = self.cfg.ot
        if o.weight == 0:
            return None
        if o.stage not in self.backbone.stage_names:
            raise ConfigError(f"ot.stage {o.stage!r} is not a stage of {self.cfg.model.backbone}: "
                              f"choose one of {list(self.backbone.stage_names)}")
        return OTLoss(
            eps=o.eps, iters=o.iters, tol=o.tol or None, grad=o.grad, margin=o.margin,
            mining_margin=o.mining_margin, max_groups=o.max_groups or None,
            reduction=o.reduction, chunk_size=o.chunk_size,
        )

    def _build_sampler(self) -> PKBatchSampler | RandomBatchSampler:
        d, o, seed = self.cfg.data, self.cfg.optim, self.cfg.train.seed
        try:
            if d.sampler == "pk":
                return PKBatchSampler(self.dataset.labels, o.batch_size, d.images_per_identity, seed=seed)
            return RandomBatchSampler(len(self.dataset), o.batch_size, seed=seed)
        except ValueError as err:  # the samplers' own checks of sizes against the data
            raise ConfigError(f"data.sampler={d.sampler}, optim.batch_size={o.batch_size}: {err}") from None

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

    def save(self) -> None:
        """Write ``last.pt`` atomically; weights that became non-finite are never written (a
        :class:`NonFiniteWeightsError` says where the last good checkpoint is)."""
        modules = {"backbone": self.backbone, "head": self.head, "losses": self.aux_losses}
        bad = [f"{part}.{name}" for part, module in modules.items() for name, t in module.state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise NonFiniteWeightsError(
                f"the weights became non-finite by step {self.state.step} ({len(bad)} "
                f"tensors, e.g. {bad[0]}; optim.lr={self.cfg.optim.lr:g} may be too high): not saved; "
                f"{self._last_good()}")
        state = {name: module.state_dict() for name, module in modules.items()} | {
            "optimizer": self.optimizer.state_dict(),
            "train_state": dataclasses.asdict(self.state),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }
        save_checkpoint(state, self.checkpoint_path())
        self.saved_step = self.state.step

    def resume(self, ckpt: dict[str, Any] | None = None, changes: dict[str, list[Any]] | None = None) -> None:
        """Continue from ``ckpt`` (default: ``last.pt`` of the run folder, loaded here), recording
        the settings ``changes`` made by this resume (see :mod:`otface.train.resume`)."""
        path = self.checkpoint_path()
        ckpt = load_checkpoint(path) if ckpt is None else ckpt
        check_entries(ckpt, path, CHECKPOINT_ENTRIES)
        for name, part in (("backbone", self.backbone), ("head", self.head), ("losses", self.aux_losses),
                           ("optimizer", self.optimizer)):
            load_into(part, ckpt[name], path, f"its {name} does not fit this run's")
        known = {f.name for f in dataclasses.fields(TrainState)}
        if not isinstance(ckpt["train_state"], dict) or set(ckpt["train_state"]) - known:
            raise ModelFileError(f"{path}: its train_state is not one this version of otface wrote")
        self.state = TrainState(**ckpt["train_state"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.saved_step = self.state.step
        if changes:
            self.state.resumes.append({"step": self.state.step, "changes": changes})
            log.info("resumed with changed settings: %s",
                     ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
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
        """Total loss L_head + sum_k w_k L_k (Eq. 10 with the OT term), its terms, the hard groups."""
        stages = [self.cfg.ot.stage] if self.ot_loss is not None else []
        with self._autocast():
            emb, feats = self.backbone.forward_features(images, stages)
            terms = {"head": self.head(emb, labels)}
        weights = {"head": 1.0}
        groups = 0
        if self.ot_loss is not None:
            ot = self.ot_loss(feats[self.cfg.ot.stage], emb, labels)
            terms["ot"], weights["ot"], groups = ot.loss, self.cfg.ot.weight, ot.num_groups
        for name, loss in self.aux_losses.items():
            terms[name], weights[name] = loss(emb, labels, head=self.head), self.aux_weights[name]
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: v.item() for k, v in terms.items()}, groups

    def _inputs(self, images: torch.Tensor, position: int) -> torch.Tensor:
        """The network inputs of the batch at ``position`` in the epoch: on the device, as
        floats, randomly flipped by (seed, epoch, position) when ``data.flip``."""
        images = images.to(self.device, non_blocking=True)
        if self._worker_transform is None:
            images = network_input(images, self.cfg.model.input_size)
        if self.cfg.data.flip:
            images = flip_images(images, flip_draws(self.cfg.train.seed, self.state.epoch, position, len(images)))
        return images

    def train(self) -> dict[str, Any]:
        """Run (or continue) training to ``optim.epochs``, then evaluate; returns the results.

        Raises :class:`RunError` kinds when the run cannot go on: it diverged, more data than
        ``data.max_skip_fraction`` was unreadable, or no step was trained at all.
        """
        cfg = self.cfg
        save_config(cfg, self.run_dir / "config.yaml")
        log.info("data: %d images of %d identities; %d optimiser steps per epoch; device %s",
                 len(self.dataset), self.dataset.num_classes, self.steps_per_epoch, self.device)
        total_steps = self.steps_per_epoch * cfg.optim.epochs
        bar = tqdm(total=total_steps, initial=self.state.step, desc="train", unit="step",
                   disable=not cfg.train.progress, dynamic_ncols=True)
        while self.state.epoch < cfg.optim.epochs:
            self._train_epoch(bar)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.save()
            self._check_skipped(self.state.samples)
            if cfg.train.val_interval and self.state.epoch % cfg.train.val_interval == 0 \
                    and self.state.epoch < cfg.optim.epochs:
                self._log_validation(self.validation.evaluate(self.backbone, self.device, progress=False))
        bar.close()
        if self.state.step == 0:
            raise RunError(f"trained no step in {self.state.epoch} epochs: every batch was unreadable "
                           f"({self.state.skipped_samples} samples skipped) or gave a non-finite loss "
                           f"({self.state.skipped_steps} batches)")
        return self.finish()

    def _train_epoch(self, bar: tqdm) -> None:
        cfg, st = self.cfg, self.state
        accum = cfg.optim.grad_accum
        micro_batches = self.steps_per_epoch * accum
        self.backbone.train()
        self.head.train()
        micro = 0
        last = time.perf_counter()
        lr = self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        for images, labels, bad in self._loader():
            position = st.batch_in_epoch + micro
            if position >= micro_batches:
                break
            st.samples += len(bad) + (0 if labels is None else len(labels))
            self._handle_bad(bad)
            if images is None:
                st.batch_in_epoch += micro + 1
                micro = 0
                self.optimizer.zero_grad(set_to_none=True)
                continue
            images = self._inputs(images, position)
            labels = labels.to(self.device, non_blocking=True)
            loss, terms, groups = self._forward(images, labels)
            if not torch.isfinite(loss):
                st.bad_in_row += 1
                st.skipped_steps += 1
                log.warning("non-finite loss (%s) at epoch %d step %d: micro-batch skipped (%d skipped in all)",
                            loss.item(), st.epoch, st.step, st.skipped_steps)
                if st.bad_in_row >= cfg.train.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{st.bad_in_row} consecutive non-finite losses (train.max_bad_steps="
                        f"{cfg.train.max_bad_steps}) at epoch {st.epoch} step {st.step}; the run diverged "
                        f"(optim.lr={cfg.optim.lr:g} may be too high); {self._last_good()}")
                self.optimizer.zero_grad(set_to_none=True)
                st.batch_in_epoch += micro + 1
                micro = 0
                continue
            st.bad_in_row = 0
            (loss / accum).backward()
            micro += 1
            window = st.window
            window["loss"] += loss.item()
            for name, value in terms.items():
                window["terms"][name] = window["terms"].get(name, 0.0) + value
            window["groups"] += groups
            window["n"] += 1
            window["images"] += images.shape[0]
            st.images += images.shape[0]
            st.hard_groups += groups
            if micro < accum:
                continue
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            st.batch_in_epoch += micro
            micro = 0
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

    # ----------------------------------------------------------------------------- unreadable data
    def _check_records_left_out(self, root: Path) -> None:
        """Records dropped when the training set was opened (``data.on_error=skip``): logged,
        and a :class:`RunError` when more than ``data.max_skip_fraction`` of them."""
        skipped = self.dataset.skipped
        for key, reason in skipped:
            log.warning("unreadable record %d left out of the training set: %s", key, reason)
        total = len(self.dataset) + len(skipped)
        if skipped and len(skipped) > self.cfg.data.max_skip_fraction * total:
            raise RunError(f"{len(skipped)} of the {total} records of {root} are unreadable, more than "
                           f"data.max_skip_fraction={self.cfg.data.max_skip_fraction:g}; first: {skipped[0][1]}")

    def _handle_bad(self, bad: list[BadSample]) -> None:
        """Raise the first unreadable sample's error (``data.on_error=raise``), or count and log
        them, stopping once more samples were skipped than ``data.max_skip_fraction`` allows."""
        if not bad:
            return
        if self.cfg.data.on_error == "raise":
            raise bad[0].error
        for sample in bad:
            self.state.skipped_samples += 1
            if len(self.state.bad_samples) < KEPT_BAD_SAMPLES:
                self.state.bad_samples.append([sample.index, sample.reason])
            log.warning("skipped sample %d (%d skipped in all): %s", sample.index, self.state.skipped_samples,
                        sample.reason)
        planned = self.cfg.optim.epochs * self.steps_per_epoch * self.cfg.optim.grad_accum * self.cfg.optim.batch_size
        self._check_skipped(planned)

    def _check_skipped(self, out_of: int) -> None:
        limit = self.cfg.data.max_skip_fraction
        if self.state.skipped_samples > limit * out_of:
            first = self.state.bad_samples[0][1] if self.state.bad_samples else ""
            raise RunError(f"{self.state.skipped_samples} unreadable training samples skipped, more than "
                           f"data.max_skip_fraction={limit:g} of {out_of}; first: {first}")

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
        bar.set_postfix(loss=f"{row['loss']:.3f}", groups=f"{row['hard_groups']:.1f}")
        parts = ", ".join(f"{name} {value / n:.4f}" for name, value in window["terms"].items())
        log.info("epoch %d step %d | lr %.4g | loss %.4f (%s) | hard groups %.1f | %.1f img/s",
                 row["epoch"], row["step"], lr, row["loss"], parts, row["hard_groups"], row["images_per_second"])
        st.window = _new_window() | {"seconds_at_start": st.seconds}

    def _log_validation(self, results: dict[str, dict[str, Any]]) -> None:
        for name, r in results.items():
            log.info("val %s: accuracy %.4f ± %.4f, TAR@FAR=%g %s", name, r["accuracy"],
                     r["accuracy_std"], r["far_target"], format_tar(r))

    def finish(self) -> dict[str, Any]:
        """Final evaluation, ROC picture and the results (``results.json`` of the run)."""
        results = self.validation.evaluate(self.backbone, self.device, progress=self.cfg.train.progress,
                                           roc_path=self.run_dir / "roc.png")
        self._log_validation(results)
        st = self.state
        rows = [r for r in st.history if r["images_per_second"] > 0]
        steps = max(st.step, 1)
        micro_batches = steps * self.cfg.optim.grad_accum
        summary = {
            "verification": results,
            "train": {
                "epochs": st.epoch,
                "steps": st.step,
                "images": st.images,
                "train_seconds": st.seconds,
                "images_per_second": st.images / st.seconds if st.seconds > 0 else math.nan,
                "hard_groups_per_step": st.hard_groups / micro_batches,
                "skipped_steps": st.skipped_steps,
                "skipped_records": [[key, reason] for key, reason in self.dataset.skipped[:KEPT_BAD_SAMPLES]],
                "num_skipped_records": len(self.dataset.skipped),
                "skipped_samples": st.skipped_samples,
                "bad_samples": st.bad_samples,
                "final_loss": rows[-1]["loss"] if rows else math.nan,
                "history": st.history,
                "resumes": st.resumes,
            },
            "config": self.cfg.to_dict(),
        }
        return summary
