"""ONNX export: one self-contained file with its preprocessing in the metadata, giving torch's
embeddings under onnxruntime; the validator reports each rule a model breaks; the ONNX backbone
behind `load_model`."""

import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from otface.checkpoint import save_checkpoint
from otface.config import load_config
from otface.errors import InputNotFoundError, ModelFileError
from otface.eval import onnx as otface_onnx
from otface.eval.model import export_checkpoint_onnx, load_model
from otface.eval.onnx import OnnxBackbone, export_onnx, validate_onnx
from otface.models import build_backbone

FAMILIES = {  # name: config overrides, each family at a small valid size (mbf: any S, blocks and scale >= 1)
    "iresnet18": ["model.params={width: 0.125}"],
    "mbf": ["model.params={scale: 1, blocks: [1, 1, 1, 1]}"],
}
SIZES = ["model.input_size=32", "model.embedding_size=32"]


def _relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, tmp_path_factory):
    """A training checkpoint of a small backbone (untrained; non-trivial BatchNorm running
    statistics, so that eval mode matters), its ONNX export, and the backbone in eval mode."""
    cfg = load_config(None, [f"model.backbone={request.param}", *FAMILIES[request.param], *SIZES])
    torch.manual_seed(0)
    model = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size,
                           input_size=cfg.model.input_size, **cfg.model.params)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint = tmp_path_factory.mktemp("run") / "last.pt"
    save_checkpoint({"backbone": model.state_dict(), "config": cfg.to_dict()}, checkpoint)
    path = export_checkpoint_onnx(checkpoint, tmp_path_factory.mktemp("export") / "model.onnx")
    return path, checkpoint, model.eval()


def test_the_export_is_one_file_with_its_preprocessing(exported):
    path, checkpoint, _ = exported
    assert os.listdir(path.parent) == ["model.onnx"]
    proto = onnx.load(path, load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert proto.opset_import[0].version == otface_onnx.OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["otface.input_size"] == "32" and meta["otface.embedding_size"] == "32"
    assert meta["otface.backbone"] in FAMILIES  # the checkpoint's name replaces the class name
    assert meta["otface.checkpoint"] == str(checkpoint) and meta["otface.params"].startswith("{")
    assert meta["otface.color"] == "RGB" and meta["otface.normalize"] == "(x - 127.5) / 127.5"
    assert "horizontal flip" in meta["otface.flip"]
    assert validate_onnx(path) == []


def test_onnxruntime_gives_the_embeddings_of_torch(exported):
    path, _, model = exported
    backbone = OnnxBackbone(path)
    assert (backbone.input_size, backbone.embedding_size) == (32, 32)
    backbone.train()  # harmless: the ONNX model is fixed
    for batch in (1, 7):
        x = torch.rand(batch, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            expected = model(x)
        actual = backbone(x)
        assert actual.dtype == torch.float32 and actual.shape == (batch, 32)
        assert _relative_difference(actual, expected) <= 1e-4


def test_load_model_gives_the_embeddings_of_the_checkpoint(exported):
    path, checkpoint, _ = exported
    loaded, reference = load_model(path, "cpu"), load_model(checkpoint)
    assert loaded.input_size == 32 and loaded.description.startswith("ONNX ") and str(path) in loaded.description
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert _relative_difference(loaded.model(x), reference.model(x)) <= 1e-4


class Linear(nn.Module):
    """A tiny embedding model: flatten, then linear to ``features``; (N, *shape) -> (N, features)."""

    def __init__(self, features: int = 8, inputs: int = 3 * 4 * 4) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float().flatten(1))


class TwoOutputs(Linear):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = super().forward(x)
        return y, y + 1


class NotANumber(Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def _export(model: nn.Module, example: torch.Tensor, path, dynamic_batch: bool = True):
    """``model`` exported as it is (no otface conventions), batch dimension dynamic or fixed."""
    shapes = ({0: "batch"},) if dynamic_batch else None
    torch.onnx.export(model.eval(), (example,), path, dynamo=True, verbose=False, dynamic_shapes=shapes)
    return path


@pytest.mark.parametrize("model, example, dynamic_batch, rule", [
    (TwoOutputs(), torch.zeros(2, 3, 4, 4), True, "one output"),
    (Linear(), torch.zeros(1, 3, 4, 4), False, "dynamic batch"),
    (Linear(features=1024), torch.zeros(2, 3, 4, 4), True, "at most 512 features"),
    (NotANumber(), torch.zeros(2, 3, 4, 4), True, "finite output"),
    (Linear(), torch.zeros(2, 3, 4, 4, dtype=torch.float64), True, "float32 input"),
    (Linear(inputs=4 * 4 * 4), torch.zeros(2, 4, 4, 4), True, "3 channels"),
    (Linear(inputs=3 * 4 * 8), torch.zeros(2, 3, 4, 8), True, "square input"),
], ids=["two outputs", "fixed batch", "1024 features", "nan", "float64 input", "4 channels",
        "not square"])
def test_the_validator_reports_the_rule_a_model_breaks(tmp_path, model, example, dynamic_batch, rule):
    problems = validate_onnx(_export(model, example, tmp_path / "m.onnx", dynamic_batch))
    assert {problem.split(":")[0] for problem in problems} == {rule}, problems


def test_the_validator_reports_a_file_that_is_no_model(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    (problem,) = validate_onnx(path)
    assert problem.startswith("loads: not a readable ONNX model")
    with pytest.raises(InputNotFoundError, match="none.onnx"):
        validate_onnx(tmp_path / "none.onnx")


def test_the_validator_reports_what_the_onnx_checker_refuses_and_missing_weights(tmp_path):
    path = _export(Linear(), torch.zeros(2, 3, 4, 4), tmp_path / "m.onnx")
    proto = onnx.load(path)
    proto.graph.node[0].input[0] = "undefined"  # reads a value nothing defines
    onnx.save_model(proto, path)
    problems = validate_onnx(path)
    assert {problem.split(":")[0] for problem in problems} == {"onnx checker", "runs"}, problems

    onnx.save_model(proto, tmp_path / "external.onnx", save_as_external_data=True, location="w.data", size_threshold=0)
    (tmp_path / "w.data").unlink()
    (problem,) = validate_onnx(tmp_path / "external.onnx")
    assert problem.startswith("loads: not a readable ONNX model") and "w.data" in problem


def test_external_data_written_by_torch_is_embedded(tmp_path, monkeypatch):
    export = torch.onnx.export

    def export_with_external_data(*args, **kwargs):  # what torch does for models over 1.5 GB
        export(*args, **{**kwargs, "external_data": True})
        assert any(name.endswith(".data") for name in os.listdir(args[2].parent))

    monkeypatch.setattr(torch.onnx, "export", export_with_external_data)
    path = export_onnx(Linear(), 4, tmp_path / "m.onnx", {})
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert validate_onnx(path) == []


def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    def failing_export(model, args, f, **kwargs):
        f.write_bytes(b"half a model")
        raise RuntimeError("export failed")

    (tmp_path / "m.onnx").write_bytes(b"the old model")
    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(RuntimeError, match="export failed"):
        export_onnx(Linear(), 4, tmp_path / "m.onnx", {})
    assert os.listdir(tmp_path) == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"the old model"


def test_the_onnx_backbone_refuses_what_it_cannot_run(tmp_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(np.random.default_rng(0).bytes(1000))
    for load in (OnnxBackbone, load_model):
        with pytest.raises(ModelFileError, match=r"damaged.onnx: not a readable ONNX model"):
            load(damaged)
        with pytest.raises(InputNotFoundError, match="none.onnx"):
            load(tmp_path / "none.onnx")


def test_a_model_with_a_3d_input_is_invalid_and_refused(tmp_path):
    path = _export(Linear(), torch.zeros(2, 3, 16), tmp_path / "three_d.onnx")
    assert [problem.split(":")[0] for problem in validate_onnx(path)] == ["4-D input"]
    with pytest.raises(ModelFileError, match=r"three_d.onnx: its input is not one \(N, 3, S, S\)"):
        OnnxBackbone(path)


# --------------------------------------------------------------------------------------------- command line
def test_export_then_eval_an_onnx_model_gives_the_checkpoint_figures(tmp_path, capsys):
    import json

    from otface.cli import main
    from otface.config import load_config
    from otface.train.data import prepare_data
    from support.runs import TINY

    tiny = [*TINY, f"data.synthetic.cache_dir={tmp_path / 'cache'}", "optim.epochs=1", "ot.weight=0"]
    assert main(["train", "--out", str(tmp_path / "run"), *tiny]) == 0
    _, sets = prepare_data(load_config(None, tiny).data, progress=False)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run" / "last.pt"), str(tmp_path / "model.onnx")]) == 0
    assert "passes the insightface model-validator rules" in capsys.readouterr().out
    figures = {}
    for name, model in (("checkpoint", tmp_path / "run" / "last.pt"), ("onnx", tmp_path / "model.onnx")):
        assert main(["eval", str(model), "--bin", *map(str, sets.values()), "--out", str(tmp_path / name)]) == 0
        figures[name] = json.loads((tmp_path / name / "results.json").read_text())
    got, want = figures["onnx"]["verification"], figures["checkpoint"]["verification"]
    assert got.keys() == want.keys() == {"synth_easy", "synth_hard"}
    for name in want:
        assert got[name]["accuracy"] == pytest.approx(want[name]["accuracy"], abs=1e-9)
        assert got[name]["auc"] == pytest.approx(want[name]["auc"], abs=1e-4)
    assert figures["onnx"]["model"].startswith("ONNX iresnet18")


def test_without_the_onnx_extra_an_onnx_model_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    import otface.eval
    from otface.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    monkeypatch.delitem(sys.modules, "otface.eval.onnx", raising=False)
    monkeypatch.delattr(otface.eval, "onnx", raising=False)
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert main(["eval", str(tmp_path / "model.onnx"), "--bin", str(tmp_path / "a.bin")]) == 2
    err = capsys.readouterr().err
    assert "ONNX models need the onnx extra (onnxruntime is not installed)" in err and "Traceback" not in err
