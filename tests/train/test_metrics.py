"""metrics.jsonl and TensorBoard events of a run, read back with tensorboard's own reader; no
progress-bar redraws in a log that is not a terminal."""

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from otface.config import load_config
from otface.train import metrics
from otface.train.trainer import Trainer
from support.runs import TINY


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"


def run(out, cache, *extra, resume=False):
    trainer = Trainer(load_config(None, TINY + [cache, "ot.weight=0", *extra]), out)
    if resume:
        trainer.resume()
    return trainer.train()


def records(out):
    return [json.loads(line) for line in (out / metrics.METRICS).read_text().splitlines()]


def events(out):
    acc = EventAccumulator(str(out / metrics.TENSORBOARD), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_every_log_line_and_validation_is_recorded_and_read_back(tmp_path, cache):
    results = run(tmp_path, cache, "optim.epochs=2", "train.val_interval=1")
    rows = records(tmp_path)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [{k: v for k, v in r.items() if k != "kind"} for r in train] == results["train"]["history"]
    val = [r for r in rows if r["kind"] == "validation"]
    assert [(r["step"], r["set"]) for r in val] == [(4, "synth_easy"), (4, "synth_hard"), (8, "synth_easy"),
                                                    (8, "synth_hard")]
    assert val[-1]["accuracy"] == results["verification"]["synth_hard"]["accuracy"]
    assert val[-1]["tar_at_far"] is None  # undefined on 40 pairs: null, not a number

    acc = events(tmp_path)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert {"train/lr", "train/head_loss", "train/hard_groups", "train/images_per_second",
            "synth_easy/accuracy", "synth_hard/auc"} <= set(acc.Tags()["scalars"])
    assert "synth_hard/tar_at_far" not in acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("synth_easy/accuracy")] == pytest.approx(
        [r["accuracy"] for r in val if r["set"] == "synth_easy"])
    assert acc.Tags()["images"] == ["roc"] and acc.Images("roc")[0].step == 8


def test_a_resumed_run_records_each_step_once(tmp_path, cache):
    run(tmp_path, cache, "optim.epochs=1")
    with (tmp_path / metrics.METRICS).open("a") as fh:  # a record written after the checkpoint, then killed
        fh.write(json.dumps({"kind": "train", "step": 5, "loss": 99.0}) + "\n")
        fh.write('{"kind": "train", "st')  # a line the kill cut short
    run(tmp_path, cache, "optim.epochs=2", resume=True)
    train = [r for r in records(tmp_path) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9)) and 99.0 not in [r["loss"] for r in train]
    assert [e.step for e in events(tmp_path).Scalars("train/loss")] == list(range(1, 9))


def test_without_tensorboard_the_json_lines_are_still_written(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(metrics, "tensorboard_writer", lambda folder, purge_step: None)
    run(tmp_path, cache, "optim.epochs=1")
    assert len(records(tmp_path)) == 4 + 2 and not (tmp_path / metrics.TENSORBOARD).exists()


def test_no_progress_bar_redraws_when_stderr_is_not_a_terminal(tmp_path, cache):
    out = tmp_path / "run"
    args = [a for a in TINY if a != "train.progress=false"]
    done = subprocess.run([sys.executable, "-m", "otface", "train", "--out", str(out), *args, cache,
                           "optim.epochs=1", "ot.weight=0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for text in (done.stderr, (out / "train.log").read_text()):
        assert "\r" not in text and "%|" not in text  # no bar drawn, redrawn or cleared
    assert " step 4 |" in done.stderr  # the periodic log lines instead
