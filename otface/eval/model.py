"""The model that evaluation runs: a training checkpoint's backbone, or an exported one.

- A training checkpoint (``last.pt`` of a run folder) holds the backbone weights and the run's
  config: the backbone is rebuilt by name from it.
- ``otface export`` writes the backbone as a ``torch.export`` program (``.pt2``, batch dimension
  dynamic) with the facts evaluation needs (input size, embedding size, backbone name) in an
  ``otface.json`` extra file, so it runs without the config or this package's model code.

Both take (N, 3, S, S) RGB images normalised to [-1, 1] (``transforms.normalize``), S the input
size, and return (N, E) embeddings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from otface.config import Config, config_from_dict
from otface.models import build_backbone
from otface.train.checkpoint import load_checkpoint

EXPORT_META = "otface.json"


@dataclass(frozen=True)
class LoadedModel:
    """A backbone ready for evaluation: ``model`` in eval mode, its square ``input_size`` in
    pixels, and a one-line ``description`` of where it came from."""

    model: nn.Module
    input_size: int
    description: str


class ExportedBackbone(nn.Module):
    """An exported program behind the ``nn.Module`` interface evaluation uses.

    The program was exported in eval mode; ``train()``/``eval()`` leave it as it is (the program
    itself refuses them) and it has no parameters of its own, so it runs on the CPU.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.__dict__["_program"] = program.module()  # not a submodule: mode switches stay here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._program(x)


def backbone_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, Config]:
    """The backbone of a training checkpoint, weights loaded, in eval mode, and the run's config."""
    ckpt = load_checkpoint(path)
    if "backbone" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an otface training checkpoint (no 'backbone' and 'config' entries)")
    cfg = config_from_dict(ckpt["config"])
    model = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size,
                           input_size=cfg.model.input_size, **cfg.model.params)
    model.load_state_dict(ckpt["backbone"])
    return model.eval(), cfg


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export the backbone of ``checkpoint`` to ``out`` (``.pt2``), written atomically."""
    model, cfg = backbone_from_checkpoint(checkpoint)
    size = cfg.model.input_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    meta = {"backbone": cfg.model.backbone, "input_size": size, "embedding_size": cfg.model.embedding_size,
            "checkpoint": str(checkpoint)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.pt2")  # torch.export wants the .pt2 suffix
    try:
        torch.export.save(program, tmp, extra_files={EXPORT_META: json.dumps(meta)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """A training checkpoint (``.pt``) or an exported backbone (``.pt2``), ready to embed faces."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    if path.suffix == ".pt2":
        extra = {EXPORT_META: ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as err:  # torch raises several types for damaged archives
            raise ValueError(f"{path}: not a readable exported model ({type(err).__name__}: {err})") from None
        if not extra[EXPORT_META]:
            raise ValueError(f"{path}: exported without {EXPORT_META} (use `otface export`)")
        meta = json.loads(extra[EXPORT_META])
        return LoadedModel(ExportedBackbone(program), int(meta["input_size"]),
                           f"exported {meta['backbone']} ({path})")
    model, cfg = backbone_from_checkpoint(path)
    return LoadedModel(model.to(device), cfg.model.input_size, f"{cfg.model.backbone} checkpoint ({path})")
