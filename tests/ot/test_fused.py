"""fused_cosine_sinkhorn against the reference cosine_sinkhorn (envelope gradient), and its memory."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from otface.ot import cosine_cost, cosine_sinkhorn, fused
from otface.ot.fused import DEFAULT_BLOCK, fused_cosine_sinkhorn
from otface.ot.sinkhorn import KERNEL_MAX_RANGE

# torch's eager flex_attention warns once that it is unfused; that is documented in otface.ot.fused
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def flex_unusable() -> str | None:
    """Why the flex backend cannot run here, or None."""
    if fused.flex_attention is None:
        return f"torch {torch.__version__} has no flex_attention with return_aux (torch >= 2.9)"
    if not torch._dynamo.is_dynamo_supported():
        return "eager flex_attention runs through Dynamo, which this Python does not support"
    return None


@pytest.fixture(params=["blockwise", "flex"])
def backend(request):
    if request.param == "flex" and (reason := flex_unusable()):
        pytest.skip(reason)
    return request.param


def clouds(batch, n, m, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g, dtype=dtype)
    y = torch.randn(batch, m, d, generator=g, dtype=dtype)
    return x.requires_grad_(), y.requires_grad_()


def value_and_grads(fn, x, y, weights):
    """(P,) values and the gradients of sum_p weights_p value_p to x and y."""
    value = fn(x, y)
    return value.detach(), *torch.autograd.grad((value * weights).sum(), (x, y))


def assert_rel(got, want, rtol):
    """max |got - want| <= rtol max |want|: relative to the largest entry, as gradient entries near
    zero have no meaningful relative error of their own."""
    assert got.dtype == want.dtype and got.shape == want.shape
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


CASES = {  # batch, n, m, d, eps, iters, block
    "n!=m, block divides neither": (1, 49, 36, 8, 0.05, 50, 10),
    "odd sizes, batch of 3": (3, 13, 7, 5, 0.05, 50, 4),
    "small eps (log domain)": (3, 13, 7, 5, 0.01, 50, 3),
    "small eps, one block": (2, 49, 36, 8, 0.01, 50, DEFAULT_BLOCK),
    "one iteration": (2, 9, 11, 6, 0.1, 1, 5),
    "few points (with tol: Newton steps)": (4, 8, 8, 8, 0.05, 50, 3),  # 30 iterations with them, > 400 without
}


SCHEDULES = {  # tol, omega, iterations (None: the case's), float32 rtol: the plain fixed iterations, and
    # the over-relaxed stop on the value's accuracy. Over-relaxation amplifies float32 rounding: at
    # eps = 0.01 each float32 solver is within ~5e-6 of float64 (flex ~1e-5), so the two within ~2e-5
    "plain": (None, 1.0, None, 1e-5),
    "relaxed, tol": (1e-4, 1.6, 400, 3e-5),
}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference_values_and_gradients(case, dtype, rtol, schedule, backend):
    batch, n, m, d, eps, iters, block = case
    tol, omega, iters = schedule[0], schedule[1], schedule[2] or iters
    rtol = schedule[3] if dtype == torch.float32 else rtol
    x, y = clouds(batch, n, m, d, seed=n * m, dtype=dtype)
    weights = torch.linspace(-1.0, 2.0, batch, dtype=dtype)  # checks the scaling by grad_value
    want = value_and_grads(lambda a, b: cosine_sinkhorn(a, b, eps, iters, tol, omega=omega), x, y, weights)
    got = value_and_grads(lambda a, b: fused_cosine_sinkhorn(a, b, eps, iters, tol, omega, block=block,
                                                             backend=backend), x, y, weights)
    for g, w in zip(got, want):
        assert_rel(g, w, rtol)
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=0)  # each value on its own


def test_small_eps_case_is_in_the_reference_log_domain():
    # the reference iterates in the kernel domain only if every cost range is <= KERNEL_MAX_RANGE eps
    batch, n, m, d, eps, _, _ = CASES["small eps (log domain)"]
    cost = cosine_cost(*clouds(batch, n, m, d, seed=n * m))
    assert (cost.amax((1, 2)) - cost.amin((1, 2))).max() > KERNEL_MAX_RANGE * eps


def test_auto_is_blockwise_on_cpu():
    x, y = clouds(2, 6, 5, 4)
    assert torch.equal(fused_cosine_sinkhorn(x, y, block=2), fused_cosine_sinkhorn(x, y, block=2, backend="blockwise"))


def test_dtypes_and_no_grad(backend):
    x, y = clouds(2, 5, 4, 3, dtype=torch.float64)
    value = fused_cosine_sinkhorn(x, y.float(), backend=backend)
    assert value.dtype == torch.float64
    g_x, g_y = torch.autograd.grad(value.sum(), (x, y))
    assert g_x.dtype == torch.float64 and g_y.dtype == torch.float64
    with torch.no_grad():
        assert not fused_cosine_sinkhorn(x, y, backend=backend).requires_grad


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage, in elements, of any tensor an aten op returns. A dispatch mode
    sees every op, those the autograd engine runs for the backward pass included (a
    TorchFunctionMode does not); storage sizes ignore views such as a broadcast expand."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.untyped_storage().nbytes() // t.element_size())
        return out


def test_blockwise_never_allocates_an_n_by_m_tensor():
    """No tensor allocated by the blockwise forward or backward, temporaries included, holds n * m
    elements per problem: only (P, n, block) tiles and the (P, n, d) clouds; nor does any tensor
    autograd saves (the pack hook). The same recorder does see the reference's (P, n, m) cost,
    so the check is not vacuous."""
    batch, n, m, d, block = 2, 64, 64, 8, 4
    x, y = clouds(batch, n, m, d)
    saved = []
    pack = lambda t: saved.append(t.numel()) or t  # noqa: E731  records, keeps the tensor
    with LargestAllocation() as largest, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused_cosine_sinkhorn(x, y, 0.05, 3, block=block, backend="blockwise").sum().backward()
    assert saved and max(saved) <= batch * max(n, m) * d
    assert largest.numel <= batch * max(n, m) * max(block, d) < batch * n * m
    with LargestAllocation() as largest:
        cosine_sinkhorn(x, y, 0.05, 3).sum().backward()
    assert largest.numel >= batch * n * m


def test_argument_errors():
    x, y = clouds(1, 3, 4, 2)
    with pytest.raises(ValueError, match="backend"):
        fused_cosine_sinkhorn(x, y, backend="triton")
    for block in (0, 2.0, True):
        with pytest.raises(ValueError, match="block"):
            fused_cosine_sinkhorn(x, y, block=block)
    with pytest.raises(ValueError, match="eps"):
        fused_cosine_sinkhorn(x, y, eps=math.inf)
    with pytest.raises(ValueError, match=r"\(P, n, d\)"):
        fused_cosine_sinkhorn(x, y[:, :, :1])
    with pytest.raises(ValueError, match="n, m >= 1"):
        fused_cosine_sinkhorn(x, y[:, :0])
