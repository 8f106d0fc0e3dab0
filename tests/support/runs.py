"""The tiny training run of the trainer tests (seconds on one core), and running it in subprocesses."""

import os
import signal
import subprocess
import time
from pathlib import Path

from otface import allocator

TINY = [
    "data.synthetic.num_identities=12",
    "data.synthetic.images_per_identity=6",
    "data.synthetic.num_pairs=40",
    "data.synthetic.workers=1",
    "data.num_workers=0",
    "model.backbone=iresnet18",
    "model.params={width: 0.125}",
    "model.input_size=32",
    "model.embedding_size=32",
    "ot.stage=layer2",
    "ot.iters=10",
    "optim.batch_size=16",
    "optim.lr=0.05",
    "train.progress=false",
    "train.log_interval=1",
    "train.threads=1",
]


def allocator_env(switch: str) -> dict[str, str]:
    """This process's environment with OTFACE_KEEP_FREED_MEMORY = ``switch`` and none of the
    variables by which a user chooses the allocator (otface.allocator.users_malloc)."""
    kept = {k: v for k, v in os.environ.items() if not allocator.users_malloc({k: v})}
    return {**kept, allocator.SWITCH: switch}


def finished(proc: subprocess.Popen) -> None:
    """Wait for a training subprocess; it must succeed (its stderr tail is the failure message)."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def kill_at_step(proc: subprocess.Popen, log: Path, step: int) -> None:
    """kill -9 ``proc`` -- and every process of its session, if it leads one (torchrun's
    workers) -- as soon as its log shows optimiser step ``step``."""
    deadline = time.monotonic() + 300
    while f" step {step} |" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    if os.getsid(proc.pid) == proc.pid:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
