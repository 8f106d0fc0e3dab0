import os

import pytest

from otface.data.staging import staged_files


def test_files_appear_together_and_a_failure_keeps_the_old_set(tmp_path):
    (tmp_path / "property").write_text("old")
    (tmp_path / "data").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path, ["data", "property"]) as tmp:
            tmp["data"].write_text("new")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "property"]
    assert (tmp_path / "data").read_text() == "old" and (tmp_path / "property").read_text() == "old"

    with staged_files(tmp_path, ["data", "property"]) as tmp:
        for path in tmp.values():
            assert path.parent == tmp_path and not path.exists()
            path.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "property"]
    assert all(p.read_text() == "new" for p in tmp_path.iterdir())


def test_the_last_name_is_removed_before_the_renames(tmp_path, monkeypatch):
    """An interruption between the renames leaves no file readers take as the sign of a full set."""
    (tmp_path / "property").write_text("old")
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        with staged_files(tmp_path, ["data", "property"]) as tmp:
            for path in tmp.values():
                path.write_text("new")
    assert calls == [tmp_path / "data"] and list(tmp_path.iterdir()) == []
