"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021):
a head's classes sharded over the processes of a group, optionally sampled at a rate r.

With N processes, process k holds the rows [C k / N, C (k + 1) / N) of the head's class tables
(its weight, and Softmax's bias). Each step all-gathers the embeddings (with their gradient) and
labels of the global batch, computes the logits of its own classes only, and the cross-entropy
from a distributed log-sum-exp:

    CE_i = log sum_k sum_{j in shard k} exp(z_ij - M_i) + M_i - z_{i y_i},   M_i = max_j z_ij

so no process ever holds C-wide logits. Heads that need the target of every sample (the margin,
CurricularFace's t, MV-Softmax's mis-classified negatives, SphereFace's scale) get the target
score from the process that holds it (an all-reduce of the masked gather); HM-Softmax and the
focal loss re-weight the per-sample losses of the global batch; ElasticFace draws its margins for
the global batch from torch's random stream, which stays the same on every process (the trainer
seeds it alike everywhere and builds the head outside it). Every process computes the same
loss, the global mean; its gradient is scaled so that the sum over processes is the gradient of
that one loss (each weight row gets its true gradient once).

With r < 1, in training mode each process scores all the positive classes it holds plus uniformly
sampled negatives, ceil(r C_k) classes in all (never fewer than its positives), so head memory and
compute per process scale as r C / N. The rows not sampled get no gradient in that step: SGD
still applies momentum and weight decay to them, as insightface's Partial FC v2 does (a weight
tensor indexed per step; its v1 kept a momentum copy of the sampled rows instead). r = 1 is the
full head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from otface.batches import check_label_range
from otface.heads.base import MarginHead
from otface.heads.mining import MiningHead
from otface.parallel import all_gathered


def shard_bounds(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi): the classes process ``rank`` of ``world_size`` holds; sizes differ by at most one."""
    return num_classes * rank // world_size, num_classes * (rank + 1) // world_size


ROW_BLOCK = 4096  # rows drawn from one generator by init_class_rows
INIT_STREAM = 0x4EAD  # keeps these draws apart from other streams of the same seed


@torch.no_grad()
def init_class_rows(table: torch.Tensor, lo: int, seed: int, std: float = 0.01) -> None:
    """Fill the (R, E) rows of classes [lo, lo + R) of a class table with N(0, std^2), as every
    head starts (insightface's init); class j's row is drawn from a generator of (seed, j // ROW_BLOCK),
    so a class starts with the same weights however the classes are split between processes."""
    hi = lo + len(table)
    for block in range(lo // ROW_BLOCK, -(-hi // ROW_BLOCK)):
        start = block * ROW_BLOCK
        state = int(np.random.SeedSequence([INIT_STREAM, seed, block]).generate_state(1)[0])
        rows = torch.randn((ROW_BLOCK, *table.shape[1:]), generator=torch.Generator().manual_seed(state)) * std
        first, last = max(lo, start), min(hi, start + ROW_BLOCK)
        table[first - lo : last - lo] = rows[first - start : last - start]


def gradient_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` itself, whose gradient is multiplied by ``factor`` on the way back."""
    return x * factor + (x * (1.0 - factor)).detach()


class _SumOverProcesses(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of every copy of the sum is summed back.
    (torch.distributed.nn.functional.all_reduce does the same and is deprecated.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _GatherOverProcesses(torch.autograd.Function):
    """Differentiable all-gather along dim 0 of equal-sized tensors: each process gets back the
    sum over the processes of the gradient of its own rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group, ctx.rows = group, len(x)
        return all_gathered(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        mine = torch.empty_like(grad[: ctx.rows])
        if dist.get_backend(ctx.group) == "nccl":
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
            return mine, None
        # gloo has no reduce-scatter: all-reduce, then keep this process's rows
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows], None


class PartialFC(nn.Module):
    """A built head over the classes of one shard, trained with the softmax of all C classes.

    Args:
        head: a head (or a ``focal_`` / ``hm_`` wrapper) built for the ``hi - lo`` classes of this
            process's shard (:func:`shard_bounds`).
        num_classes: C, the classes of all processes together.
        rank, world_size: this process's index in ``group`` and the group's size.
        group: the torch.distributed process group of the shards; None for one process.
        sample_rate: r in (0, 1], the fraction of classes scored per training step.
        seed: seed of the negative sampling, drawn from (seed, :attr:`draw_key`, lo).

    Attributes:
        draw_key: integers that, with the seed, fix this step's sample (the trainer sets the
            epoch and the batch); the same key gives the same classes.
    """

    def __init__(self, head: MarginHead | MiningHead, num_classes: int, *, rank: int = 0, world_size: int = 1,
                 group: Any = None, sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= world_size <= num_classes:
            raise ValueError(f"{num_classes} classes cannot be split between {world_size} processes")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
        self.lo, self.hi = shard_bounds(num_classes, rank, world_size)
        inner = head.head if isinstance(head, MiningHead) else head
        if inner.num_classes != self.hi - self.lo:
            raise ValueError(f"the head holds {inner.num_classes} classes; shard {rank} of {world_size} "
                             f"holds {self.hi - self.lo} of {num_classes}")
        self.head = head
        self.num_classes = num_classes
        self.rank, self.world_size, self.group = rank, world_size, group
        self.sample_rate = float(sample_rate)
        self.seed = seed
        self.draw_key: tuple[int, ...] = ()
        prefix = "head." if isinstance(head, MiningHead) else ""
        self.class_tables = frozenset(prefix + name for name in inner.class_tables)

    @property
    def inner(self) -> MarginHead:
        """The margin head (the wrapped one of a ``focal_`` / ``hm_`` wrapper)."""
        return self.head.head if isinstance(self.head, MiningHead) else self.head

    @property
    def embedding_size(self) -> int:
        return self.inner.embedding_size

    # ---------------------------------------------------------------------------- collectives
    def _distributed(self) -> bool:
        return self.world_size > 1

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the processes, differentiable."""
        return _SumOverProcesses.apply(x, self.group) if self._distributed() else x

    def _max(self, x: torch.Tensor) -> torch.Tensor:
        """Maximum over the processes (not differentiated: the log-sum-exp shift)."""
        if self._distributed():
            dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.group)
        return x

    def _gathered(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch: every process's (B, E) embeddings (differentiable) and (B,) labels, in rank order."""
        if not self._distributed():
            return embeddings, labels
        return _GatherOverProcesses.apply(embeddings, self.group), all_gathered(labels, self.group)

    # ---------------------------------------------------------------------------- sampling
    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Sorted (S,) indices, within this shard, of the classes scored for the global (N,) labels:
        every positive held here plus uniform negatives, S = max(positives, ceil(r C_k)); None
        (all classes) in eval mode or with r = 1."""
        held = self.hi - self.lo
        if not self.training or self.sample_rate == 1.0:
            return None
        local = labels - self.lo
        positives = local[(local >= 0) & (local < held)].unique()
        count = min(held, max(len(positives), math.ceil(round(self.sample_rate * held, 9))))
        seed = int(np.random.SeedSequence([self.seed, *self.draw_key, self.lo]).generate_state(1)[0])
        device = self.inner.weight.device
        key = torch.rand(held, generator=torch.Generator(device).manual_seed(seed), device=device)
        key[positives] = 2.0  # above every uniform draw: positives first
        return torch.topk(key, count).indices.sort().values

    # ---------------------------------------------------------------------------- loss
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, E) embeddings and (B,) labels of this process -> the scalar loss of the global batch
        (the same value on every process)."""
        inner = self.inner
        labels = inner.check_batch(embeddings, labels, self.num_classes, check_range=False)
        x, labels = self._gathered(embeddings, labels)
        check_label_range(labels, self.num_classes)
        with torch.autocast(x.device.type, enabled=False):
            rows = self.sample_classes(labels)
            scores = inner.scores(x, rows)  # (N, S)
            local = labels - self.lo
            target_rows = ((local >= 0) & (local < self.hi - self.lo)).nonzero().squeeze(1)
            target_cols = local[target_rows] if rows is None else torch.searchsorted(rows, local[target_rows])
            held_target = scores.new_zeros(len(labels)).index_put((target_rows,), scores[target_rows, target_cols])
            adjusted, target = inner.adjust_held(scores, self._sum(held_target), target_rows, target_cols)
            scale = inner.logit_scale(x)
            logits = scale * adjusted
            target_logit = (scale * target.unsqueeze(1)).squeeze(1)
            shift = self._max(logits.detach().amax(1))
            total = self._sum(torch.exp(logits - shift.unsqueeze(1)).sum(1))
            ce = torch.log(total) + shift - target_logit
            loss = self.head.reduce(ce) if isinstance(self.head, MiningHead) else ce.mean()
        # every process computes this loss; summed over them, the gradients are those of one copy
        return gradient_scaled(loss, 1.0 / self.world_size) if self._distributed() else loss

    def sync_replicated_gradients(self) -> None:
        """Sum the gradients of the parameters every process holds a copy of (NormFace's learned
        scale): each copy got the part of the gradient of the classes held beside it. Call once
        per optimiser step, after the backward passes."""
        if not self._distributed():
            return
        for name, p in self.head.named_parameters():
            if name not in self.class_tables and p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)

    # ---------------------------------------------------------------------------- state
    def gather_rows(self, shard: torch.Tensor) -> torch.Tensor | None:
        """A class-indexed (hi - lo, ...) tensor of every process -> the (C, ...) whole on rank 0
        (None on the others). A collective: every process calls it."""
        if not self._distributed():
            return shard.detach().clone()
        width = -(-self.num_classes // self.world_size)
        padded = shard.new_zeros((width, *shard.shape[1:]))
        padded[: len(shard)] = shard.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(padded, parts, dst=0, group=self.group)
        if parts is None:
            return None
        sizes = [hi - lo for lo, hi in (shard_bounds(self.num_classes, k, self.world_size)
                                        for k in range(self.world_size))]
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def split_rows(self, whole: torch.Tensor) -> torch.Tensor:
        """(C, ...) -> this process's (hi - lo, ...) rows."""
        if len(whole) != self.num_classes:
            raise ValueError(f"a class table of {len(whole)} rows, not {self.num_classes}")
        return whole[self.lo : self.hi]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The state dict of the whole head -- the one the head built for all C classes has --
        on rank 0, None on the others (a collective)."""
        full = {name: self.gather_rows(t) if name in self.class_tables else t.detach().clone()
                for name, t in self.head.state_dict().items()}
        return full if self.rank == 0 else None

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a whole head's state dict (:meth:`full_state_dict`, or a one-process head's),
        keeping this shard's rows."""
        if not isinstance(state, dict):
            raise TypeError(f"a head state must be a mapping, got {type(state).__name__}")
        self.head.load_state_dict({name: self.split_rows(t) if name in self.class_tables else t
                                   for name, t in state.items()})

    def extra_repr(self) -> str:
        return (f"classes [{self.lo}, {self.hi}) of {self.num_classes}, world_size={self.world_size}, "
                f"sample_rate={self.sample_rate}")
