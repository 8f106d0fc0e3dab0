import types

import pytest
import torch

from otface.heads import ArcFace
from otface.losses.discface import DiscFaceLoss


def batch(n=16, dim=6, num_classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g, dtype=dtype)
    weight = torch.randn(num_classes, dim, generator=g, dtype=dtype)
    return emb, weight, torch.randint(num_classes, (n,), generator=g)


def clipped(b, max_norm=0.05):
    """Algorithm 1: F.normalize(b) * clamp(|b|, 0, 0.05), element by element (b != 0)."""
    norm = sum(v * v for v in b) ** 0.5
    return [v / norm * min(norm, max_norm) for v in b]


def reference_loss(emb, weight, labels, b):
    """Eq. 3 with the displacement of Eq. 2, one sample and one coordinate at a time, float64."""
    xi = clipped(list(b.double()))
    total = 0.0
    for x, y in zip(emb.double(), labels.tolist()):
        w = weight[y].double()
        xn, wn = x.norm(), w.norm()
        total = total + sum((x[k] / xn - w[k] / wn - xi[k]) ** 2 for k in range(len(x))) ** 0.5
    return total / len(emb)


def head_with(weight):
    return types.SimpleNamespace(weight=weight)


@pytest.mark.parametrize("basis_norm", [0.01, 0.05, 0.3, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradients_match_algorithm_1(basis_norm, dtype):
    emb, weight, labels = batch(dtype=dtype)
    loss_fn = DiscFaceLoss(6).to(dtype)
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(6, generator=g, dtype=dtype)
    with torch.no_grad():
        loss_fn.raw_basis.copy_(basis_norm * direction / direction.norm())
    emb.requires_grad_(), weight.requires_grad_()
    loss = loss_fn(emb, labels, head_with(weight))
    assert loss.dtype == dtype and loss.ndim == 0
    loss.backward()
    ref = [t.detach().double().requires_grad_() for t in (emb, weight, loss_fn.raw_basis)]
    want = reference_loss(ref[0], ref[1], labels, ref[2])
    want.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.double(), want.detach(), **tol)
    for got, r in zip((emb.grad, weight.grad, loss_fn.raw_basis.grad), ref):
        torch.testing.assert_close(got.double(), r.grad, **tol)
    assert weight.grad.abs().sum() > 0  # w_y is not detached (Algorithm 1)


def test_clip_happens_in_the_forward_and_leaves_the_parameter():
    loss_fn = DiscFaceLoss(4)
    with torch.no_grad():
        loss_fn.raw_basis.copy_(torch.tensor([3.0, 0.0, 4.0, 0.0]))  # |b| = 5
    torch.testing.assert_close(loss_fn.basis, torch.tensor([0.03, 0.0, 0.04, 0.0]))
    emb, weight, labels = batch(8, 4, 3, dtype=torch.float32)
    loss_fn(emb, labels, head_with(weight)).backward()
    assert torch.equal(loss_fn.raw_basis.detach(), torch.tensor([3.0, 0.0, 4.0, 0.0]))
    # beyond the bound the norm is frozen: the gradient only turns b
    assert abs(loss_fn.raw_basis.grad @ loss_fn.raw_basis.detach()) < 1e-6
    assert loss_fn.raw_basis.grad.norm() > 1e-3
    # below the bound the basis is b itself
    with torch.no_grad():
        loss_fn.raw_basis.copy_(torch.tensor([0.01, -0.02, 0.0, 0.03]))
    assert torch.equal(loss_fn.basis, loss_fn.raw_basis.detach())
    loss_fn = DiscFaceLoss(4, max_norm=0.5)
    with torch.no_grad():
        loss_fn.raw_basis.fill_(1.0)
    assert loss_fn.basis.norm().item() == pytest.approx(0.5)


def test_zero_initial_basis_learns():
    # Algorithm 1's normalize(b) * |b| has a zero gradient at b = 0; the clip used here does not
    loss_fn = DiscFaceLoss(6)
    assert torch.equal(loss_fn.raw_basis.detach(), torch.zeros(6))
    emb, weight, labels = batch(dtype=torch.float32)
    loss = loss_fn(emb, labels, head_with(weight))
    loss.backward()
    eps = emb / emb.norm(dim=1, keepdim=True) - weight[labels] / weight[labels].norm(dim=1, keepdim=True)
    assert loss.item() == pytest.approx(eps.norm(dim=1).mean().item(), rel=1e-6)
    # d/dxi mean_i |eps_i - xi| at xi = 0 is -mean_i eps_i / |eps_i|
    torch.testing.assert_close(loss_fn.raw_basis.grad, -(eps / eps.norm(dim=1, keepdim=True)).mean(0))


def test_with_a_margin_head_and_state_dict():
    torch.manual_seed(0)
    head = ArcFace(6, 5)
    emb, _, labels = batch(dtype=torch.float32)
    loss_fn = DiscFaceLoss(6)
    loss_fn(emb, labels, head).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    rows = sorted(set(range(5)) - set(labels.tolist()))
    assert torch.equal(head.weight.grad[rows], torch.zeros(len(rows), 6))
    with torch.no_grad():
        loss_fn.raw_basis.normal_()
    other = DiscFaceLoss(6)
    other.load_state_dict(loss_fn.state_dict())
    assert torch.equal(other.basis, loss_fn.basis)


def test_gradcheck():
    emb, weight, labels = batch(5, 3, 4)
    loss_fn = DiscFaceLoss(3).double()

    def fn(e, w, b):
        return torch.func.functional_call(loss_fn, {"raw_basis": b}, (e, labels, head_with(w)))

    for b in (torch.tensor([0.01, -0.02, 0.02]), torch.tensor([0.3, 0.1, -0.2])):  # inside, beyond the bound
        args = (emb.requires_grad_(), weight.requires_grad_(), b.double().requires_grad_())
        assert torch.autograd.gradcheck(fn, args)


def test_bf16_autocast_and_degenerate_cases_are_finite():
    emb, weight, labels = batch(dtype=torch.float32)
    emb[0] = weight[labels[0]] * 3  # eps_0 = 0 = xi: the norm is 0
    emb[1] = -weight[labels[1]]  # cos = -1
    emb[2] = 0.0  # a zero feature
    emb = emb.bfloat16().requires_grad_()
    weight = weight.bfloat16().requires_grad_()
    loss_fn = DiscFaceLoss(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(emb, labels, head_with(weight))
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite()
    for t in (emb.grad, weight.grad, loss_fn.raw_basis.grad):
        assert t.isfinite().all()


def test_empty_batch_is_zero_and_connected():
    loss_fn = DiscFaceLoss(4)
    loss = loss_fn(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), head_with(torch.randn(3, 4)))
    loss.backward()
    assert loss.item() == 0 and loss_fn.raw_basis.grad is not None


@pytest.mark.parametrize("emb, labels, weight, match", [
    (torch.randn(4, 4), torch.zeros(4, dtype=torch.long), None, "margin head"),
    (torch.randn(4, 4), torch.zeros(4, dtype=torch.long), torch.randn(3, 5), "margin head"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), torch.randn(3, 4), r"\(N, 4\)"),
    (torch.randn(4, 4), torch.zeros(5, dtype=torch.long), torch.randn(3, 4), r"labels must be \(4,\)"),
    (torch.randn(4, 4), torch.zeros(4), torch.randn(3, 4), "integer"),
    (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), torch.randn(3, 4), r"\[0, 3\)"),
])
def test_bad_inputs(emb, labels, weight, match):
    head = None if weight is None else head_with(weight)
    with pytest.raises(TypeError if match in ("integer", "float") else ValueError, match=match):
        DiscFaceLoss(4)(emb, labels, head)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="max_norm"):
        DiscFaceLoss(4, max_norm=0.0)
