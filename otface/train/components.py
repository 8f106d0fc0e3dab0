"""The parts a :class:`~otface.train.trainer.Trainer` is built from, each from the typed config:
the backbone's forward (under DDP, compiled), the head (plain, or a Partial FC shard), the loss
terms, the batch sampler and the fp16 loss scaler."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from otface.checkpoint import load_into, read_weights
from otface.config import Config
from otface.data.samplers import PKBatchSampler, RandomBatchSampler
from otface.errors import ConfigError
from otface.heads import MiningHead, build_head
from otface.heads.partial_fc import PartialFC, init_class_rows, shard_bounds
from otface.losses import OTLoss
from otface.train.distributed import Processes

log = logging.getLogger("otface.train")


class FeatureForward(nn.Module):
    """The backbone's ``forward_features`` as a module's forward, for DDP and torch.compile:
    images (N, 3, S, S) -> (embeddings (N, E), {stage: feature maps})."""

    def __init__(self, backbone: nn.Module, stages: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.stages = stages

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.backbone.forward_features(images, list(self.stages))


@dataclass
class LossTerm:
    """An auxiliary term ``weight * module(...)`` of the total loss (Eq. 10 and SPEC §3).

    ``stage`` names the backbone stage whose feature maps the term reads -- the OT loss's, which
    returns an :class:`~otface.losses.OTLossOutput` -- or is None for a loss of the embeddings,
    ``module(embeddings, labels, head=head)``.
    """

    name: str
    module: nn.Module
    weight: float
    stage: str | None = None

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                 features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The term's unweighted loss and the hard groups it used."""
        if self.stage is None:
            return self.module(embeddings, labels, head=head), 0
        out = self.module(features[self.stage], embeddings, labels)
        return out.loss, out.num_groups


def check_device_options(cfg: Config, device: torch.device, procs: Processes) -> None:
    """:class:`ConfigError` for the CUDA-only options on another device, SyncBN on one process."""
    t = cfg.train
    for key, on in (("train.compile", t.compile), ("train.channels_last", t.channels_last),
                    ("train.sync_bn", t.sync_bn)):
        if on and device.type != "cuda":
            raise ConfigError(f"{key}=true needs a CUDA device; this run trains on {device}")
    if t.sync_bn and not procs.distributed:
        raise ConfigError("train.sync_bn=true synchronises several processes: launch with torchrun")


def whole_head(head: nn.Module) -> nn.Module:
    """The module whose state is the whole head's: the head, or a shard's wrapped head."""
    return head.head if isinstance(head, PartialFC) else head


def build_class_head(cfg: Config, procs: Processes, classes: int, device: torch.device) -> nn.Module:
    """The head over this process's classes: the plain head for one process scoring every class,
    else a :class:`PartialFC` shard. A class's initial weights do not depend on the shards, and
    building the head leaves torch's random stream as it was."""
    sharded = procs.distributed or cfg.head.sample_rate < 1
    if sharded and "discface" in cfg.losses:
        raise ConfigError("losses.discface reads every class centre of the head in each process: it cannot "
                          "train with several processes or head.sample_rate < 1")
    lo, hi = shard_bounds(classes, procs.rank, procs.world_size)
    if hi <= lo:
        raise ConfigError(f"{classes} classes cannot be split between {procs.world_size} processes")
    with torch.random.fork_rng(devices=[]):
        head = build_head(cfg.head.name, cfg.model.embedding_size, hi - lo, cfg.head.wrapper, cfg.head.wrapper_params,
                          **cfg.head.params)
    inner = head.head if isinstance(head, MiningHead) else head
    init_class_rows(inner.weight.data, lo, cfg.train.seed)
    if sharded:
        head = PartialFC(head, classes, rank=procs.rank, world_size=procs.world_size,
                         group=procs.head_group, sample_rate=cfg.head.sample_rate, seed=cfg.train.seed)
    return head.to(device)


def init_from(path: Path, cfg: Config, backbone: nn.Module, head: nn.Module, classes: int) -> None:
    """``model.init_from``: the backbone's weights (they must fit the configured backbone), and
    the head's when the file has a head over as many ``classes`` as this data set."""
    weights, head_state = read_weights(path)
    load_into(backbone, weights, path, f"its backbone weights do not fit {cfg.model.backbone} with "
                                       f"model.params={cfg.model.params}")
    rows = (head_state or {}).get("head.weight" if isinstance(whole_head(head), MiningHead) else "weight")
    if rows is not None and rows.shape[0] == classes:
        loader = head.load_full_state_dict if isinstance(head, PartialFC) else head
        load_into(loader, head_state, path, "its head does not fit this run's")
        log.info("initialised the backbone and the head from %s", path)
    else:
        log.info("initialised the backbone from %s; the head starts afresh (%s)", path,
                 "the file has none" if rows is None else f"{rows.shape[0]} classes there, {classes} here")


def build_terms(cfg: Config, backbone: nn.Module, aux_losses: nn.ModuleDict) -> list[LossTerm]:
    """The OT term (when ``ot.weight`` > 0, on ``ot.stage``) and the auxiliary losses."""
    o = cfg.ot
    terms = []
    if o.weight > 0:
        if o.stage not in backbone.stage_names:
            raise ConfigError(f"ot.stage {o.stage!r} is not a stage of {cfg.model.backbone}: "
                              f"choose one of {list(backbone.stage_names)}")
        ot = OTLoss(eps=o.eps, iters=o.iters, tol=o.tol, grad=o.grad, omega=o.omega, margin=o.margin,
                    mining_margin=o.mining_margin, max_groups=o.max_groups,
                    reduction=o.reduction, chunk_size=o.chunk_size)
        terms.append(LossTerm("ot", ot, o.weight, stage=o.stage))
    return terms + [LossTerm(name, aux_losses[name], float(spec["weight"])) for name, spec in cfg.losses.items()]


def build_model(cfg: Config, backbone: nn.Module, terms: list[LossTerm], procs: Processes,
                device: torch.device) -> nn.Module:
    """The forward of the backbone and the stages the terms read: under DDP with several
    processes, compiled when ``train.compile``."""
    stages = tuple(dict.fromkeys(term.stage for term in terms if term.stage is not None))
    model: nn.Module = FeatureForward(backbone, stages)
    if procs.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        model = torch.compile(model)
    return model


def build_scaler(cfg: Config, procs: Processes, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler; with several processes one that skips a step on all of them when the
    gradients of any overflowed (each holds other class rows)."""
    enabled = cfg.train.amp == "fp16"
    if procs.distributed:
        return ShardedGradScaler(device.type, enabled=enabled, process_group=torch.distributed.group.WORLD)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def named_parameters(backbone: nn.Module, head: nn.Module,
                     aux_losses: nn.Module) -> list[tuple[str, nn.Parameter, bool]]:
    """(checkpoint name, parameter, whether its rows are this process's classes) of every trained
    parameter, in the optimiser's order."""
    rows = head.class_tables if isinstance(head, PartialFC) else frozenset()
    return ([(f"backbone.{n}", p, False) for n, p in backbone.named_parameters()]
            + [(f"head.{n}", p, n in rows) for n, p in whole_head(head).named_parameters()]
            + [(f"losses.{n}", p, False) for n, p in aux_losses.named_parameters()])


def build_sampler(cfg: Config, dataset: Dataset, procs: Processes) -> PKBatchSampler | RandomBatchSampler:
    """The batch sampler of ``data.sampler``: this process's slice of one global batch sequence."""
    d, o, seed = cfg.data, cfg.optim, cfg.train.seed
    where = {"rank": procs.rank, "world_size": procs.world_size}
    try:
        if d.sampler == "pk":
            return PKBatchSampler(dataset.labels, o.batch_size, d.images_per_identity, seed=seed, **where)
        return RandomBatchSampler(len(dataset), o.batch_size, seed=seed, **where)
    except ValueError as err:  # the samplers' own checks of sizes against the data
        on = f" on {procs.world_size} processes" if procs.distributed else ""
        raise ConfigError(f"data.sampler={d.sampler}, optim.batch_size={o.batch_size}{on}: {err}") from None


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
