"""Fixtures of the OT tests."""

import importlib
import math

import pytest

sinkhorn_module = importlib.import_module("otface.ot.sinkhorn")  # the package attribute is the function


@pytest.fixture(params=["kernel", "log"])
def domain(request, monkeypatch):
    """Run a test with the kernel-domain iterations forced (whenever the result is finite) and
    with the log-domain iterations forced."""
    monkeypatch.setattr(sinkhorn_module, "KERNEL_MAX_RANGE", math.inf if request.param == "kernel" else -1.0)
    return request.param


@pytest.fixture
def no_newton(monkeypatch):
    """Sinkhorn iterations only: no problem is ever old enough for a Newton step."""
    monkeypatch.setattr(importlib.import_module("otface.ot.schedule"), "NEWTON_AFTER", math.inf)
