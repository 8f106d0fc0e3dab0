"""Fused cosine Sinkhorn: the (P, n, m) cost and plan are never stored (papers/otface.txt Eq. 5-8).

Same problem and iterates as :func:`otface.ot.sinkhorn.cosine_sinkhorn` (envelope gradient):
clouds x (P, n, d), y (P, m, d), unit rows x^ = x/|x|, y^ = y/|y|, s_ij = x^_i . y^_j, cost
C_ij = 1 - s_ij, uniform marginals a = 1/n, b = 1/m, potentials divided by eps, f^0 = 0 (u^0 = 1)::

    g_j = log b_j - LSE_i(f_i - C_ij / eps)      # v = b / K^T u     (Eq. 8)
    f_i = log a_i - LSE_j(g_j - C_ij / eps)      # u = a / K v       (Eq. 8)
    P_ij = exp(f_i + g_j - C_ij / eps)           # P = diag(u) K diag(v)  (Eq. 7)

Each half iteration is the log-sum-exp of an attention row: scores s_ij, mapped to
(s_ij - 1) / eps = -C_ij / eps, plus a per-key bias (g for the f update, f for the g update).
(The shift to h = g - 1/eps and scores s / eps would be plainer attention, but rounding
s / eps ~ 1/eps costs ~5x the float32 accuracy of -C / eps, which is small where P is large.)

Backends (``backend``):

- ``"blockwise"``: plain torch; each LSE runs online over blocks of ``block`` keys (a running max
  and a rescaled running sum), so a half iteration holds one (P, queries, block) tile. The value
  <P, C> and the backward recompute P tile by tile from the final f, g. Extra memory
  O(P max(n, m) block) beside O(P (n + m) d); this is the reference of the fused math.
- ``"flex"``: ``torch.nn.attention.flex_attention`` with batch P, one head, q = x^, k = y^,
  scale 1, ``score_mod`` = bias[b, kv_idx] + (score - 1) / eps (1/eps a captured 0-d tensor, so a
  new eps is no recompilation), and the LSE from ``return_aux=AuxRequest(lse=True)`` (the value
  tensor is a zero dummy). Its attention output gives the plan products: with L_i the row LSE,
  P_ij = exp(f_i + L_i) softmax_j(g_j - C_ij/eps), so P y^ = exp(f + L) * attn(x^, y^, y^).
  On CUDA it runs under ``torch.compile`` (Inductor's fused Triton kernel: scores stay on chip;
  not run in this project's tests, which have no GPU). Elsewhere it runs eagerly, and torch's
  eager flex_attention (``math_attention``)
  *materialises* the (P, 1, n, m) scores and their softmax: correct, not memory-saving, and
  ~1 s of Dynamo tracing on first use. The compiled kernel needs head widths >= 16, so q, k and v
  are zero-padded to FLEX_MIN_WIDTH (dot products unchanged).
- ``"auto"``: ``"flex"`` for float32 on CUDA, ``"blockwise"`` otherwise.

Gradient (envelope, as the reference): P is held fixed, d value / dC = P, so d value / dx^ = -P y^
and d value / dy^ = -P^T x^, then through the normalisation x^ = x / sqrt(|x|^2 + NORM_EPS^2).
Only x^, y^, their inverse norms and f, g are kept for the backward pass: O(P (n + m) d).

Accuracy: the potentials are O(1/eps), so float32 rounding of f_i + g_j - C_ij/eps costs up to
~1e-7/eps relative in the plan entries, for this solver as for the reference: against float64,
both give values to ~1e-7 and gradients to ~5e-6 (of their largest entry) at eps = 0.01, so
the two float32 solvers agree to ~1e-5 there (~1e-6 at eps = 0.05). Flex is a little less
exact, its LSE L = O(1/eps) coming back through base 2 (one more rounding); float64: ~1e-14.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from otface.normalize import inverse_norm
from otface.ot.schedule import Steps, iterate, log_balance, log_gap, log_relax, log_shift
from otface.ot.sinkhorn import check_clouds, check_solver_args

try:  # torch >= 2.9: flex_attention with return_aux
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention
except ImportError:  # older torch: the blockwise backend only
    AuxRequest = flex_attention = None

BACKENDS = ("auto", "flex", "blockwise")
DEFAULT_BLOCK = 1024  # keys per tile of the blockwise backend
FLEX_MIN_WIDTH = 16  # the compiled flex_attention kernel needs query/key/value widths >= 16


class _Ops(NamedTuple):
    """One backend's three kernels, all on unit clouds xn (P, n, d), yn (P, m, d), and 1/eps.

    lse(q, k, bias, inv_eps) -> (P, L): LSE_j(bias_j - (1 - q_i . k_j) / eps), q (P, L, d),
    k (P, S, d), bias (P, S). value(xn, yn, f, g, inv_eps) -> (P,): <P, C>.
    products(xn, yn, f, g, inv_eps) -> (P yn (P, n, d), P^T xn (P, m, d)).
    """

    lse: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    value: Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]
    products: Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]


# ------------------------------------------------------------------------------ blockwise
def _cost_tile(q: Tensor, kb: Tensor) -> Tensor:
    """C = 1 - q kb^T for unit rows q (P, L, d), kb (P, blk, d): (P, L, blk), as cost.unit_cosine_cost."""
    return torch.baddbmm(q.new_ones(()), q, kb.transpose(1, 2), alpha=-1.0)


def _block_lse(q: Tensor, k: Tensor, bias: Tensor, inv_eps: float, block: int) -> Tensor:
    """LSE_j(bias_j - C_ij / eps) online over key blocks, C = 1 - q k^T: q (P, L, d), k (P, S, d),
    bias (P, S) -> (P, L), holding one (P, L, block) tile."""
    top = q.new_full(q.shape[:2], -math.inf)  # running max over the keys seen
    total = q.new_zeros(q.shape[:2])  # running sum of exp(score - top)
    for start in range(0, k.shape[1], block):
        score = _cost_tile(q, k[:, start:start + block]).mul_(-inv_eps).add_(bias[:, None, start:start + block])
        new_top = torch.maximum(top, score.amax(2))
        total = total * (top - new_top).exp() + score.sub_(new_top[:, :, None]).exp_().sum(2)  # rescale to new max
        top = new_top
    return top + total.log()


def _plan_tile(xn: Tensor, yb: Tensor, f: Tensor, gb: Tensor, inv_eps: float) -> tuple[Tensor, Tensor]:
    """Plan columns of a key block, P_ij = exp(f_i + g_j - C_ij / eps) (Eq. 7), and their cost C.

    xn (P, n, d), yb (P, blk, d), f (P, n), gb (P, blk) -> both (P, n, blk).
    """
    cost = _cost_tile(xn, yb)
    plan = torch.sub(f[:, :, None], cost, alpha=inv_eps).add_(gb[:, None, :]).exp_()
    return plan, cost


def _block_value(xn: Tensor, yn: Tensor, f: Tensor, g: Tensor, inv_eps: float, block: int) -> Tensor:
    """<P, C> = sum_ij P_ij C_ij, tile by tile over blocks of yn: (P,)."""
    value = xn.new_zeros(xn.shape[0])
    for start in range(0, yn.shape[1], block):
        plan, cost = _plan_tile(xn, yn[:, start:start + block], f, g[:, start:start + block], inv_eps)
        value = value + plan.mul_(cost).sum((1, 2))
    return value


def _block_products(xn: Tensor, yn: Tensor, f: Tensor, g: Tensor, inv_eps: float, block: int) -> tuple[Tensor, Tensor]:
    """P yn (P, n, d) and P^T xn (P, m, d), recomputing P tile by tile over blocks of yn."""
    rows = torch.zeros_like(xn)
    cols = []
    for start in range(0, yn.shape[1], block):
        yb = yn[:, start:start + block]
        plan, _ = _plan_tile(xn, yb, f, g[:, start:start + block], inv_eps)
        rows.baddbmm_(plan, yb)
        cols.append(torch.bmm(plan.transpose(1, 2), xn))
    return rows, torch.cat(cols, 1)


# ----------------------------------------------------------------------------------- flex
@functools.cache
def _compiled_flex() -> Callable[..., tuple[Tensor, object]]:
    """flex_attention compiled by Inductor (fused kernel), built on first use."""
    return torch.compile(flex_attention)


def _pad_width(t: Tensor, width: int) -> Tensor:
    """t (P, L, e) zero-padded on the last axis to at least ``width``, as (P, 1, L, max(e, width))."""
    return torch.nn.functional.pad(t, (0, max(0, width - t.shape[2])))[:, None]


def _flex_attend(q: Tensor, k: Tensor, bias: Tensor, v: Tensor, inv_eps: float) -> tuple[Tensor, Tensor]:
    """Rows softmax_j(bias_j - C_ij / eps), C = 1 - q k^T, applied to v, and their LSE, by flex_attention.

    q (P, L, d), k (P, S, d), bias (P, S), v (P, S, e) -> out (P, L, e), lse (P, L).
    """
    inv_eps_t = q.new_tensor(inv_eps)  # a captured buffer, not a constant to specialise on

    def score_mod(score: Tensor, b: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return bias[b, kv_idx] + (score - 1.0) * inv_eps_t  # g_j - C_ij / eps

    attend = _compiled_flex() if q.device.type == "cuda" else flex_attention
    out, aux = attend(_pad_width(q, FLEX_MIN_WIDTH), _pad_width(k, FLEX_MIN_WIDTH), _pad_width(v, FLEX_MIN_WIDTH),
                      score_mod=score_mod, scale=1.0, return_aux=AuxRequest(lse=True))
    return out[:, 0, :, :v.shape[2]], aux.lse[:, 0]


def _flex_lse(q: Tensor, k: Tensor, bias: Tensor, inv_eps: float) -> Tensor:
    """LSE_j(bias_j - C_ij / eps): (P, L), with a zero dummy value."""
    return _flex_attend(q, k, bias, k.new_zeros(k.shape[0], k.shape[1], 1), inv_eps)[1]


def _flex_value(xn: Tensor, yn: Tensor, f: Tensor, g: Tensor, inv_eps: float) -> Tensor:
    """<P, C> = sum_i (P 1)_i - xn_i . (P yn)_i (C = 1 - s), from one attention pass: (P,)."""
    out, lse = _flex_attend(xn, yn, g, yn, inv_eps)
    return ((f + lse).exp() * (1.0 - (xn * out).sum(2))).sum(1)  # P 1 = exp(f + L), softmax rows sum to 1


def _flex_products(xn: Tensor, yn: Tensor, f: Tensor, g: Tensor, inv_eps: float) -> tuple[Tensor, Tensor]:
    """P yn (P, n, d) and P^T xn (P, m, d) from two attention passes, P = diag(exp(f + L)) softmax."""
    out, lse = _flex_attend(xn, yn, g, yn, inv_eps)
    out_t, lse_t = _flex_attend(yn, xn, f, xn, inv_eps)
    return out * (f + lse).exp()[:, :, None], out_t * (g + lse_t).exp()[:, :, None]


# ---------------------------------------------------------------------------------- solver
def _backend_ops(backend: str, block: int, device: torch.device, dtype: torch.dtype) -> _Ops:
    """The kernels of ``backend``, "auto" resolved to flex for float32 on CUDA, else blockwise."""
    if backend == "auto":
        compiled = device.type == "cuda" and dtype == torch.float32 and flex_attention is not None
        backend = "flex" if compiled else "blockwise"
    if backend == "blockwise":
        return _Ops(functools.partial(_block_lse, block=block), functools.partial(_block_value, block=block),
                    functools.partial(_block_products, block=block))
    if flex_attention is None:
        raise RuntimeError("backend='flex' needs torch.nn.attention.flex_attention with return_aux "
                           f"(torch >= 2.9), got torch {torch.__version__}")
    return _Ops(_flex_lse, _flex_value, _flex_products)


def _block_spread(xn: Tensor, yn: Tensor, block: int) -> Tensor:
    """max C - min C per problem = max s - min s over the cosines s = xn yn^T, by key blocks: (P,)."""
    high = xn.new_full(xn.shape[:1], -math.inf)
    low = xn.new_full(xn.shape[:1], math.inf)
    for start in range(0, yn.shape[1], block):
        s = torch.bmm(xn, yn[:, start:start + block].transpose(1, 2))
        high, low = torch.maximum(high, s.amax((1, 2))), torch.minimum(low, s.amin((1, 2)))
    return high - low


def _potentials(xn: Tensor, yn: Tensor, inv_eps: float, iters: int, tol: float | None, omega: float,
                ops: _Ops, block: int) -> tuple[Tensor, Tensor]:
    """f (P, n) and g (P, m), potentials divided by eps, after Sinkhorn (Eq. 8) from f = 0
    (u^0 = 1) on unit clouds xn (P, n, d), yn (P, m, d), as scheduled by :func:`schedule.iterate`."""
    log_a, log_b = -math.log(xn.shape[1]), -math.log(yn.shape[1])

    def col(data: tuple[Tensor, ...], f: Tensor) -> Tensor:
        return log_b - ops.lse(data[1], data[0], f, inv_eps)  # g_j = log b_j - LSE_i(f_i - C_ij / eps)

    def row(data: tuple[Tensor, ...], g: Tensor) -> Tensor:
        return log_a - ops.lse(data[0], data[1], g, inv_eps)  # f_i = log a_i - LSE_j(g_j - C_ij / eps)

    def value(data: tuple[Tensor, ...], f: Tensor, g: Tensor) -> Tensor:
        return ops.value(data[0], data[1], f, g, inv_eps)

    def plan(data: tuple[Tensor, ...], f: Tensor, g: Tensor) -> Tensor:  # for the schedule's Newton steps only
        return _plan_tile(data[0], data[1], f, g, inv_eps)[0]

    spread = None if tol is None else _block_spread(xn, yn, block)
    f, g = xn.new_zeros(xn.shape[:2]), yn.new_zeros(yn.shape[:2])
    steps = Steps(col, row, log_relax, log_gap, value, log_balance, plan, log_shift)
    f, g, _ = iterate(steps, (xn, yn), f, g, spread, iters, tol, omega)
    return f, g


def _through_norm(grad_n: Tensor, xn: Tensor, x_inv: Tensor) -> Tensor:
    """d/dx from d/dx^ for x^ = x * x_inv (otface.normalize.inverse_norm): x_inv (I - x^ x^^T) grad_n; (P, n, d)."""
    return (grad_n - xn * (xn * grad_n).sum(-1, keepdim=True)) * x_inv


class _FusedCosineEnvelope(torch.autograd.Function):
    """<P, C> of cosine Sinkhorn with the envelope gradient; keeps x^, y^, inverse norms and the
    potentials, and recomputes the plan products in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, eps: float, iters: int, tol: float | None, omega: float, ops: _Ops,
                block: int) -> Tensor:
        ctx.dtypes = (x.dtype, y.dtype)
        dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            x, y = x.detach().to(dtype), y.detach().to(dtype)
            x_inv, y_inv = inverse_norm(x), inverse_norm(y)
            xn, yn = x * x_inv, y * y_inv
            f, g = _potentials(xn, yn, 1.0 / eps, iters, tol, omega, ops, block)
            value = ops.value(xn, yn, f, g, 1.0 / eps)
        ctx.save_for_backward(xn, yn, x_inv, y_inv, f, g)
        ctx.eps, ctx.ops = eps, ops
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value: Tensor) -> tuple[Tensor | None, ...]:
        xn, yn, x_inv, y_inv, f, g = ctx.saved_tensors
        with torch.autocast(xn.device.type, enabled=False):
            rows, cols = ctx.ops.products(xn, yn, f, g, 1.0 / ctx.eps)
            scale = grad_value.to(xn.dtype)[:, None, None]
            g_x = _through_norm(-rows, xn, x_inv) * scale  # d value / dx^ = -P y^
            g_y = _through_norm(-cols, yn, y_inv) * scale  # d value / dy^ = -P^T x^
        return g_x.to(ctx.dtypes[0]), g_y.to(ctx.dtypes[1]), None, None, None, None, None, None


def fused_cosine_sinkhorn(
    x: Tensor,
    y: Tensor,
    eps: float = 0.05,
    iters: int = 50,
    tol: float | None = None,
    omega: float = 1.0,
    *,
    block: int = DEFAULT_BLOCK,
    backend: str = "auto",
) -> Tensor:
    """cosine_sinkhorn(x, y, eps, iters, tol, omega=omega) without storing any (P, n, m) tensor.

    Args:
        x: (P, n, d) points of the first clouds; any float dtype, computed in float32 (float64 kept).
        y: (P, m, d) points of the second clouds.
        eps: entropic regulariser (> 0).
        iters: Sinkhorn iterations (>= 1), each a g then an f update (Eq. 8); with ``tol`` the most.
        tol: stop each problem once the estimated relative error of its value is <= tol (None:
            run ``iters``), and omega the over-relaxation, as :func:`otface.ot.cosine_sinkhorn`
            (:mod:`otface.ot.schedule`).
        block: keys per tile of the blockwise backend (>= 1; ignored by flex).
        backend: "blockwise", "flex" or "auto" (module docstring).

    Returns:
        (P,) transport costs <P, C> (no entropy term), float32 (float64 for float64 input), with
        the envelope gradient to x and y (P held fixed).
    """
    check_clouds(x, y, "fused_cosine_sinkhorn")
    check_solver_args(eps, iters, tol, omega=omega)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    ops = _backend_ops(backend, block, x.device, dtype)
    return _FusedCosineEnvelope.apply(x, y, eps, iters, tol, omega, ops, block)
