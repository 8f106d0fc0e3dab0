"""The one collective otface's modules share below the training layer."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_gathered(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """(N, ...) tensor of this process -> (world_size * N, ...) concatenation of every process's,
    in rank order (N equal on all processes; not differentiable); ``x`` itself when
    torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)
