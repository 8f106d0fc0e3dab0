"""One process per run folder; stale lock and checkpoint temporaries of killed runs are cleaned."""

import os
import signal
import subprocess
import sys

import pytest

from otface.cli import main
from otface.errors import RunError
from otface.train.run_folder import LOCK, hold_run_folder

HOLD = "import sys, time; from otface.train.run_folder import hold_run_folder\n" \
       "with hold_run_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


@pytest.fixture
def holder(tmp_path):
    """A second process holding the run folder tmp_path/run until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, holder, capsys):
    with pytest.raises(RunError, match=rf"run folder .*run is in use by process {holder.pid} on "):
        with hold_run_folder(tmp_path / "run"):
            pass
    assert main(["train", "--resume", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"in use by process {holder.pid}" in err and err.count("\n") == 1


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, holder, caplog):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK).read_text().startswith(f"{holder.pid} ")  # kill -9 left its PID
    with caplog.at_level("WARNING", logger="otface.train"):
        with hold_run_folder(tmp_path / "run"):
            assert (tmp_path / "run" / LOCK).read_text().startswith(f"{os.getpid()} ")
    assert f"took over the lock left by process {holder.pid}" in caplog.text
    assert (tmp_path / "run" / LOCK).read_text() == ""  # released on exit
    caplog.clear()
    with caplog.at_level("WARNING", logger="otface.train"):
        with hold_run_folder(tmp_path / "run"):
            pass
    assert "took over" not in caplog.text  # a lock released normally is not stale


def test_checkpoint_temporaries_of_killed_saves_are_removed(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    orphans = [run / f"last.pt.{i}abc.tmp" for i in range(3)]
    for path in orphans:
        path.write_bytes(b"half a checkpoint")
    (run / "last.pt").write_bytes(b"kept")
    with caplog.at_level("WARNING", logger="otface.train"):
        with hold_run_folder(run):
            pass
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, "last.pt"])
    assert all(str(p) in caplog.text for p in orphans)


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunError, match="cannot write to run folder .*file/run"):
        with hold_run_folder(tmp_path / "file" / "run"):
            pass
    assert main(["train", "--out", str(tmp_path / "file" / "run")]) == 2
    assert capsys.readouterr().err.startswith("otface: error: cannot write to run folder")
