"""A user's mistake is one line on stderr and exit code 2, never a traceback; a bug keeps its
traceback."""

import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from otface import checkpoint
from otface.cli import main
from otface.config import load_config
from otface.train.data import prepare_data
from support.runs import TINY


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"


def one_line_error(capsys, argv):
    """Run ``otface argv``: it must exit 2 with a single 'otface: error: ...' line; returns it."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("otface: error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("override, message", [
    ("head.name=nohead", "unknown head 'nohead'; known: a_softmax"),
    ("model.backbone=resnet", "unknown backbone 'resnet'; known: iresnet100"),
    ("head.params={scale: 30, marign: 0.1}", "head 'arcface' has no hyper-parameter 'marign'"),
    ("model.params={widht: 0.5}", "backbone 'iresnet18' has no parameter 'widht'; it accepts: embedding_size"),
    ("losses.centre={weight: 1}", "unknown auxiliary loss 'centre'"),
    ("train.device=gpu", "device 'gpu' is not a device name"),
    ("optim.lr=.inf", "optim.lr: must be a finite number"),
    ("train.checkpoint_steps=-1", "train.checkpoint_steps: must be >= 0"),
    ("data.root=/no/such/folder", "data.root /no/such/folder is not a folder"),
    ("ot.stage=layer9", "ot.stage 'layer9' is not a stage of iresnet18"),
    ("optim.batch_size=400", "optim.batch_size=400: batch size 400 does not fit 72 samples"),
    ("optim.batch_size=64", "optim.batch_size=64: P=16 identities per batch but the data has 12"),
])
def test_bad_settings_are_one_line(tmp_path, cache, capsys, override, message):
    assert message in one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, cache, capsys):
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, "train.device=cuda"])
    assert "device 'cuda': CUDA is not available here" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["train.compile", "train.channels_last", "train.sync_bn"])
def test_cuda_options_on_the_cpu_are_one_line(tmp_path, cache, capsys, key):
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, f"{key}=true"])
    assert f"{key}=true needs a CUDA device; this run trains on cpu" in line


def test_discface_with_a_sampled_head_is_one_line(tmp_path, cache, capsys):
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, "head.sample_rate=0.5",
                                   "losses.discface={weight: 0.1}"])
    assert "losses.discface reads every class centre" in line


def _image_folder(tmp_path, cache):
    root, val = prepare_data(load_config(None, TINY + [cache]).data, progress=False)
    from otface.data.tools.unpack import unpack_records

    unpack_records(root, tmp_path / "faces")
    return tmp_path / "faces", val["synth_easy"]


def test_an_image_of_another_size_in_an_image_folder_is_one_line_or_skipped(tmp_path, cache, capsys):
    folder, easy = _image_folder(tmp_path, cache)
    odd = sorted((folder / sorted(os.listdir(folder))[3]).iterdir())[1]
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(odd.with_suffix(".png"))
    odd.unlink()
    args = ["train", *TINY, cache, f"data.root={folder}", f"data.val_sets=[{easy}]", "optim.epochs=1",
            "data.sampler=random", "ot.weight=0"]
    line = one_line_error(capsys, [*args[:1], "--out", str(tmp_path / "a"), *args[1:]])
    assert f"{odd.with_suffix('.png')}: image is 50x60, expected 112x112 (the size of " in line
    assert main([*args[:1], "--out", str(tmp_path / "b"), *args[1:], "data.on_error=skip",
                 "data.max_skip_fraction=0.1"]) == 0
    assert "image is 50x60" in capsys.readouterr().out


def test_a_damaged_image_read_by_a_loader_worker_is_one_line(tmp_path, cache, capsys):
    folder, easy = _image_folder(tmp_path, cache)
    for photo in sorted(folder.rglob("*.jpg"))[1:]:  # the first stays readable: it gives the folder's size
        photo.write_bytes(photo.read_bytes()[:200])
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, f"data.root={folder}",
                                   f"data.val_sets=[{easy}]", "data.num_workers=1", "optim.epochs=1"])
    assert ".jpg: cannot decode image" in line and "worker" not in line


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, cache, capsys, monkeypatch):
    def full(fd, mode):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fdopen", full)
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, cache, "optim.epochs=1"])
    assert line.startswith(f"otface: error: cannot write checkpoint {tmp_path / 'run' / 'last.pt'}: No space left")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch owned",))


def test_model_files_are_never_executed(tmp_path, capsys, monkeypatch):
    bin_path = tmp_path / "none.bin"
    evil = tmp_path / "evil.pt"
    torch.save({"backbone": {}, "config": _Evil()}, evil)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["eval", str(evil), "--bin", str(bin_path)])
    assert "evil.pt: refused" in line and not (tmp_path / "owned").exists()

    def never(*args, **kwargs):
        raise AssertionError("torch.export.load must not run on an untrusted file")

    monkeypatch.setattr(torch.export, "load", never)
    program = tmp_path / "model.pt2"
    program.write_bytes(b"PK\x03\x04 an archive that would be unpickled")
    line = one_line_error(capsys, ["eval", str(program), "--bin", str(bin_path)])
    assert "model.pt2: an exported program is loaded by torch.export.load" in line and "--trust-model" in line
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(b"\x00" * 64)
    assert "last.pt: not a readable checkpoint" in one_line_error(capsys, ["eval", str(damaged), "--bin",
                                                                           str(bin_path)])


def test_a_bug_keeps_its_traceback(tmp_path, cache, monkeypatch):
    from otface.train import trainer

    def buggy(*args, **kwargs):
        raise ValueError("a programming error, not the user's")

    monkeypatch.setattr(trainer, "flip_images", buggy)
    with pytest.raises(ValueError, match="a programming error"):
        main(["train", "--out", str(tmp_path / "run"), *TINY, cache, "optim.epochs=1"])


@pytest.mark.parametrize("command", [
    ["synth", "--out", "{blocked}/synth", "--num-identities", "4", "--images-per-identity", "2", "--num-pairs",
     "20", "--workers", "1"],
    ["data", "unpack", "{bin}", "{blocked}/pairs"],
])
def test_an_output_path_the_machine_refuses_is_one_line(tmp_path, cache, capsys, command):
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder is needed")
    _, val = prepare_data(load_config(None, TINY + [cache]).data, progress=False)
    argv = [arg.format(blocked=blocked, bin=val["synth_easy"]) for arg in command]
    assert "Not a directory" in one_line_error(capsys, argv)


def test_other_os_errors_keep_their_traceback(monkeypatch):
    from otface import cli

    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor", "x")

    monkeypatch.setattr(cli, "cmd_synth", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["synth", "--out", "x"])
