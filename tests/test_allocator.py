"""otface.allocator: with freed memory kept, a large tensor allocated, touched and freed again and
again costs (almost) no new page faults, where glibc's default costs one per page each time
(counted by the kernel: getrusage's minor faults); OTFACE_KEEP_FREED_MEMORY=0 and the user's own
glibc settings leave glibc as it is."""

import json
import platform
import subprocess
import sys

import pytest

import otface.cli
from otface import allocator
from otface.errors import ConfigError
from support.runs import allocator_env

PROBE = """
import json, resource, sys
import torch
from otface.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a training step's large temporaries, in miniature: allocated, written, freed
    x = torch.empty(16 << 20)  # 64 MiB of float32
    x.fill_(1.0)
    y = torch.empty(4 << 20)
    y.fill_(1.0)
    del x, y
for _ in range(10):  # to the steady state
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str, switch: str = "1") -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=allocator_env(switch), capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc")
def test_kept_memory_is_reused_without_page_faults():
    default, kept, switched_off = probe("default"), probe("keep"), probe("keep", switch="0")
    assert kept["applied"] is True and switched_off["applied"] is False
    # One fault per page of x: once a 16 MiB y has been freed, glibc's dynamic mmap threshold serves
    # the next from the heap, so x alone faults: 16384 per step in 4 KiB pages, 32 in 2 MiB huge
    # pages (transparent huge pages always on). At least one per 4 MiB of x over the 10 steps:
    assert default["faults"] >= 10 * 64 // 4
    assert kept["faults"] <= default["faults"] / 100
    assert switched_off["faults"] >= default["faults"] / 2


@pytest.mark.parametrize("name, value", [("MALLOC_TRIM_THRESHOLD_", "131072"), ("MALLOC_MMAP_MAX_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536"),
                                         ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")])
def test_the_users_own_malloc_settings_stand(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    assert allocator.retain_freed_memory() is False


def test_unrelated_tunables_do_not_count_as_malloc_settings():
    assert not allocator.users_malloc({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "LD_PRELOAD": "libfoo.so"})


def test_the_switch_must_be_0_or_1(monkeypatch, capsys):
    monkeypatch.setenv(allocator.SWITCH, "yes")
    with pytest.raises(ConfigError, match="OTFACE_KEEP_FREED_MEMORY must be 0 or 1, got 'yes'"):
        allocator.retain_freed_memory()
    assert otface.cli.main(["configs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OTFACE_KEEP_FREED_MEMORY must be 0 or 1" in err and "Traceback" not in err


def test_off_linux_nothing_is_done(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False


def test_otface_commands_keep_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(otface.cli, "retain_freed_memory", lambda: calls.append(1) or True)
    assert otface.cli.main(["configs"]) == 0
    assert calls == [1]
