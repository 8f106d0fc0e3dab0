"""The model that evaluation runs: a training checkpoint's backbone, or an exported one.

- A training checkpoint (``last.pt`` of a run folder) holds the backbone weights and the run's
  config: the backbone is rebuilt by name from it.
- ``otface export`` writes the backbone as a ``torch.export`` program (``.pt2``, batch dimension
  dynamic) with the facts evaluation needs (input size, embedding size, backbone name) in an
  ``otface.json`` extra file, so it runs without the config or this package's model code.

Safety: a checkpoint is read with ``torch.load(weights_only=True)``, which refuses anything but
tensors and plain containers. ``torch.export.load`` has no such mode -- it unpickles parts of the
archive and so runs whatever code a crafted file holds -- so an exported program is loaded only
when the caller says it trusts the file (``trust_exported``; ``otface eval --trust-model``).

An ONNX model (``.onnx``, :mod:`otface.eval.onnx`; ``export_checkpoint_onnx`` writes one) runs
with onnxruntime; reading it runs no code, so it needs no trust. ``onnx`` and ``onnxruntime`` are
imported only when one is read or written.

All take (N, 3, S, S) RGB images normalised to [-1, 1] (``transforms.normalize``), S the input
size, and return (N, E) embeddings.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otface.checkpoint import check_entries, is_state_dict, load_checkpoint, load_into, read_weights
from otface.config import Config, config_from_dict, load_config
from otface.errors import ConfigError, InputNotFoundError, ModelFileError, one_line
from otface.models import BACKBONES, build_backbone

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


INSIGHTFACE_SETTINGS = {"embedding_size": 512, "input_size": 112}  # the model zoo's; widths: the families' defaults


def backbone_from_checkpoint(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, Config]:
    """The backbone of a training checkpoint, weights loaded, in eval mode, and the run's config;
    with ``arch``, the registered architecture at insightface's settings (112 px, 512-d, the
    family's default width) with the weights of a bare state dict (insightface's ``backbone.pth``)
    or of a checkpoint, and a config saying so.

    A file that is neither, or whose weights do not fit the backbone, is a :class:`ModelFileError`
    naming it (a bare state dict without ``arch`` says to name one)."""
    if arch is not None:
        state, _ = read_weights(path)
        cfg = load_config(None, [f"model.backbone={arch}", "model.params={}",
                                 *(f"model.{key}={value}" for key, value in INSIGHTFACE_SETTINGS.items())])
        model = build_backbone(arch, **INSIGHTFACE_SETTINGS)
        load_into(model, state, path, f"its weights do not fit {arch} at insightface's settings (112 px, 512-d)")
        return model.eval(), cfg
    ckpt = load_checkpoint(path)
    if is_state_dict(ckpt):
        raise ModelFileError(f"{path}: a bare state dict, no otface checkpoint: name its architecture with --arch "
                             f"(one of {', '.join(BACKBONES.names())})")
    check_entries(ckpt, path, ("backbone", "config"))
    try:
        cfg = config_from_dict(ckpt["config"])
        model = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size,
                               input_size=cfg.model.input_size, **cfg.model.params)
    except ConfigError as err:
        raise ModelFileError(f"{path}: its config is not one this version reads: {err}") from None
    load_into(model, ckpt["backbone"], path, f"its weights do not fit {cfg.model.backbone}")
    return model.eval(), cfg


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike, arch: str | None = None) -> Path:
    """Export the backbone of ``checkpoint`` (a state dict of ``arch``, :func:`backbone_from_checkpoint`)
    to ``out`` (``.pt2``), written atomically."""
    model, cfg = backbone_from_checkpoint(checkpoint, arch)
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


ONNX_PACKAGES = frozenset({"onnx", "onnxruntime", "onnxscript"})


def onnx_support() -> Any:
    """:mod:`otface.eval.onnx`, imported when an ONNX model is read or written; a
    :class:`ConfigError` saying how to install the ``onnx`` extra when its packages are missing."""
    try:
        from otface.eval import onnx
    except ImportError as err:
        if err.name not in ONNX_PACKAGES:
            raise
        raise ConfigError(f"ONNX models need the onnx extra ({err.name} is not installed): "
                          "pip install 'otface[onnx]'") from None
    return onnx


def export_checkpoint_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, arch: str | None = None) -> Path:
    """Export the backbone of ``checkpoint`` (a state dict of ``arch``, :func:`backbone_from_checkpoint`)
    to ``out`` (``.onnx``), written atomically
    (:func:`otface.eval.onnx.export_onnx`); its metadata adds the backbone's registered name and
    parameters (JSON) and the checkpoint's path."""
    export_onnx = onnx_support().export_onnx
    model, cfg = backbone_from_checkpoint(checkpoint, arch)
    meta = {"otface.backbone": cfg.model.backbone, "otface.params": json.dumps(cfg.model.params, sort_keys=True),
            "otface.checkpoint": str(checkpoint)}
    return export_onnx(model, cfg.model.input_size, out, meta)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               trust_exported: bool = False, arch: str | None = None) -> LoadedModel:
    """A training checkpoint (``.pt``), a bare backbone state dict of the architecture ``arch``
    (insightface's ``backbone.pth``), an exported backbone (``.pt2``) or an ONNX model (``.onnx``,
    run on the CPU by onnxruntime whatever ``device``), ready to embed faces.

    An exported backbone is loaded only with ``trust_exported`` (see the module docstring); without
    it, a ``.pt2`` is a :class:`ModelFileError` that says so.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"no model at {path}")
    if path.suffix == ".onnx":
        onnx_model = onnx_support().OnnxBackbone(path)
        backbone = onnx_model.metadata.get("otface.backbone", "model")
        return LoadedModel(onnx_model, onnx_model.input_size, f"ONNX {backbone} ({path})")
    if path.suffix == ".pt2":
        if not trust_exported:
            raise ModelFileError(
                f"{path}: an exported program is loaded by torch.export.load, which unpickles it and so runs any "
                "code the file holds; evaluate the training checkpoint (last.pt) instead, or pass --trust-model "
                "if you made this file or trust who did")
        extra = {EXPORT_META: ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except (RuntimeError, ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:  # damaged archives
            raise ModelFileError(f"{path}: not a readable exported model ({type(err).__name__}: "
                                 f"{one_line(str(err))})") from None
        if not extra[EXPORT_META]:
            raise ModelFileError(f"{path}: exported without {EXPORT_META} (use `otface export`)")
        meta = json.loads(extra[EXPORT_META])
        return LoadedModel(ExportedBackbone(program), int(meta["input_size"]),
                           f"exported {meta['backbone']} ({path})")
    model, cfg = backbone_from_checkpoint(path, arch)
    kind = "checkpoint" if arch is None else "weights"
    return LoadedModel(model.to(device), cfg.model.input_size, f"{cfg.model.backbone} {kind} ({path})")
