"""ONNX export of a backbone, a validator for face-embedding ONNX models, and an onnxruntime backbone.

An exported model is one self-contained ``.onnx`` file (weights embedded) with one input,
``"input"`` (batch, 3, S, S) float32, and one output, ``"embedding"`` (batch, E) float32, the
batch dimension dynamic. The input is an RGB face crop of S x S pixels mapped to [-1, 1] by
``(x - 127.5) / 127.5``; the ``otface.*`` entries of the model's ``metadata_props`` say so (see
:func:`export_onnx`), for callers outside this package.

:func:`validate_onnx` checks a model against our implementation of the rules of insightface's
model validator for recognition models (listed in its docstring).

Safety: reading an ``.onnx`` file runs no Python code -- it is a protobuf message of operators
and weights -- unlike ``torch.export``'s ``.pt2`` archives, which are unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    RuntimeException,
)
from onnxruntime.capi.onnxruntime_pybind11_state import (
    NotImplemented as OrtNotImplemented,
)
from torch import nn

from otface.errors import InputNotFoundError, ModelFileError, one_line

__all__ = ["OPSET", "OnnxBackbone", "export_onnx", "validate_onnx"]

OPSET = 20  # the default of torch 2.13's exporter; onnxruntime runs it from version 1.17 on
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
PREPROCESSING = {
    "otface.color": "RGB",
    "otface.normalize": "(x - 127.5) / 127.5",
    "otface.flip": "the caller sums the embeddings of the image and its horizontal flip",
}
MAX_FEATURES = 512  # the validator's limit on E
CHECK_BATCHES = (32, 1)  # batch sizes the validator runs a dynamic-batch model at
CHECK_SEED = 0

_LOAD_ERRORS = (InvalidProtobuf, InvalidGraph, InvalidArgument, Fail, OrtNotImplemented)  # onnxruntime, bad files
_RUN_ERRORS = (InvalidArgument, Fail, RuntimeException, OrtNotImplemented)  # onnxruntime, inputs a model refuses


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Without the exporter's notes that do not concern a backbone (torchvision's operators not
    registered, a deprecation inside torch's tracing)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
            yield
    finally:
        registration.setLevel(level)


def export_onnx(model: nn.Module, input_size: int, out: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Export ``model`` ((N, 3, S, S) -> (N, E), S = ``input_size`` pixels) to ``out`` (``.onnx``).

    A copy of the model is exported in eval mode, float32, on the CPU, with torch's dynamo
    exporter at opset :data:`OPSET`; the batch dimension is dynamic. The file is self-contained:
    weights torch writes as external data are read back and embedded, which limits models to
    protobuf's 2 GB (onnx raises a ``ValueError`` above it). ``metadata_props`` holds
    ``otface.backbone`` (the model's class name), ``otface.input_size``,
    ``otface.embedding_size`` and the preprocessing (:data:`PREPROCESSING`), then ``metadata``,
    whose entries replace those of the same key (e.g. the registered backbone name).

    The export is staged in a temporary folder beside ``out`` and moved over it with
    ``os.replace``: a failed export leaves nothing behind and ``out`` as it was.
    """
    out = Path(out)
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    example = torch.zeros(2, 3, input_size, input_size)  # batch 2: torch would specialise a batch of 1
    with torch.no_grad():
        embedding = model(example)
    if embedding.dim() != 2:
        raise ValueError(f"a backbone gives (N, E) embeddings, this one {tuple(embedding.shape)}")
    props = {"otface.backbone": type(model).__name__, "otface.input_size": str(input_size),
             "otface.embedding_size": str(embedding.shape[1]), **PREPROCESSING, **metadata}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = work / "model.onnx"
        with _quiet_exporter():
            torch.onnx.export(model, (example,), staged, dynamo=True, opset_version=OPSET, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: "batch"},), external_data=False)
        proto = onnx.load(staged)  # with any external data torch wrote beside it (models over 1.5 GB)
        onnx.helper.set_model_props(proto, props)
        onnx.save_model(proto, staged, save_as_external_data=False)
        os.replace(staged, out)
    finally:
        shutil.rmtree(work)
    return out


def _session(path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path``, using as many threads as torch does."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """The declared shape of a graph input or output, ``None`` for a dynamic (symbolic or unset)
    dimension; ``None`` when no tensor shape is declared."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]


def _type_name(value: onnx.ValueInfoProto) -> str:
    """The element type of a graph input or output, e.g. ``FLOAT``."""
    return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs fed at run time: the graph inputs less the weights older IR versions list there."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in weights]


def _features(outputs: list[onnx.ValueInfoProto]) -> int | None:
    """E, the fixed feature dimension of a single (batch, E) output; ``None`` for any other."""
    dims = _dims(outputs[0]) if len(outputs) == 1 else None
    return dims[1] if dims is not None and len(dims) == 2 else None


def _rank(dims: list[int | None] | None) -> str:
    """``'3-D'`` for a declared shape of three dimensions, ``'of no declared shape'`` for none."""
    return "of no declared shape" if dims is None else f"{len(dims)}-D"


def _input_violations(inputs: list[onnx.ValueInfoProto]) -> list[str]:
    """Rules on the inputs: exactly one, float32, (batch, 3, S, S), batch dynamic, S fixed."""
    if len(inputs) != 1:
        return [f"one input: the graph has {len(inputs)} inputs."]
    (value,) = inputs
    dims = _dims(value)
    problems = [] if _type_name(value) == "FLOAT" else [f"float32 input: the input is {_type_name(value)}."]
    if dims is None or len(dims) != 4:
        return problems + [f"4-D input: the input is {_rank(dims)}."]
    if dims[0] is not None:
        problems.append(f"dynamic batch: the input's batch dimension is fixed at {dims[0]}.")
    if dims[1] != 3:
        problems.append(f"3 channels: the input has {dims[1] or 'a dynamic number of'} channels.")
    if dims[2] is None or dims[2] != dims[3]:
        problems.append(f"square input: the input's sides are {dims[2]} x {dims[3]} (None: dynamic), "
                        "not one fixed size.")
    return problems


def _output_violations(outputs: list[onnx.ValueInfoProto]) -> list[str]:
    """Rules on the outputs: exactly one, float32, (batch, E), E fixed and at most :data:`MAX_FEATURES`."""
    if len(outputs) != 1:
        return [f"one output: the graph has {len(outputs)} outputs."]
    (value,) = outputs
    dims = _dims(value)
    problems = [] if _type_name(value) == "FLOAT" else [f"float32 output: the output is {_type_name(value)}."]
    if dims is None or len(dims) != 2:
        return problems + [f"2-D output: the output is {_rank(dims)}."]
    if dims[1] is None or dims[1] > MAX_FEATURES:
        problems.append(f"at most {MAX_FEATURES} features: the output has {dims[1] or 'a dynamic number of'}.")
    return problems


def _runnable(inputs: list[onnx.ValueInfoProto]) -> bool:
    """Whether random inputs can be made for the model: one floating-point input whose dimensions
    other than the first (batch) are fixed."""
    dims = _dims(inputs[0]) if len(inputs) == 1 else None
    return bool(dims) and None not in dims[1:] and _type_name(inputs[0]) in ("FLOAT", "DOUBLE", "FLOAT16")


def _run_violations(path: Path, value: onnx.ValueInfoProto, features: int | None) -> list[str]:
    """Rules on running the model with onnxruntime: on uniform random inputs in [-1, 1] (seed
    :data:`CHECK_SEED`) at the batch sizes :data:`CHECK_BATCHES` (or at its fixed batch size) the
    outputs are finite and, for a single output of ``features`` columns, of shape (batch, E).

    ``value`` is the model's one input, as :func:`_runnable` requires."""
    try:
        session = _session(path)
    except _LOAD_ERRORS as err:
        return [f"runs: onnxruntime cannot load the model ({type(err).__name__}: {one_line(str(err))})."]
    dims = _dims(value)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    rng = np.random.default_rng(CHECK_SEED)
    problems = []
    for batch in CHECK_BATCHES if dims[0] is None else (dims[0],):
        x = rng.uniform(-1.0, 1.0, (batch, *dims[1:])).astype(dtype)
        try:
            outputs = session.run(None, {value.name: x})
        except _RUN_ERRORS as err:
            problems.append(f"runs: onnxruntime fails at batch {batch} ({type(err).__name__}: {one_line(str(err))}).")
            continue
        if not all(np.isfinite(output).all() for output in outputs):
            problems.append(f"finite output: at batch {batch} the output holds NaN or infinite values.")
        if features is not None and outputs[0].shape != (batch, features):
            problems.append(f"output shape: at batch {batch} the output is {outputs[0].shape}, "
                            f"not ({batch}, {features}).")
    return problems


def validate_onnx(path: str | os.PathLike) -> list[str]:
    """The rules the face-embedding model at ``path`` breaks, one short sentence each, starting
    with the rule's name; an empty list for a valid model.

    The rules: the file loads as an ONNX model and passes ``onnx.checker.check_model``; it has
    exactly one input, float32, 4-D (batch, 3, S, S) with a dynamic (symbolic or unset) batch
    dimension and a fixed square side S; exactly one output, float32, 2-D (batch, E) with E
    fixed and at most :data:`MAX_FEATURES`; run by onnxruntime on random inputs in [-1, 1] at
    batch 32 and batch 1 it gives finite outputs of shape (batch, E). A model whose input cannot
    be fed random data (several inputs, a dynamic side, a non-float type) is not run; one with a
    fixed batch size runs at that size only. A missing file is an :class:`InputNotFoundError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"no model at {path}")
    try:
        model = onnx.load(path)
    except (DecodeError, OSError, onnx.checker.ValidationError) as err:  # no protobuf; external data missing
        return [f"loads: not a readable ONNX model ({type(err).__name__}: {one_line(str(err))})."]
    try:
        onnx.checker.check_model(model)
        problems = []
    except onnx.checker.ValidationError as err:
        problems = [f"onnx checker: {one_line(str(err))}."]
    inputs, outputs = _graph_inputs(model), list(model.graph.output)
    problems += _input_violations(inputs) + _output_violations(outputs)
    if _runnable(inputs):
        problems += _run_violations(path, inputs[0], _features(outputs))
    return problems


class OnnxBackbone(nn.Module):
    """An ``.onnx`` face-embedding model run by onnxruntime (CPU) behind the ``nn.Module``
    interface evaluation uses: ``(N, 3, S, S)`` float images in [-1, 1] -> ``(N, E)`` float32
    embeddings on the CPU.

    ``input_size`` (S) and ``embedding_size`` (E) are read from the model's declared input and
    output shapes, ``metadata`` from its ``metadata_props`` (empty for a model without). Loading
    the file runs no Python code (an ONNX model is operators and weights, not a pickle like
    ``torch.export``'s ``.pt2``), so any file may be loaded. The model is fixed: ``train()`` and
    ``eval()`` change nothing, and it has no parameters. A file that is not a readable ONNX
    model, or not one input (N, 3, S, S) float32 and one output (N, E) float32, is a
    :class:`ModelFileError` naming it; a missing file an :class:`InputNotFoundError`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"no model at {path}")
        try:
            session = _session(path)
        except _LOAD_ERRORS as err:
            raise ModelFileError(f"{path}: not a readable ONNX model ({type(err).__name__}: "
                                 f"{one_line(str(err))})") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if (len(shape) != 4 or inputs[0].type != "tensor(float)" or shape[1] != 3
                or not isinstance(shape[2], int) or shape[2] != shape[3]):
            raise ModelFileError(f"{path}: its input is not one (N, 3, S, S) float32 image batch "
                                 f"({', '.join(f'{i.type} {i.shape}' for i in inputs)})")
        if (len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].type != "tensor(float)"
                or not isinstance(outputs[0].shape[1], int)):
            raise ModelFileError(f"{path}: its output is not one (N, E) float32 embedding batch with E fixed "
                                 f"({', '.join(f'{o.type} {o.shape}' for o in outputs)})")
        self.path = path
        self.input_size: int = shape[2]
        self.embedding_size: int = outputs[0].shape[1]
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self._runtime = session
        self._input_name = inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float images in [-1, 1] (any device) -> ``(N, E)`` float32 on the CPU."""
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (embedding,) = self._runtime.run(None, {self._input_name: batch})
        return torch.from_numpy(embedding)
