"""Data-parallel processes on the standard engine: torchrun starts them, torch.distributed connects them.

``torchrun --nproc_per_node=N -m otface train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in each process; :func:`init_distributed` reads them, joins the process group
(NCCL when the processes train on CUDA, gloo on the CPU) and gives each process its
``LOCAL_RANK`` GPU. Plain ``otface train`` is one process and joins no group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from otface.errors import ConfigError

TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 validates while the others wait


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the run's processes.

    Attributes:
        rank: index of this process, 0 to ``world_size`` - 1 (0 alone writes, logs and validates).
        world_size: number of processes; 1 without torchrun.
        local_rank: index on this machine (its GPU).
        head_group: the process group of the sharded head's collectives, apart from DDP's.
        device: where this process's collectives run (its GPU under NCCL, the CPU under gloo).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    head_group: Any = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Processes()


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


def launched_world_size() -> int:
    """WORLD_SIZE of a torchrun launch; 1 otherwise."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def process_device(setting: str, local_rank: int) -> torch.device:
    """The device of a launched process for ``train.device``: its LOCAL_RANK GPU for 'auto' (when
    CUDA is there) and 'cuda', the CPU for 'cpu'; a fixed 'cuda:i' is refused."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if setting not in ("auto", "cuda"):
        raise ConfigError(f"train.device={setting!r}: with torchrun each process trains on its LOCAL_RANK GPU; "
                          "use 'auto', 'cuda' or 'cpu'")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={setting!r}: CUDA is not available here")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s): start at most that many processes per node")
    return torch.device("cuda", local_rank)


def training_device(setting: str) -> torch.device:
    """The device this process trains on for ``train.device``: :func:`resolve_device` for one
    process, :func:`process_device` under torchrun."""
    if launched_world_size() == 1:
        return resolve_device(setting)
    return process_device(setting, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> Processes:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU); :data:`SINGLE`
    without a launcher."""
    if launched_world_size() == 1:
        return SINGLE
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: cannot train on several processes")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Processes(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                     head_group=dist.new_group(timeout=TIMEOUT), device=device)


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_sum(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """Sum of a small tensor over the processes, on the tensor's device; ``values`` itself for one
    process (no copy to the collectives' device then, so a single process pays nothing)."""
    if not procs.distributed:
        return values
    summed = values.to(procs.device)
    dist.all_reduce(summed)
    return summed.to(values.device)


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


def broadcast_value(value: Any, procs: Processes) -> Any:
    """Rank 0's ``value`` (a string, a number, a small container of those) on every process."""
    if not procs.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
