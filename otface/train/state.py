"""What a checkpoint holds besides the weights -- where the run is and what it has seen -- and the
parts of the state that several processes hold apart (the head's class rows and their momentum,
the CUDA generators), gathered for the one checkpoint rank 0 writes and split again on resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otface.checkpoint import load_into
from otface.errors import ModelFileError
from otface.train.distributed import Processes


def new_window() -> dict[str, Any]:
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
    window: dict = field(default_factory=new_window)
    resumes: list = field(default_factory=list)  # per --resume: the step, the settings changed, the processes
    overflow_steps: int = 0  # fp16 steps the gradient scaler skipped
    world_size: int = 1  # processes of the run so far (the last resume's)



def optimizer_state(optimizer: torch.optim.Optimizer, named_params: list[tuple[str, nn.Parameter, bool]],
                    head: nn.Module) -> dict[str, Any]:
    """The optimiser's state by parameter name (``named_params``: name, parameter, whether its
    rows are this process's classes), class rows of every process gathered by ``head``'s
    ``gather_rows`` (a collective; complete on rank 0)."""
    saved = optimizer.state_dict()
    state = {}
    for index, (name, p, rows) in enumerate(named_params):
        entry = saved["state"].get(index, {})
        state[name] = {key: head.gather_rows(value) if rows and torch.is_tensor(value) and value.shape == p.shape
                       else value for key, value in entry.items()}
    groups = [{k: v for k, v in group.items() if k != "params"} for group in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, named_params: list[tuple[str, nn.Parameter, bool]],
                         head: nn.Module, saved: Any, path: Path) -> None:
    """:func:`optimizer_state` of any number of processes into this process's ``optimizer``, the
    class rows split by ``head``'s ``split_rows``; a misfit is a :class:`ModelFileError` naming ``path``."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise ModelFileError(f"{path}: its optimizer state is not one this version of otface wrote")
    unknown = sorted(set(saved["state"]) - {name for name, _, _ in named_params})
    if unknown:
        raise ModelFileError(f"{path}: its optimizer has state for parameters this run does not have "
                             f"({', '.join(unknown[:3])}...)")
    state = {}
    try:
        for index, (name, p, rows) in enumerate(named_params):
            entry = saved["state"].get(name)
            if entry:
                state[index] = {key: head.split_rows(value) if rows and torch.is_tensor(value)
                                and value.ndim == p.ndim else value for key, value in entry.items()}
    except ValueError as err:
        raise ModelFileError(f"{path}: its optimizer does not fit this run's: {err}") from None
    groups = [dict(group, params=list(range(len(named_params)))) for group in saved["param_groups"]]
    load_into(optimizer, {"state": state, "param_groups": groups}, path, "its optimizer does not fit this run's")


def cuda_rng_states(device: torch.device, procs: Processes) -> list[torch.Tensor]:
    """Every process's CUDA generator state (empty on the CPU); a collective."""
    if device.type != "cuda":
        return []
    mine = torch.cuda.get_rng_state(device).to(device)
    if not procs.distributed:
        return [mine.cpu()]
    states = [torch.empty_like(mine) for _ in range(procs.world_size)]
    torch.distributed.all_gather(states, mine)
    return [s.cpu() for s in states]


def train_summary(st: TrainState, grad_accum: int, skipped_records: list, num_skipped_records: int, world_size: int,
                  amp: str, loss_scale: float | None) -> dict[str, Any]:
    """The ``train`` figures of a run's results.json from its state: ``skipped_records`` the
    (key, reason) pairs kept of the ``num_skipped_records`` records left out of the training set."""
    rows = [r for r in st.history if r["images_per_second"] > 0]
    return {
        "epochs": st.epoch,
        "steps": st.step,
        "images": st.images,
        "train_seconds": st.seconds,
        "images_per_second": st.images / st.seconds if st.seconds > 0 else math.nan,
        "hard_groups_per_step": st.hard_groups / (max(st.step, 1) * grad_accum),
        "skipped_steps": st.skipped_steps,
        "skipped_records": [[key, reason] for key, reason in skipped_records],
        "num_skipped_records": num_skipped_records,
        "skipped_samples": st.skipped_samples,
        "bad_samples": st.bad_samples,
        "final_loss": rows[-1]["loss"] if rows else math.nan,
        "history": st.history,
        "resumes": st.resumes,
        "world_size": world_size,
        "amp": amp,
        "loss_scale": loss_scale,
        "overflow_steps": st.overflow_steps,
    }
