"""Batch samplers: random batches (as in the paper) and identity-balanced P x K batches.

In a random batch drawn from many identities, same-identity pairs are rare and so are OTFace's
hard groups (SPEC §1). The P x K sampler puts K images of each of P identities in every batch so
that positives, and hence hard groups, exist in every step.

Both samplers are deterministic functions of (seed, epoch) and can start part-way through an
epoch (``start_batch``), which is how a resumed run continues exactly where it stopped.

Under data parallelism with ``world_size`` processes, ``batch_size`` is the GLOBAL batch size and
the sequence of global batches depends only on (seed, epoch, batch_size), never on the world size:
it is the sequence of the single-process sampler. Each rank yields its contiguous slice
``batch[rank * b : (rank + 1) * b]`` of every global batch, b = ``local_batch_size`` =
batch_size // world_size; the number of batches (``len``) and ``start_batch`` count global batches
and are the same on every rank.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class _EpochBatchSampler:
    """Common part: epoch-seeded generator, resumable start, fixed number of batches, and the
    rank's slice of each global batch.

    Args:
        num_samples: size of the data set.
        batch_size: global batch size, a multiple of ``world_size * group``.
        seed: base seed of the epoch generators.
        rank: this process's index in [0, world_size).
        world_size: number of data-parallel processes.
        group: size of the runs of consecutive indices that must stay on one rank (K for P x K).
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, group: int = 1
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        if batch_size < 1 or num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} does not fit {num_samples} samples")
        need = world_size * group
        if batch_size % need:
            what = "world_size" if group == 1 else f"world_size x K = {world_size} x {group}"
            raise ValueError(
                f"batch size {batch_size} is not a multiple of {what} = {need}: make the batch size a multiple "
                f"of {need} (or change the number of processes)"
            )
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.rank, self.world_size = rank, world_size
        self.num_batches = num_samples // batch_size
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (reseeds the order) and the batch the next iteration starts at."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _batches(self, rng: np.random.Generator) -> np.ndarray:
        """(num_batches, batch_size) indices: the global batches of the epoch."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        """The rank's slice (local_batch_size indices) of each global batch from start_batch on."""
        lo = self.rank * self.local_batch_size
        for batch in self._batches(self._rng())[self.start_batch :, lo : lo + self.local_batch_size]:
            yield batch.tolist()


class RandomBatchSampler(_EpochBatchSampler):
    """A fresh permutation of all samples each epoch, cut into full global batches (the last
    partial batch is dropped); ``rank`` and ``world_size`` select this process's slice of each
    (see the module docstring)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, *, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(num_samples, batch_size, seed, rank, world_size)
        self.num_samples = num_samples

    def _batches(self, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(self.num_samples)[: self.num_batches * self.batch_size]
        return order.reshape(self.num_batches, self.batch_size)


class PKBatchSampler(_EpochBatchSampler):
    """Batches of P identities x K images (batch_size = P * K).

    Each epoch has ``len(labels) // batch_size`` batches. Identities are visited in a shuffled
    cycle; an identity's K images are drawn without replacement when it has at least K, with
    replacement otherwise. Consecutive groups of K indices in a batch share one label, so with
    ``world_size`` processes (batch_size a multiple of world_size x K) each rank's contiguous slice
    holds whole groups: an identity's K images stay on one rank.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        images_per_identity: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if images_per_identity < 1:
            raise ValueError(f"images_per_identity (K) must be >= 1, got {images_per_identity}")
        super().__init__(len(labels), batch_size, seed, rank, world_size, group=images_per_identity)
        self.k = images_per_identity
        self.p = batch_size // images_per_identity
        order = np.argsort(labels, kind="stable")
        self.identities, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        if len(self.identities) < self.p:
            raise ValueError(f"P={self.p} identities per batch but the data has {len(self.identities)}")
        self._members = [order[s : s + c] for s, c in zip(starts, counts)]

    def _batches(self, rng: np.random.Generator) -> np.ndarray:
        needed = self.num_batches * self.p
        cycles = -(-needed // len(self.identities))
        ids = np.concatenate([rng.permutation(len(self.identities)) for _ in range(cycles)])[:needed]
        batches = np.empty((needed, self.k), dtype=np.int64)
        for row, ident in enumerate(ids):
            members = self._members[ident]
            batches[row] = rng.choice(members, size=self.k, replace=len(members) < self.k)
        return batches.reshape(self.num_batches, self.batch_size)
