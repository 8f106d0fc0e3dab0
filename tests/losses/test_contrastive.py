import math

import pytest
import torch

from otface.losses.contrastive import ContrastiveLoss


def batch(n=16, dim=6, num_classes=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(num_classes, (n,), generator=g)


def reference_loss(emb, labels, margin):
    """Hadsell et al. / DeepID2 over every pair i < j, float64, one pair at a time."""
    u = [x / x.norm() for x in emb.double()]
    y = labels.tolist()
    terms = []
    for i in range(len(u)):
        for j in range(i + 1, len(u)):
            d = sum((u[i][k] - u[j][k]) ** 2 for k in range(len(u[i]))) ** 0.5
            terms.append(0.5 * d**2 if y[i] == y[j] else 0.5 * torch.relu(margin - d) ** 2)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("margin", [1.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_match_the_pairwise_loop(margin, dtype):
    emb, labels = batch(dtype=dtype)
    i, j = torch.triu_indices(len(emb), len(emb), 1)
    negative = labels[i] != labels[j]
    unit = emb / emb.norm(dim=1, keepdim=True)
    assert (~negative).any() and ((unit[i] - unit[j]).norm(dim=1)[negative] < margin).sum() >= 5  # both terms act
    emb = (emb * torch.linspace(0.5, 3, len(emb), dtype=dtype)[:, None]).requires_grad_()
    loss = ContrastiveLoss(margin=margin)(emb, labels)
    assert loss.dtype == dtype and loss.ndim == 0
    loss.backward()
    ref = emb.detach().double().requires_grad_()
    want = reference_loss(ref, labels, margin)
    want.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.double(), want.detach(), **tol)
    torch.testing.assert_close(emb.grad.double(), ref.grad, **tol)


def test_two_samples_by_hand():
    # orthogonal unit vectors: d = sqrt(2)
    emb = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert ContrastiveLoss()(emb, torch.tensor([0, 0])).item() == pytest.approx(1.0)  # 1/2 * 2
    assert ContrastiveLoss()(emb, torch.tensor([0, 1])).item() == 0.0  # beyond the margin
    want = 0.5 * (1.6 - math.sqrt(2)) ** 2
    assert ContrastiveLoss(margin=1.6)(emb, torch.tensor([0, 1])).item() == pytest.approx(want)


def test_gradcheck():
    emb, labels = batch(7, 3, 3, seed=1)
    loss_fn = ContrastiveLoss(margin=1.2)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb.requires_grad_(),))


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_samples_give_a_connected_zero(n):
    emb = torch.randn(n, 4, requires_grad=True)
    loss = ContrastiveLoss()(emb, torch.zeros(n, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.equal(emb.grad, torch.zeros_like(emb))


def test_bf16_autocast_and_degenerate_pairs_are_finite():
    emb, labels = batch(12, 8, 3, dtype=torch.float32)
    labels[:4] = torch.tensor([0, 1, 0, 2])
    emb[1] = emb[0]  # an identical negative pair: no direction, no gradient, no NaN
    emb[2] = -emb[0]  # an opposite positive pair (cos = -1)
    emb[3] = 0.0  # a zero embedding
    emb = emb.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ContrastiveLoss()(emb, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite() and emb.grad.isfinite().all()


@pytest.mark.parametrize("emb, labels, match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), r"\(N, E\)"),
    (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), r"labels must be \(4,\)"),
    (torch.randn(4, 3), torch.zeros(4), "integer"),
])
def test_bad_inputs(emb, labels, match):
    with pytest.raises(TypeError if match in ("integer", "float") else ValueError, match=match):
        ContrastiveLoss()(emb, labels)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=0.0)
