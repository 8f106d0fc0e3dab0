import os

import pytest
import torch

from otface.train.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    state = {"w": torch.arange(6.0), "step": 3, "history": [{"loss": 1.5}]}
    save_checkpoint(state, tmp_path / "ck" / "last.pt")
    back = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 3 and back["history"] == state["history"]
    assert os.listdir(tmp_path / "ck") == ["last.pt"]  # no temporary left behind


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_corrupt_and_missing(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
