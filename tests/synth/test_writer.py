import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from otface.config import SynthSection
from otface.data.formats.binset import read_bin
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import read_property
from otface.synth import writer
from otface.synth.writer import generate_synthetic, protocol_pair, train_identity, write_preview

SMALL = dict(num_identities=5, images_per_identity=3, num_pairs=20)
DATA_FILES = ("train.rec", "train.idx", "property", "synth_easy.bin", "synth_hard.bin")


def _files(root):
    return {name: (root / name).read_bytes() for name in DATA_FILES}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = generate_synthetic(root, SynthSection(seed=3, workers=1, **SMALL), progress=False)
    return root, paths


def _gray(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32)


def test_layout_and_formats(small_set):
    root, paths = small_set
    assert {k: p.name for k, p in paths.items() if k != "root"} == {
        "train_rec": "train.rec", "train_idx": "train.idx", "property": "property",
        "easy": "synth_easy.bin", "hard": "synth_hard.bin", "meta": "meta.json"}
    assert read_property(root) == (5, 112, 112)
    ds = RecordDataset(root)
    assert len(ds) == 15 and ds.labels.tolist() == [i // 3 for i in range(15)]
    x, _ = ds[4]
    assert x.shape == (3, 112, 112) and x.dtype == torch.uint8 and x.min() < x.max()
    meta = json.loads(paths["meta"].read_text())
    assert meta["format_version"] == writer.FORMAT_VERSION
    assert meta["config"] == {"seed": 3, "image_size": 112, **SMALL}
    assert sorted(p.name for p in root.iterdir()) == sorted([*DATA_FILES, "meta.json"])  # no temporaries


def test_pairs_alternate_and_every_fold_is_balanced(small_set):
    _, paths = small_set
    for level in ("easy", "hard"):
        images, issame = read_bin(paths[level])
        assert len(images) == 40 and len(issame) == 20
        folds = issame.reshape(10, 2)
        assert (folds.sum(1) == 1).all()
        assert all(_gray(b).shape == (112, 112) for b in images)


def test_same_seed_same_bytes_for_any_worker_count(small_set, tmp_path):
    root, _ = small_set
    again = generate_synthetic(tmp_path / "w2", SynthSection(seed=3, workers=2, **SMALL), progress=False)
    assert _files(again["root"]) == _files(root)
    other = generate_synthetic(tmp_path / "s4", SynthSection(seed=4, workers=1, **SMALL), progress=False)
    assert _files(other["root"])["train.rec"] != _files(root)["train.rec"]


def test_cache_is_reused_and_invalidated(tmp_path):
    cfg = SynthSection(seed=1, workers=1, **SMALL)
    paths = generate_synthetic(tmp_path, cfg, progress=False)
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in DATA_FILES}
    generate_synthetic(tmp_path, SynthSection(seed=1, workers=2, **SMALL), progress=False)  # workers do not matter
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in DATA_FILES} == stamps
    # a truncated file is not taken for complete
    rec = paths["train_rec"]
    rec.write_bytes(rec.read_bytes()[:-100])
    generate_synthetic(tmp_path, cfg, progress=False)
    assert (tmp_path / "train.rec").stat().st_mtime_ns != stamps["train.rec"]
    # a meta.json that is JSON but not a mapping, or whose sizes are not one, is not a cache
    stamp = (tmp_path / "train.rec").stat().st_mtime_ns
    for damaged in ("[1, 2]", json.dumps({**json.loads(paths["meta"].read_text()), "sizes": []})):
        paths["meta"].write_text(damaged)
        generate_synthetic(tmp_path, cfg, progress=False)
        assert (tmp_path / "train.rec").stat().st_mtime_ns != stamp
        stamp = (tmp_path / "train.rec").stat().st_mtime_ns
    # another config regenerates
    generate_synthetic(tmp_path, SynthSection(seed=1, workers=1, **{**SMALL, "num_identities": 4}), progress=False)
    assert read_property(tmp_path)[0] == 4


def test_interrupted_generation_leaves_no_complete_looking_set(tmp_path, monkeypatch):
    cfg = SynthSection(seed=2, workers=1, **SMALL)
    generate_synthetic(tmp_path, cfg, progress=False)
    new = SynthSection(seed=5, workers=1, **SMALL)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_bin", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, new, progress=False)
    assert not (tmp_path / "meta.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    generate_synthetic(tmp_path, new, progress=False)
    assert json.loads((tmp_path / "meta.json").read_text())["config"]["seed"] == 5


def test_protocol_identities_are_disjoint_from_training():
    train = np.stack([train_identity(0, i).genes for i in range(200)])
    for level in ("easy", "hard"):
        for k in range(40):
            a, b, *_ = protocol_pair(0, level, k)
            for ident in (a, b):
                assert np.linalg.norm(train - ident.genes, axis=1).min() > 0.3


def test_hard_pairs_turn_to_opposite_sides_and_impostors_are_other_people():
    yaws = {"easy": [], "hard": []}
    for level in yaws:
        for k in range(60):
            a, b, na, nb, same = protocol_pair(0, level, k)
            assert (a is b) == same
            if not same:
                assert np.linalg.norm(a.genes - b.genes) > 0.5
            yaws[level] += [abs(na.yaw), abs(nb.yaw)]
            if level == "hard":
                assert na.yaw * nb.yaw <= 0
    assert max(yaws["easy"]) <= 18 and np.median(yaws["hard"]) > 35


def test_preview_grid(tmp_path):
    out = tmp_path / "p.png"
    write_preview(out, SynthSection(workers=1), n_ids=2, per_id=3, level="hard")
    assert Image.open(out).size == (3 * 114 - 2, 2 * 114 - 2)
