"""Same config and seed, same run: twice uninterrupted (once with freed memory kept, once with
glibc's default allocator: otface.allocator), and once killed with kill -9 mid-epoch and resumed --
with the default random flips, loader worker and CPU threads."""

import json
import subprocess
import sys

import torch

from support.runs import allocator_env, finished, kill_at_step

ARGS = [
    "data.synthetic.num_identities=12", "data.synthetic.images_per_identity=12", "data.synthetic.num_pairs=40",
    "data.synthetic.workers=1", "model.params={width: 0.125}", "model.input_size=32", "model.embedding_size=32",
    "ot.iters=10", "optim.batch_size=16", "optim.lr=0.05", "optim.epochs=2", "optim.milestones=[1]",
    "train.progress=false", "train.log_interval=3", "train.checkpoint_steps=1",
]  # 9 steps per epoch; data.flip, data.num_workers and train.threads keep their defaults


def _train(out, cache, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "otface.cli", "train", "--out", str(out), *ARGS,
                             f"data.synthetic.cache_dir={cache}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _figures(out):
    results = json.loads((out / "results.json").read_text())
    history = [{k: v for k, v in row.items() if k != "images_per_second"} for row in results["train"]["history"]]
    weights = torch.load(out / "last.pt", weights_only=True)["backbone"]
    return results["train"]["final_loss"], history, results["verification"], weights


def test_same_seed_same_run_interrupted_or_not(tmp_path):
    cache = tmp_path / "cache"
    finished(_train(tmp_path / "a", cache, env=allocator_env("1")))  # also generates the data: the rest only train
    finished(_train(tmp_path / "b", cache, env=allocator_env("0")))
    killed = _train(tmp_path / "c", cache)
    kill_at_step(killed, tmp_path / "c" / "train.log", 3)
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["train_state"]
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 9  # killed mid-epoch
    finished(_train(tmp_path / "c", cache, "--resume"))

    a, b, c = (_figures(tmp_path / name) for name in "abc")
    for other in (b, c):
        assert other[0] == a[0] and other[1] == a[1] and other[2] == a[2]
        assert other[3].keys() == a[3].keys() and all(torch.equal(other[3][k], a[3][k]) for k in a[3])
    assert len(a[1]) == 6 and a[0] > 0
