"""End-to-end: a tiny synthetic run trains, evaluates, checkpoints and resumes exactly."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from otface.cli import main
from otface.config import load_config
from otface.data.formats.folder import ImageFolderDataset
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import RecordIOError, RecordReader, unpack_record
from otface.data.skipping import BadSample
from otface.errors import RunError
from otface.train.data import prepare_data
from otface.train.run_checkpoint import NonFiniteWeightsError
from otface.train.trainer import NonFiniteLossError, Trainer
from support.runs import TINY


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"


def run(tmp, cache, *extra, resume=False):
    cfg = load_config(None, TINY + [cache, *extra])
    trainer = Trainer(cfg, tmp)
    if resume:
        trainer.resume()
    return trainer, trainer.train()


def test_train_evaluate_and_report(tmp_path, cache):
    trainer, results = run(tmp_path, cache, "optim.epochs=1")
    assert set(results["verification"]) == {"synth_easy", "synth_hard"}
    for r in results["verification"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["pairs"] == 40
    t = results["train"]
    assert t["steps"] == trainer.steps_per_epoch and t["images"] == t["steps"] * 16
    assert t["hard_groups_per_step"] > 0  # the P x K sampler makes the OT term active
    assert t["images_per_second"] > 0
    assert results["config"]["ot"]["weight"] == 1.0
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "roc.png").is_file()
    assert (tmp_path / "config.yaml").is_file()


def test_resume_continues_exactly(tmp_path, cache):
    full, _ = run(tmp_path / "full", cache, "optim.epochs=2")
    run(tmp_path / "split", cache, "optim.epochs=1")
    resumed, _ = run(tmp_path / "split", cache, "optim.epochs=2", resume=True)
    assert resumed.state.step == full.state.step
    for name, value in full.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value, msg=name)
    torch.testing.assert_close(resumed.head.weight, full.head.weight)


def test_gradient_accumulation_holds_the_schedule_and_equals_one_batch(tmp_path, cache):
    """Two accumulated micro-batches of 8 make one optimiser step of a batch of 16: the same
    number of steps (so the same learning-rate schedule) and images over an epoch, and the same
    update of every weight -- the backbone in eval mode, so that batch norm uses its running
    statistics and no per-micro-batch statistics tell the two apart."""
    common = [cache, "optim.epochs=1", "ot.weight=0", "data.sampler=random", "data.flip=false"]
    a, _ = run(tmp_path / "a", *common)
    assert a.state.step == a.steps_per_epoch
    b, _ = run(tmp_path / "b", *common, "optim.batch_size=8", "optim.grad_accum=2")
    assert b.state.step == a.state.step
    assert b.state.images == a.state.images

    one = Trainer(load_config(None, TINY + common), tmp_path / "one")
    two = Trainer(load_config(None, TINY + common + ["optim.batch_size=8", "optim.grad_accum=2"]), tmp_path / "two")
    images, labels, _ = next(iter(one._loader()))
    assert len(labels) == 16
    for trainer in (one, two):
        trainer.backbone.eval()
    one.step([one._micro_batch(images, labels, [], 0)])
    two.step([two._micro_batch(images[:8], labels[:8], [], 0), two._micro_batch(images[8:], labels[8:], [], 1)])
    for name, value in one.backbone.state_dict().items():
        torch.testing.assert_close(two.backbone.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(two.head.weight, one.head.weight, rtol=1e-5, atol=1e-6)
    fresh = Trainer(load_config(None, TINY + common), tmp_path / "fresh")
    moved = sum(not torch.equal(v, fresh.backbone.state_dict()[k]) for k, v in one.backbone.state_dict().items()
                if v.is_floating_point())
    assert moved > 0  # the step did update the weights compared


def test_cli_train_writes_results_and_rejects_bad_keys(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, cache, "optim.epochs=1", "ot.weight=0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["ot"]["weight"] == 0.0
    assert "synth_easy" in capsys.readouterr().out
    assert main(["train", "--out", str(out), *TINY, cache]) == 2  # run exists: needs --resume
    assert main(["train", "--out", str(tmp_path / "x"), "optim.lrr=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2


def test_non_finite_loss_is_skipped_and_counted(tmp_path, cache, monkeypatch):
    cfg = load_config(None, TINY + [cache, "optim.epochs=1", "train.max_bad_steps=100"])
    trainer = Trainer(cfg, tmp_path)
    calls = {"n": 0}
    forward = trainer._forward

    def sometimes_nan(images, labels):
        calls["n"] += 1
        loss, *rest = forward(images, labels)
        return (loss * float("nan"), *rest) if calls["n"] == 2 else (loss, *rest)

    monkeypatch.setattr(trainer, "_forward", sometimes_nan)
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    results = trainer.train()
    assert results["train"]["skipped_steps"] == 1
    assert all(torch.isfinite(v.float()).all() for v in trainer.backbone.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.backbone.state_dict().items())


def test_auxiliary_losses_are_added_logged_and_checkpointed(tmp_path, cache):
    extra = ["optim.epochs=1", "losses.center={weight: 0.01, params: {alpha: 0.5}}",
             "losses.discface={weight: 0.2}", "losses.triplet={weight: 1.0, params: {mining: batch_hard}}"]
    trainer, results = run(tmp_path, cache, *extra)
    row = results["train"]["history"][-1]
    assert {"head_loss", "ot_loss", "center_loss", "discface_loss", "triplet_loss"} <= set(row)
    weights = {"head": 1.0, "ot": 1.0, "center": 0.01, "discface": 0.2, "triplet": 1.0}
    assert row["loss"] == pytest.approx(sum(w * row[f"{k}_loss"] for k, w in weights.items()), rel=1e-5)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(ckpt["losses"]["center.centers"], trainer.aux_losses["center"].centers)
    basis = dict(trainer.aux_losses["discface"].named_parameters())
    assert basis and all(any(p is q for q in trainer.params) for p in basis.values())  # trained
    with pytest.raises(KeyError, match="unknown auxiliary loss 'centre'"):
        run(tmp_path / "bad", cache, "losses.centre={weight: 1.0}")


def _tiny_set(tmp_path, cache):
    """A copy of the tiny synthetic RecordIO training folder, and its easy validation set."""
    root, val = prepare_data(load_config(None, TINY + [cache]).data, progress=False)
    copy = tmp_path / "train"
    shutil.copytree(root, copy)
    return copy, val["synth_easy"]


def _corrupt_images(root, keys):
    """Overwrite the JPEG bytes of records ``keys`` in place (record framing and labels intact)."""
    reader = RecordReader(root / "train.rec", root / "train.idx")
    spans = []
    for key in keys:
        header, image = unpack_record(reader.read(key))
        assert header.flag == 0 and b"\xce\xd7\x23\x0a" not in reader.read(key)  # one part: simple offsets
        spans.append((reader.offset(key) + 8 + 24, len(image)))
    reader.close()
    with open(root / "train.rec", "r+b") as f:
        for start, length in spans:
            f.seek(start)
            f.write(b"\xff\xd8\xff" + bytes(length - 3))


def test_unreadable_samples_raise_or_are_skipped_and_counted(tmp_path, cache):
    root, easy = _tiny_set(tmp_path, cache)
    bad_keys = [3, 10, 11, 40]
    _corrupt_images(root, bad_keys)
    data = [f"data.root={root}", f"data.val_sets=[{easy}]", "data.sampler=random", "optim.epochs=1", "ot.weight=0",
            "data.max_skip_fraction=0.2"]
    with pytest.raises(RecordIOError, match=r"record (3|10|11|40):"):
        run(tmp_path / "strict", cache, *data)

    trainer, results = run(tmp_path / "skip", cache, *data, "data.on_error=skip")
    dataset = trainer.dataset.dataset
    bad_indices = {int(i) for i in np.flatnonzero(np.isin(dataset.keys, bad_keys))}
    trainer.sampler.set_epoch(0)
    drawn = [i for batch in list(trainer.sampler)[: trainer.steps_per_epoch] for i in batch]
    expected = sorted(i for i in drawn if i in bad_indices)
    t = results["train"]
    assert expected and t["skipped_samples"] == len(expected)
    assert sorted(index for index, _ in t["bad_samples"]) == expected
    assert all("cannot decode image" in reason for _, reason in t["bad_samples"])
    assert t["images"] == len(drawn) - len(expected)  # the other images of those batches were trained on
    for i in range(len(dataset)):  # the wrapper keeps every good image with its own label
        item = trainer.dataset[i]
        assert isinstance(item, BadSample) == (i in bad_indices)
        if i not in bad_indices:
            assert item[1] == dataset.labels[i]


def test_trains_from_an_image_folder(tmp_path, cache):
    root, easy = _tiny_set(tmp_path, cache)
    records = RecordDataset(root)
    folder = tmp_path / "folder"
    for i, key in enumerate(records.keys):
        _, image = unpack_record(records.reader.read(int(key)))
        path = folder / f"id{records.labels[i]:03d}" / f"{key:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    trainer, results = run(tmp_path / "run", cache, f"data.root={folder}", f"data.val_sets=[{easy}]",
                           "optim.epochs=1")
    assert isinstance(trainer.dataset.dataset, ImageFolderDataset)
    np.testing.assert_array_equal(trainer.dataset.labels, records.labels)
    assert results["train"]["steps"] == trainer.steps_per_epoch > 0
    assert set(results["verification"]) == {"synth_easy"}


def test_truncated_training_file_is_an_error_or_its_lost_records_are_left_out(tmp_path, cache):
    root, easy = _tiny_set(tmp_path, cache)
    full = RecordDataset(root)
    cut = full.reader.offset(int(full.keys[-3])) + 30  # the last three images are lost
    (root / "train.rec").write_bytes((root / "train.rec").read_bytes()[:cut])
    data = [f"data.root={root}", f"data.val_sets=[{easy}]", "optim.epochs=1", "ot.weight=0"]
    with pytest.raises(RecordIOError, match="train"):
        run(tmp_path / "strict", cache, *data)
    with pytest.raises(RunError, match=r"3 of the 72 records of .* are unreadable, "
                                       r"more than data.max_skip_fraction=0.01"):
        run(tmp_path / "skip", cache, *data, "data.on_error=skip")
    trainer, results = run(tmp_path / "skip", cache, *data, "data.on_error=skip", "data.max_skip_fraction=0.05")
    t = results["train"]
    assert t["num_skipped_records"] == 3 and [k for k, _ in t["skipped_records"]] == full.keys[-3:].tolist()
    assert len(trainer.dataset) == len(full) - 3 and t["skipped_samples"] == 0 and t["steps"] > 0


def test_cpu_run_with_loader_workers_makes_network_inputs_in_the_workers(tmp_path, cache):
    trainer, results = run(tmp_path, cache, "optim.epochs=1", "ot.weight=0", "data.num_workers=1")
    assert trainer._worker_transform is not None
    images, _, _ = next(iter(trainer._loader()))
    assert images.dtype == torch.float32 and images.shape[-2:] == (32, 32) and images.abs().max() < 1.01
    assert results["train"]["steps"] == trainer.steps_per_epoch and results["train"]["final_loss"] > 0


def _always_nan(trainer, monkeypatch):
    forward = trainer._forward

    def nan(images, labels):
        loss, *rest = forward(images, labels)
        return (loss * float("nan"), *rest)

    monkeypatch.setattr(trainer, "_forward", nan)


def test_the_non_finite_counter_spans_epochs(tmp_path, cache, monkeypatch):
    """4 steps per epoch, max_bad_steps 6: the run must stop in its second epoch, naming the
    checkpoint of the first (whose weights are still the finite initial ones)."""
    cfg = load_config(None, TINY + [cache, "optim.epochs=5", "train.max_bad_steps=6"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.steps_per_epoch == 4
    _always_nan(trainer, monkeypatch)
    with pytest.raises(NonFiniteLossError, match=r"6 consecutive non-finite losses .* at epoch 1 step 0; .*"
                                                 r"last good checkpoint: .*last.pt \(step 0\)"):
        trainer.train()
    assert trainer.state.epoch == 1 and trainer.state.skipped_steps == 6


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, cache, monkeypatch):
    trainer = Trainer(load_config(None, TINY + [cache, "optim.epochs=1", "train.max_bad_steps=2"]), tmp_path)
    _always_nan(trainer, monkeypatch)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        trainer.train()
    assert not (tmp_path / "last.pt").exists()


def test_non_finite_weights_never_overwrite_a_good_checkpoint(tmp_path, cache, monkeypatch):
    trainer = Trainer(load_config(None, TINY + [cache, "optim.epochs=2"]), tmp_path)
    step = trainer.optimizer.step

    def step_then_diverge():
        step()
        if trainer.state.epoch == 1:
            with torch.no_grad():
                trainer.backbone.fc.weight.fill_(float("inf"))

    monkeypatch.setattr(trainer.optimizer, "step", step_then_diverge)
    with pytest.raises(NonFiniteWeightsError, match=r"became non-finite by step 5 .*backbone.fc.weight.*"
                                                    r"not saved; last good checkpoint: .*last.pt \(step 4\)"):
        trainer.train()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["train_state"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["backbone"].values() if t.is_floating_point())


def test_a_diverging_learning_rate_stops_with_one_line_and_keeps_no_bad_weights(tmp_path, cache):
    with pytest.raises(RunError) as err:
        run(tmp_path, cache, "optim.lr=1e6", "optim.epochs=6")
    assert "\n" not in str(err.value) and ("last good checkpoint" in str(err.value)
                                           or "no checkpoint was written" in str(err.value))
    if (tmp_path / "last.pt").exists():
        saved = torch.load(tmp_path / "last.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for part in ("backbone", "head") for t in saved[part].values()
                   if t.is_floating_point())


def test_skipping_more_than_the_allowed_fraction_is_an_error(tmp_path, cache):
    root, easy = _tiny_set(tmp_path, cache)
    _corrupt_images(root, range(1, 37))  # half of the 72 images
    data = [f"data.root={root}", f"data.val_sets=[{easy}]", "optim.epochs=1", "ot.weight=0", "data.on_error=skip"]
    with pytest.raises(RunError, match=r"\d+ unreadable training samples skipped, more than "
                                       r"data.max_skip_fraction=0.01 of \d+; first: .*record \d+: cannot decode"):
        run(tmp_path / "half", cache, *data)
    _corrupt_images(root, range(37, 73))
    with pytest.raises(RunError, match="trained no step in 1 epochs: every batch was unreadable"):
        run(tmp_path / "all", cache, *data, "data.max_skip_fraction=1")


def test_an_unreadable_sample_in_a_loader_worker_is_raised_cleanly_in_raise_mode(tmp_path, cache):
    root, easy = _tiny_set(tmp_path, cache)
    _corrupt_images(root, range(1, 73))
    with pytest.raises(RecordIOError) as err:
        run(tmp_path / "w", cache, f"data.root={root}", f"data.val_sets=[{easy}]", "data.num_workers=1",
            "optim.epochs=1")
    assert re.fullmatch(r".*train.rec: record \d+: cannot decode image \(.*\)", str(err.value))
    assert "Traceback" not in str(err.value) and "worker" not in str(err.value)
