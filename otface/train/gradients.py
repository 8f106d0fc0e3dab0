"""The gradients of one optimiser step across processes, beyond DDP's average of the backbone's:
the parameters every process holds outside DDP, and the clip on the norm of the whole model."""

from __future__ import annotations

import torch
from torch import nn

from otface.train.distributed import Processes, global_sum


def sync_replicated_gradients(head: nn.Module, aux_losses: nn.Module, procs: Processes) -> None:
    """Gradients of the parameters outside DDP that every process holds: the sharded head's
    replicated ones summed (:meth:`~otface.heads.partial_fc.PartialFC.sync_replicated_gradients`),
    the auxiliary losses' averaged. Nothing on one process."""
    if not procs.distributed:
        return
    head.sync_replicated_gradients()
    for p in aux_losses.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= procs.world_size


def clip_global_norm(named_params: list[tuple[str, nn.Parameter, bool]], max_norm: float, procs: Processes,
                     device: torch.device) -> None:
    """Scale the gradients so that the norm of the whole model's gradient -- every process's class
    rows (the ``True`` entries of ``named_params``) counted once, the replicated parameters once --
    is at most ``max_norm``; the same factor on every process."""
    replicated = [p.grad for _, p, rows in named_params if p.grad is not None and not rows]
    sharded = [p.grad for _, p, rows in named_params if p.grad is not None and rows]

    def squares(grads: list[torch.Tensor]) -> torch.Tensor:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return sum((g.detach().double().square().sum() for g in grads), zero)

    total = squares(replicated) + global_sum(squares(sharded).reshape(1), procs)[0]
    factor = (max_norm / (total.sqrt() + 1e-6)).clamp(max=1.0)
    for g in replicated + sharded:
        g.mul_(factor.to(g.dtype))
