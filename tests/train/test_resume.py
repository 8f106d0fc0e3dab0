"""--resume: settings that change the meaning of the saved state are refused, the others recorded."""

import json
import shutil

import pytest
import torch
import yaml

from otface.cli import main
from otface.config import Config, load_config
from otface.errors import ConfigError
from otface.train.resume import RESUMABLE, flatten, resume_changes
from support.runs import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder trained for one epoch, and the arguments that made it."""
    cache = f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"
    out = tmp_path_factory.mktemp("run")
    args = [*TINY, cache, "optim.epochs=1", "ot.weight=0"]
    assert main(["train", "--out", str(out), *args]) == 0
    return out, args


def test_every_resumable_key_is_a_config_key():
    assert RESUMABLE <= set(flatten(Config()))


def test_changes_of_the_saved_state_are_refused_in_one_line(trained, capsys):
    out, _ = trained
    saved = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "optim.batch_size=32", "head.name=cosface",
                 "train.log_interval=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--resume cannot change head.name ('arcface' -> 'cosface'), optim.batch_size (16 -> 32)" in err
    assert "log_interval" not in err  # a safe key is not listed
    assert (out / "config.yaml").read_text() == saved


@pytest.mark.parametrize("override, key", [
    ("model.backbone=mbf", "model.backbone"), ("train.seed=1", "train.seed"),
    ("optim.milestones=[2]", "optim.milestones"), ("data.sampler=random", "data.sampler"),
    ("optim.grad_accum=2", "optim.grad_accum"), ("losses.center={weight: 0.1}", "losses"),
    ("ot.weight=1", "ot.weight"), ("data.flip=false", "data.flip"),
])
def test_each_kind_of_state_changing_key_is_refused(trained, capsys, override, key):
    out, _ = trained
    assert main(["train", "--resume", "--out", str(out), override]) == 2
    assert f"--resume cannot change {key} (" in capsys.readouterr().err


def test_safe_changes_are_applied_and_recorded(trained, tmp_path, capsys):
    out, args = trained
    assert main(["train", "--resume", "--out", str(out), "optim.epochs=2", "train.log_interval=2"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optim"]["epochs"] == 2 and config["train"]["log_interval"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["epochs"] == 2
    assert results["train"]["resumes"] == [{"step": 4, "changes": {"optim.epochs": [1, 2],
                                                                   "train.log_interval": [1, 2]},
                                                       "world_size": [1, 1]}]
    assert "resumed at step 4 with optim.epochs 1 -> 2, train.log_interval 1 -> 2" in capsys.readouterr().out

    assert main(["train", "--resume", "--out", str(out), "optim.epochs=1"]) == 2
    assert "optim.epochs=1, but 2 epochs are already trained" in capsys.readouterr().err


def test_resume_changes_lists_every_changed_key():
    saved = load_config(None, [])
    new = load_config(None, ["optim.epochs=9", "train.threads=1", "data.num_workers=0"])
    assert resume_changes(saved, new, epochs_done=3) == {
        "optim.epochs": [6, 9], "train.threads": [0, 1], "data.num_workers": [1, 0]}
    assert resume_changes(saved, saved, epochs_done=6) == {}
    with pytest.raises(ConfigError, match=r"cannot change model.embedding_size \(512 -> 128\), optim.lr"):
        resume_changes(saved, load_config(None, ["model.embedding_size=128", "optim.lr=0.2"]), 0)


def test_a_damaged_checkpoint_is_one_line_at_resume(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"\x00" * 100)
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"otface: error: {tmp_path / 'last.pt'}: not a readable checkpoint") and err.count("\n") == 1


def test_a_checkpoint_whose_optimizer_state_does_not_fit_is_one_line(trained, tmp_path, capsys):
    out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    ckpt = torch.load(copy / "last.pt", weights_only=True)
    ckpt["optimizer"]["param_groups"] = []
    torch.save(ckpt, copy / "last.pt")
    assert main(["train", "--resume", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("otface: error:")]
    assert len(errors) == 1 and "last.pt: its optimizer does not fit this run's:" in errors[0]
    assert "Traceback" not in err
