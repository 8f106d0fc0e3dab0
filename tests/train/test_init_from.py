"""model.init_from: fine-tuning from an otface checkpoint or from a bare backbone state dict in
insightface's key layout (written here from our own builder)."""

import pytest
import torch

from otface.cli import main
from otface.config import load_config
from otface.models import build_backbone
from otface.train.trainer import Trainer
from support.runs import TINY


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("trained")
    Trainer(load_config(None, TINY + [cache, "optim.epochs=1", "ot.weight=0"]), out).train()
    return torch.load(out / "last.pt", weights_only=True), out / "last.pt"


def fresh(tmp_path, cache, *extra):
    return Trainer(load_config(None, TINY + [cache, "ot.weight=0", *extra]), tmp_path / "run")


def test_a_checkpoint_gives_the_backbone_and_the_head(tmp_path, cache, trained):
    ckpt, path = trained
    trainer = fresh(tmp_path, cache, f"model.init_from={path}")
    for name, value in ckpt["backbone"].items():
        assert torch.equal(trainer.backbone.state_dict()[name], value), name
    assert torch.equal(trainer.head.weight, ckpt["head"]["weight"])
    assert trainer.state.step == 0  # fine-tuning starts a new run, not a resume
    sharded = fresh(tmp_path, cache, f"model.init_from={path}", "head.sample_rate=0.5")
    assert torch.equal(sharded.head.head.weight, ckpt["head"]["weight"])


@pytest.mark.parametrize("prefix", ["", "module."])
def test_a_bare_state_dict_gives_the_backbone_and_a_fresh_head(tmp_path, cache, prefix):
    torch.manual_seed(3)
    backbone = build_backbone("iresnet18", embedding_size=32, input_size=32, width=0.125)
    state = {prefix + name: value for name, value in backbone.state_dict().items()}
    torch.save(state, tmp_path / "backbone.pth")
    trainer = fresh(tmp_path, cache, f"model.init_from={tmp_path / 'backbone.pth'}", "optim.epochs=1")
    for name, value in backbone.state_dict().items():
        assert torch.equal(trainer.backbone.state_dict()[name], value), name
    assert torch.equal(trainer.head.weight, fresh(tmp_path, cache).head.weight)  # the usual initial head
    results = trainer.train()
    assert results["train"]["steps"] == 4 and results["train"]["final_loss"] > 0


def test_a_head_over_other_classes_is_left_out(tmp_path, cache, trained):
    ckpt, _ = trained
    torch.save(dict(ckpt, head={"weight": torch.zeros(5, 32)}), tmp_path / "other.pt")
    trainer = fresh(tmp_path, cache, f"model.init_from={tmp_path / 'other.pt'}")
    assert torch.equal(trainer.head.weight, fresh(tmp_path, cache).head.weight)


def test_files_that_do_not_fit_are_one_line(tmp_path, cache, capsys):
    wide = build_backbone("iresnet18", embedding_size=32, input_size=32, width=0.25)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    for name, message in [("wide.pth", "its backbone weights do not fit iresnet18"),
                          ("list.pt", "neither an otface checkpoint nor a state dict"),
                          ("model.onnx", "an ONNX model holds no weights otface trains from"),
                          ("missing.pt", "no checkpoint at")]:
        capsys.readouterr()
        assert main(["train", "--out", str(tmp_path / f"run-{name}"), *TINY, cache,
                     f"model.init_from={tmp_path / name}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("otface: error") == 1 and "Traceback" not in err, err
