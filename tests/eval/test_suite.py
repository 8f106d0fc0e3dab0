"""`otface export` and `otface eval`: the exported model is the checkpoint's, and the report holds
the numbers each protocol gives when run directly on the same model."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from otface.checkpoint import save_checkpoint
from otface.cli import main
from otface.config import load_config
from otface.data.formats.binset import load_verification_set, write_bin
from otface.data.testpacks.megaface import load_images, read_megaface
from otface.data.transforms import normalize, resize
from otface.errors import ConfigError, DataError, InputNotFoundError, ModelFileError, RunError
from otface.eval.embed import extract_embeddings
from otface.eval.identification import megaface_identification
from otface.eval.ijb import ijb_verification
from otface.eval.model import export_backbone, load_model
from otface.eval.suite import EvalReport, evaluate_bins, evaluate_megaface
from otface.eval.verification import verification
from otface.models import build_backbone
from support.ijb_layout import write_layout
from support.megaface_pack import DISTRACTORS, write_pack

SMALL = ["model.backbone=iresnet18", "model.params={width: 0.125}", "model.input_size=32", "model.embedding_size=16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_backbone("iresnet18", embedding_size=16, input_size=32, width=0.125)
    for m in model.modules():  # non-trivial running statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("run") / "last.pt"
    save_checkpoint({"backbone": model.state_dict(), "config": cfg.to_dict()}, path)
    return path, model.eval()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_backbone(checkpoint[0], tmp_path_factory.mktemp("export") / "model.pt2")


def test_checkpoint_and_export_give_the_trained_backbone(checkpoint, exported):
    path, model = checkpoint
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    for loaded in (load_model(path), load_model(exported, trust_exported=True)):
        assert loaded.input_size == 32
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loaded.model(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)  # any batch


def test_load_model_rejects_what_it_cannot_use(tmp_path):
    with pytest.raises(InputNotFoundError):
        load_model(tmp_path / "none.pt")
    save_checkpoint({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an otface training checkpoint"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="unpickles it and so runs any code the file holds"):
        load_model(tmp_path / "bad.pt2")  # refused before it is opened: not trusted
    with pytest.raises(ModelFileError, match="not a readable exported model"):
        load_model(tmp_path / "bad.pt2", trust_exported=True)


def test_a_checkpoint_whose_weights_do_not_fit_its_backbone_is_one_error(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint[0], weights_only=True)
    ckpt["config"]["model"]["embedding_size"] = 64
    save_checkpoint(ckpt, tmp_path / "misfit.pt")
    with pytest.raises(ModelFileError, match=r"misfit.pt: its weights do not fit iresnet18: Error\(s\) in loading"):
        load_model(tmp_path / "misfit.pt")


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):  # 20 pairs of smooth random 112x112 JPEGs
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((112, 112), Image.BILINEAR).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    write_bin(root / "lfw.bin", images, [i % 2 == 0 for i in range(20)])
    write_layout(root / "IJBC")
    write_pack(root / "megaface", size=112)
    return root


def _direct(model, root):
    """Each protocol run directly: embeddings computed here, not through otface.eval.suite."""
    images, issame = load_verification_set(root / "lfw.bin")
    emb = extract_embeddings(model, resize(normalize(images), 32)).numpy()
    ver = verification(emb[0::2], emb[1::2], issame)
    ijb = ijb_verification(model, root / "IJBC", "IJBC", image_size=32, progress=False)
    lists = read_megaface(root / "megaface")
    probes, distractors = load_images(lists, "probes"), load_images(lists, "distractors")
    feats = [extract_embeddings(model, resize(normalize(x.images), 32)).numpy() for x in (probes, distractors)]
    mega = megaface_identification(feats[0], probes.labels, feats[1], fars=(1e-6,))
    return ver, ijb, mega


@pytest.mark.parametrize("which", ["checkpoint", "exported"])
def test_eval_cli_reports_what_each_protocol_gives(checkpoint, exported, benchmarks, tmp_path, capsys, which):
    path = checkpoint[0] if which == "checkpoint" else exported
    out = tmp_path / "eval"
    args = ["eval", str(path), "--bin-dir", str(benchmarks), "--ijb", str(benchmarks / "IJBC"),
            "--megaface", str(benchmarks / "megaface"), "--out", str(out), "--device", "cpu",
            *(["--trust-model"] if which == "exported" else [])]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| lfw | 20 |" in printed and "## IJB 1:1" in printed and "## MegaFace-style" in printed
    results = json.loads((out / "results.json").read_text())
    ver, ijb, mega = _direct(checkpoint[1], benchmarks)
    assert results["verification"]["lfw"]["accuracy"] == pytest.approx(ver["accuracy"])
    assert results["verification"]["lfw"]["auc"] == pytest.approx(ver["auc"], abs=1e-6)
    for far, tar in ijb["tar_at_far"].items():
        assert results["ijb"]["IJBC"]["tar_at_far"][f"{far:g}"] == pytest.approx(tar)
    assert results["megaface"]["rank1"] == pytest.approx(mega["rank1"])
    assert results["megaface"]["cmc"] == pytest.approx(list(mega["cmc"]))
    assert results["megaface"]["tar_at_far"]["1e-06"] == pytest.approx(mega["tar_at_far"][1e-6])
    for picture in ("roc_verification.png", "roc_ijb.png", "cmc_megaface.png"):
        assert (out / picture).stat().st_size > 1000
    assert (out / "results.md").read_text().startswith("# Evaluation of")


def test_eval_cli_ijb_modes(checkpoint, benchmarks, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(checkpoint[0]), "--ijb", str(benchmarks / "IJBC"), "--ijb-no-norm-score",
                 "--ijb-no-detector-score", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "results.json").read_text())["ijb"]["IJBC"]
    assert result["mode"] == {"flip_test": True, "norm_score": False, "detector_score": False}
    direct = ijb_verification(checkpoint[1], benchmarks / "IJBC", "IJBC", norm_score=False, detector_score=False,
                              image_size=32, progress=False)
    assert result["tar_at_far"] == pytest.approx({f"{k:g}": v for k, v in direct["tar_at_far"].items()})
    assert result["auc"] == pytest.approx(direct["auc"])


def test_eval_cli_errors_name_the_problem(checkpoint, benchmarks, tmp_path, capsys):
    path = str(checkpoint[0])
    assert main(["eval", path]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", path, "--bin-dir", str(tmp_path)]) == 2
    assert "none of lfw" in capsys.readouterr().err
    (tmp_path / "cplfw.bin").write_bytes(b"garbage")
    assert main(["eval", path, "--bin", str(tmp_path / "cplfw.bin"), "--out", str(tmp_path / "o")]) == 2
    assert "cplfw.bin" in capsys.readouterr().err
    assert main(["eval", path, "--ijb", str(tmp_path / "IJBC"), "--out", str(tmp_path / "o")]) == 2
    assert "IJBC meta file not found" in capsys.readouterr().err
    assert main(["eval", path, "--ijb", str(tmp_path / "IJBA"), "--out", str(tmp_path / "o")]) == 2
    assert "IJB set name must be one of" in capsys.readouterr().err
    assert main(["eval", path, "--megaface", str(tmp_path / "mf"), "--out", str(tmp_path / "o")]) == 2
    assert "mf: MegaFace test pack folder not found" in capsys.readouterr().err


def test_two_verification_sets_of_one_name_are_refused(checkpoint, tmp_path):
    paths = [tmp_path / "a" / "lfw.bin", tmp_path / "b" / "lfw.bin", tmp_path / "agedb_30.bin"]
    with pytest.raises(ConfigError, match=r"share a name \(the file stem\): .*a/lfw\.bin, .*b/lfw\.bin$"):
        evaluate_bins(load_model(checkpoint[0]), paths, EvalReport(model="m"), torch.device("cpu"))


def test_megaface_without_distractors_to_use_is_named(checkpoint, tmp_path):
    loaded = load_model(checkpoint[0])
    root = write_pack(tmp_path / "noisy", size=112, distractor_noises="".join(p + "\n" for p in DISTRACTORS))
    with pytest.raises(DataError, match=r"noisy/megaface_lst: no MegaFace distractors listed \(after noise removal\)"):
        evaluate_megaface(loaded, root, EvalReport(model="m"), torch.device("cpu"), progress=False)
    root = write_pack(tmp_path / "broken", size=112)
    for path in DISTRACTORS:
        (root / "megaface_images" / path).write_bytes(b"broken")
    with pytest.raises(RunError, match=r"broken/megaface_lst: none of the 4 MegaFace distractors could be read "
                                       r"\(first: .*megaface_lst line 1: .*11_0\.jpg: cannot decode"):
        evaluate_megaface(loaded, root, EvalReport(model="m"), torch.device("cpu"), on_error="skip", progress=False)
