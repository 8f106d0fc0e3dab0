"""The training checkpoint ``last.pt``: what it holds, writing it atomically, restoring a run from it.

Format 2: the backbone, the *whole* head (a sharded head's rows gathered), the auxiliary losses, the
optimiser state by parameter name (class-row momentum gathered), the gradient scaler, the
:class:`~otface.train.state.TrainState`, the CPU RNG, every rank's CUDA RNG and the config. Rank 0
writes it; any number of processes restores it, each taking its shard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from otface.checkpoint import check_entries, load_into, save_checkpoint
from otface.config import Config
from otface.errors import ModelFileError, RunError
from otface.heads.partial_fc import PartialFC
from otface.train.components import whole_head
from otface.train.distributed import Processes, broadcast_value, global_sum
from otface.train.state import TrainState, cuda_rng_states, load_optimizer_state, optimizer_state

CHECKPOINT_FORMAT = 2  # 2: the whole head and optimiser state by parameter name, any world size
CHECKPOINT_ENTRIES = ("format", "backbone", "head", "losses", "optimizer", "scaler", "train_state", "torch_rng",
                      "cuda_rng", "config")


class NonFiniteWeightsError(RunError):
    """The weights became NaN or infinite; they are not saved over the last good checkpoint."""


class RunParts(NamedTuple):
    """What a checkpoint saves of a run, on this process."""

    backbone: nn.Module
    head: nn.Module  # a PartialFC shard, or the whole head
    aux_losses: nn.Module
    optimizer: torch.optim.Optimizer
    named_params: dict[str, nn.Parameter]
    scaler: Any  # torch.amp.GradScaler or ShardedGradScaler


def _head_state(head: nn.Module) -> dict[str, torch.Tensor]:
    return head.full_state_dict() if isinstance(head, PartialFC) else head.state_dict()


def save_run(path: Path, parts: RunParts, state: TrainState, cfg: Config, procs: Processes, device: torch.device,
             advice: str) -> None:
    """Write the checkpoint of ``parts`` atomically to ``path`` (rank 0; every process calls it).

    Non-finite weights on any process raise :class:`NonFiniteWeightsError` everywhere, its message
    ending in ``advice``; a failed write raises :class:`RunError` everywhere.
    """
    modules = {"backbone": parts.backbone, "head": whole_head(parts.head), "losses": parts.aux_losses}
    bad = [f"{part}.{name}" for part, module in modules.items() for name, t in module.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if global_sum(torch.tensor([len(bad)]), procs).item():
        raise NonFiniteWeightsError(
            f"the weights became non-finite by step {state.step} "
            f"({f'{len(bad)} tensors, e.g. {bad[0]}' if bad else 'on another process'}; {advice}")
    head = _head_state(parts.head)
    optimizer = optimizer_state(parts.optimizer, parts.named_params, parts.head)
    cuda_rng = cuda_rng_states(device, procs)
    failure = None
    if procs.is_main:
        entries = {
            "format": CHECKPOINT_FORMAT,
            "backbone": parts.backbone.state_dict(),
            "head": head,
            "losses": parts.aux_losses.state_dict(),
            "optimizer": optimizer,
            "scaler": parts.scaler.state_dict(),
            "train_state": dataclasses.asdict(state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
            "config": cfg.to_dict(),
        }
        try:
            save_checkpoint(entries, path)
        except RunError as err:
            failure = str(err)
    failure = broadcast_value(failure, procs)
    if failure:
        raise RunError(failure)


def restore_run(path: Path, ckpt: dict[str, Any], parts: RunParts, procs: Processes,
                device: torch.device) -> TrainState:
    """Load checkpoint ``ckpt`` (read from ``path``) into ``parts`` and the RNGs; its TrainState.

    A checkpoint of another format, or one whose entries do not fit, is a one-line ModelFileError.
    """
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: a checkpoint of format {ckpt.get('format', 1)!r}; this version of otface "
                             f"resumes format {CHECKPOINT_FORMAT} (start a new run)")
    check_entries(ckpt, path, CHECKPOINT_ENTRIES)
    load_into(parts.backbone, ckpt["backbone"], path, "its backbone does not fit this run's")
    head = parts.head.load_full_state_dict if isinstance(parts.head, PartialFC) else parts.head
    load_into(head, ckpt["head"], path, "its head does not fit this run's")
    load_into(parts.aux_losses, ckpt["losses"], path, "its losses do not fit this run's")
    load_optimizer_state(parts.optimizer, parts.named_params, parts.head, ckpt["optimizer"], path)
    if ckpt["scaler"] and parts.scaler.is_enabled():
        load_into(parts.scaler, ckpt["scaler"], path, "its gradient scaler state is not one this version reads")
    known = {f.name for f in dataclasses.fields(TrainState)}
    if not isinstance(ckpt["train_state"], dict) or set(ckpt["train_state"]) - known:
        raise ModelFileError(f"{path}: its train_state is not one this version of otface wrote")
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt["cuda_rng"]:
        torch.cuda.set_rng_state(ckpt["cuda_rng"][procs.rank % len(ckpt["cuda_rng"])], device)
    return TrainState(**ckpt["train_state"])
