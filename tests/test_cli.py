"""The real-format walkthrough of docs/data.md in miniature, through the command line: synthetic
faces unpacked as a photo folder and a pair list, packed, converted, trained on, evaluated,
exported and evaluated again."""

import json

import numpy as np
import pytest
from PIL import Image

from otface.cli import main
from otface.data.formats.binset import read_bin
from otface.data.formats.record_dataset import RecordDataset

TINY_MODEL = ["model.params={width: 0.125}", "model.input_size=32", "model.embedding_size=32", "ot.iters=10",
              "optim.batch_size=16", "optim.epochs=1", "train.progress=false", "train.threads=1",
              "data.num_workers=0"]


def test_walkthrough_pack_train_eval(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["synth", "--out", str(demo / "synth"), "--num-identities", "12", "--images-per-identity", "6",
                 "--num-pairs", "40", "--workers", "1"]) == 0
    assert main(["data", "unpack", str(demo / "synth"), str(demo / "photos")]) == 0
    assert main(["data", "unpack", str(demo / "synth" / "synth_easy.bin"), str(demo / "pairs")]) == 0
    bad = demo / "photos" / "000003" / "broken.jpg"  # one damaged photo among the user's
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    assert main(["data", "pack", str(demo / "photos"), str(demo / "packed")]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["data", "pack", str(demo / "photos"), str(demo / "packed"), "--skip-bad", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable images" in printed and "000003/broken.jpg: cannot decode" in printed
    original, packed = RecordDataset(demo / "synth"), RecordDataset(demo / "packed")
    np.testing.assert_array_equal(packed.labels, original.labels)
    assert main(["data", "pairs", str(demo / "pairs" / "pairs.txt"), str(demo / "pairs"),
                 str(demo / "val" / "easy.bin")]) == 0
    assert read_bin(demo / "val" / "easy.bin")[0] == read_bin(demo / "synth" / "synth_easy.bin")[0]

    run = tmp_path / "runs" / "demo"
    assert main(["train", "--out", str(run), f"data.root={demo / 'packed'}",
                 f"data.val_sets=[{demo / 'val' / 'easy.bin'}]", *TINY_MODEL]) == 0
    trained = json.loads((run / "results.json").read_text())["verification"]["easy"]
    assert main(["eval", str(run / "last.pt"), "--bin", str(demo / "val" / "easy.bin")]) == 0
    evaluated = json.loads((run / "eval" / "results.json").read_text())["verification"]["easy"]
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])
    assert main(["export", str(run / "last.pt"), str(run / "model.pt2")]) == 0
    assert main(["eval", str(run / "model.pt2"), "--bin", str(demo / "val" / "easy.bin")]) == 2  # not trusted
    assert "--trust-model" in capsys.readouterr().err
    assert main(["eval", str(run / "model.pt2"), "--bin", str(demo / "val" / "easy.bin"), "--trust-model",
                 "--out", str(run / "eval_exported")]) == 0
    exported = json.loads((run / "eval_exported" / "results.json").read_text())["verification"]["easy"]
    assert exported["accuracy"] == pytest.approx(trained["accuracy"])
    assert exported["auc"] == pytest.approx(trained["auc"], abs=1e-4)


def test_data_align_command(tmp_path, capsys):
    photo = np.zeros((150, 150, 3), np.uint8)
    photo[40:110, 40:110] = 200
    (tmp_path / "raw" / "ann").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "raw" / "ann" / "1.png")
    landmarks = "38.3 51.7 73.5 51.5 56.0 71.7 41.5 92.4 70.7 92.2"
    (tmp_path / "lm.txt").write_text(f"ann/1.png {landmarks}\nann/2.png {landmarks}\n")
    assert main(["data", "align", str(tmp_path / "raw"), str(tmp_path / "lm.txt"), str(tmp_path / "out")]) == 2
    assert "ann/2.png" in capsys.readouterr().err
    assert main(["data", "align", str(tmp_path / "raw"), str(tmp_path / "lm.txt"), str(tmp_path / "out"),
                 "--skip-bad"]) == 0
    assert "aligned 1 faces" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "ann" / "1.jpg").size == (112, 112)


def test_pair_order_and_too_few_impostors_are_reported(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "synth"), "--num-identities", "12", "--images-per-identity", "6",
                 "--num-pairs", "40", "--workers", "1"]) == 0
    assert main(["data", "unpack", str(tmp_path / "synth" / "synth_easy.bin"), str(tmp_path / "pairs")]) == 0
    lines = (tmp_path / "pairs" / "pairs.txt").read_text().splitlines()
    blocked = sorted(lines, key=lambda line: line.endswith(" 0"))  # every genuine pair first
    (tmp_path / "blocked.txt").write_text("\n".join(blocked) + "\n")
    capsys.readouterr()
    assert main(["data", "pairs", str(tmp_path / "blocked.txt"), str(tmp_path / "pairs"),
                 str(tmp_path / "blocked.bin")]) == 0
    captured = capsys.readouterr()
    assert "wrote 40 pairs (20 genuine)" in captured.out
    assert "verification folds 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 hold far more or fewer genuine pairs" in captured.err
    assert main(["data", "pairs", str(tmp_path / "pairs" / "pairs.txt"), str(tmp_path / "pairs"),
                 str(tmp_path / "mixed.bin")]) == 0
    assert "folds" not in capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), f"data.synthetic.cache_dir={tmp_path / 'cache'}",
                 "data.synthetic.num_identities=12", "data.synthetic.images_per_identity=6",
                 "data.synthetic.num_pairs=40", "data.synthetic.workers=1", *TINY_MODEL]) == 0
    printed = capsys.readouterr().out
    assert "synth_easy: TAR@FAR n/a: FAR 0.001 needs >= 1000 impostor pairs outside each fold, this set has 18" \
        in printed
    results = json.loads((run / "results.json").read_text())["verification"]["synth_easy"]
    assert results["tar_at_far"] is None and 0.0 <= results["far"] <= 1.0
