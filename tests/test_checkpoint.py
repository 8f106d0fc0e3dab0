import errno
import os
import pickle

import pytest
import torch

from otface import checkpoint
from otface.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from otface.errors import InputNotFoundError, ModelFileError, RunError


def test_round_trip(tmp_path):
    state = {"w": torch.arange(6.0), "step": 3, "history": [{"loss": 1.5}]}
    save_checkpoint(state, tmp_path / "ck" / "last.pt")
    back = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 3 and back["history"] == state["history"]
    assert os.listdir(tmp_path / "ck") == ["last.pt"]  # no temporary left behind


class _FullDisk:
    """A file that accepts ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.mark.parametrize("room", [10, 5000])  # 5000: torch's writer turns ENOSPC into 'unexpected pos'
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, room):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    fdopen = os.fdopen
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), room))
    with pytest.raises(RunError, match=r"cannot write checkpoint .*last.pt: No space left on device") as err:
        save_checkpoint({"step": 2, "w": torch.randn(100, 100)}, path)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_unwritable_folder_is_a_run_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should be")
    with pytest.raises(RunError, match="cannot write checkpoint .*file/last.pt"):
        save_checkpoint({"step": 1}, blocker / "last.pt")


def test_a_bug_while_saving_keeps_its_traceback(tmp_path):
    with pytest.raises((pickle.PicklingError, AttributeError)):  # not a write error: not turned into one
        save_checkpoint({"f": lambda: 0}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_corrupt_refused_and_missing_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="bad.pt") as err:
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint({"w": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(ModelFileError, match=r"evil.pt: refused.*system") as refused:
        load_checkpoint(evil)
    for e in (err, refused):
        assert "\n" not in str(e.value)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ModelFileError, match="holds a list"):
        load_checkpoint(not_a_dict)
    with pytest.raises(InputNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_stale_temporaries_are_removed(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    stale = [tmp_path / "last.pt.abc123.tmp", tmp_path / "last.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    other = tmp_path / "other.pt.x.tmp"
    other.write_bytes(b"not ours")
    assert remove_stale_temporaries(path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "other.pt.x.tmp"]
