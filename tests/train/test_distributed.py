"""Training on several gloo processes on this CPU against one process: the DDP step, the fp16
gradient scaler, and torchrun runs killed with kill -9 and resumed on another number of processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from otface.cli import main
from otface.config import load_config
from otface.errors import ConfigError
from otface.heads.partial_fc import PartialFC
from otface.train.distributed import init_distributed, training_device
from otface.train.schedule import lr_factor
from otface.train.trainer import Trainer
from support.runs import TINY, finished, kill_at_step

# BN-free in effect (the backbone is stepped in eval mode: batch norm from its running statistics),
# so the global batch, not its split, fixes the step; the center loss and clipping are global too
STEP_ARGS = ["ot.weight=0", "data.sampler=random", "optim.batch_size=12", "optim.grad_accum=2",
             "losses.center={weight: 0.01}", "optim.grad_clip=0.5"]
STEPS = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stepped(trainer):
    """STEPS optimiser steps of ``trainer`` on the first batches of epoch 0, the backbone in eval mode."""
    trainer.backbone.eval()
    trainer.head.train()
    trainer.aux_losses.train()
    results, group = [], []
    for position, (images, labels, bad) in enumerate(trainer._loader()):
        group.append(trainer._micro_batch(images, labels, bad, position))
        if len(group) == trainer.cfg.optim.grad_accum:
            results.append(trainer.step(group))
            group = []
        if len(results) == STEPS:
            break
    head = trainer.head.full_state_dict() if isinstance(trainer.head, PartialFC) else trainer.head.state_dict()
    return {"results": results, "backbone": trainer.backbone.state_dict(), "head": head,
            "losses": trainer.aux_losses.state_dict()}


def _step_worker(rank, world_size, port, out, overrides):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    procs = init_distributed(torch.device("cpu"))
    got = stepped(Trainer(load_config(None, overrides), f"{out}/run", procs))
    if rank == 0:
        torch.save(got, f"{out}/stepped.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_ddp_step_equals_the_one_process_step_on_the_global_batch(tmp_path, cache, world_size):
    overrides = TINY + [cache, *STEP_ARGS]
    one = stepped(Trainer(load_config(None, overrides), tmp_path / "one"))
    torch.multiprocessing.start_processes(_step_worker, args=(world_size, free_port(), str(tmp_path), overrides),
                                          nprocs=world_size, start_method="fork")
    many = torch.load(tmp_path / "stepped.pt", weights_only=False)
    for a, b in zip(many["results"], one["results"]):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.terms == pytest.approx(b.terms, rel=1e-5) and a.images == b.images == 24
    for part in ("backbone", "head", "losses"):
        assert many[part].keys() == one[part].keys()
        for name, value in one[part].items():
            torch.testing.assert_close(many[part][name], value, rtol=1e-4, atol=2e-6, msg=f"{part}.{name}")
    initial = Trainer(load_config(None, overrides), tmp_path / "initial").backbone.state_dict()
    assert not torch.equal(initial["fc.weight"], one["backbone"]["fc.weight"])  # the steps did train


def test_the_fp16_scaler_skips_and_counts_an_overflow_step(tmp_path, cache):
    trainer = Trainer(load_config(None, TINY + [cache, "train.amp=fp16", "ot.weight=0"]), tmp_path)
    trainer.scaler.load_state_dict(trainer.scaler.state_dict() | {"scale": 1.0})  # no overflow of its own
    images, labels, bad = next(iter(trainer._loader()))
    batch = [trainer._micro_batch(images, labels, bad, 0)]
    forward = trainer._forward
    trainer._forward = lambda x, y: (lambda loss, *rest: (loss * 1e35, *rest))(*forward(x, y))
    before = {k: v.detach().clone() for k, v in trainer.backbone.named_parameters()}
    result = trainer.step(batch)
    assert result.overflow and trainer.scaler.get_scale() == 0.5
    trainer._count(result)
    assert trainer.state.overflow_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.backbone.named_parameters())  # skipped
    trainer._forward = forward
    result = trainer.step(batch)
    assert not result.overflow and trainer.scaler.get_scale() == 0.5
    assert not torch.equal(before["fc.weight"], trainer.backbone.fc.weight)


def _overflow_worker(rank, world_size, port, out, overrides):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    trainer = Trainer(load_config(None, overrides), f"{out}/run", init_distributed(torch.device("cpu")))
    trainer.scaler.load_state_dict(trainer.scaler.state_dict() | {"scale": 1.0})  # no overflow of its own
    if rank == 1:  # an overflow in this process's class rows only
        trainer.full_head.weight.register_hook(lambda grad: grad * float("inf"))
    images, labels, bad = next(iter(trainer._loader()))
    before = trainer.backbone.fc.weight.detach().clone()
    result = trainer.step([trainer._micro_batch(images, labels, bad, 0)])
    torch.save({"overflow": result.overflow, "stepped": not torch.equal(before, trainer.backbone.fc.weight),
                "scale": trainer.scaler.get_scale()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_an_overflow_in_one_process_skips_the_step_in_all(tmp_path, cache):
    overrides = TINY + [cache, "train.amp=fp16", "ot.weight=0"]
    torch.multiprocessing.start_processes(_overflow_worker, args=(2, free_port(), str(tmp_path), overrides),
                                          nprocs=2, start_method="fork")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == {"overflow": True, "stepped": False, "scale": 0.5}


def test_results_report_amp_the_loss_scale_and_overflow_steps(tmp_path, cache):
    results = Trainer(load_config(None, TINY + [cache, "train.amp=fp16", "optim.epochs=1"]), tmp_path).train()
    t = results["train"]
    assert t["amp"] == "fp16" and t["loss_scale"] == 2.0 ** 16 / 2 ** t["overflow_steps"]
    assert t["world_size"] == 1


# --------------------------------------------------------------------------------------------- torchrun
RUN_ARGS = [*TINY, "data.sampler=random", "optim.batch_size=12", "optim.epochs=8", "optim.milestones=[5]",
            "optim.warmup_epochs=1", "train.checkpoint_steps=4"]  # 6 steps per epoch
STEPS_PER_EPOCH, EPOCHS = 6, 8


def _train(out, cache, processes, *extra, resume=False):
    """``otface train`` on ``processes`` processes (torchrun for more than one), in its own session."""
    launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [])
    return subprocess.Popen([sys.executable, *launcher, "-m", "otface", "train", "--out", str(out),
                             *["--resume"] * resume, *RUN_ARGS, cache, *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _check_schedule(out, processes):
    """Every optimiser step once, in order, at the learning rate the schedule gives it."""
    t = json.loads((out / "results.json").read_text())["train"]
    assert t["steps"] == STEPS_PER_EPOCH * EPOCHS and t["epochs"] == EPOCHS and t["world_size"] == processes[-1]
    assert [row["step"] for row in t["history"]] == list(range(1, t["steps"] + 1))
    cfg = load_config(None, RUN_ARGS)
    o = cfg.optim
    for row in t["history"]:  # a row is logged after its step, at the learning rate of the next one
        assert row["lr"] == pytest.approx(o.lr * lr_factor(row["step"], STEPS_PER_EPOCH, o.milestones, o.gamma,
                                                           o.warmup_epochs))
    assert t["images"] == t["steps"] * o.batch_size
    assert [r["world_size"] for r in t["resumes"]] == [list(pair) for pair in zip(processes, processes[1:])]


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_killed_and_resumed_on_another_number_of_processes(tmp_path, cache, first, then):
    out = tmp_path / "run"
    kill_at_step(_train(out, cache, first), out / "train.log", 5)
    state = torch.load(out / "last.pt", weights_only=True)["train_state"]
    assert 0 < state["step"] < STEPS_PER_EPOCH * EPOCHS and state["world_size"] == first
    finished(_train(out, cache, then, resume=True))
    _check_schedule(out, [first, then])


def test_resumed_from_two_processes_on_three(tmp_path, cache):
    out = tmp_path / "run"
    finished(_train(out, cache, 2, "optim.epochs=3"))
    finished(_train(out, cache, 3, f"optim.epochs={EPOCHS}", resume=True))
    _check_schedule(out, [2, 3])


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("env, setting, message", [
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "cuda:1", "each process trains on its LOCAL_RANK GPU"),
    ({"WORLD_SIZE": "two"}, "cpu", "WORLD_SIZE='two' is not a number of processes"),
])
def test_launch_settings_that_cannot_work_are_config_errors(monkeypatch, env, setting, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        training_device(setting)


def test_an_old_or_mismatched_checkpoint_is_refused_in_one_line(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, cache, "optim.epochs=1", "ot.weight=0"]) == 0
    good = torch.load(out / "last.pt", weights_only=True)
    for change, message in [
        (lambda c: c.pop("format"), "a checkpoint of format 1; this version of otface resumes format 2"),
        (lambda c: c["optimizer"]["state"].update({"backbone.nothing": {}}), "state for parameters this run does not"),
        (lambda c: c["head"].update(weight=c["head"]["weight"][:5]), "its head does not fit this run's"),
    ]:
        bad = dict(good, optimizer={**good["optimizer"], "state": dict(good["optimizer"]["state"])},
                   head=dict(good["head"]))
        change(bad)
        torch.save(bad, out / "last.pt")
        capsys.readouterr()
        assert main(["train", "--resume", "--out", str(out), "optim.epochs=2"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("otface: error") == 1 and "Traceback" not in err, err
