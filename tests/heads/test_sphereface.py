import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.sphereface import SphereFace, a_softmax_psi
from support.embeddings import labelled_embeddings


def reference_psi(c, m):
    """SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m], via acos."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    k = min(int(theta * m / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def reference_lambda(it, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    return max(lambda_min, base * (1 + gamma * it) ** -power)


def reference_logits(emb, weight, labels, m, lam):
    """Float64 A-Softmax logits as in the authors' Caffe layer: ||x|| cos_j, and
    ||x|| (lam cos_y + psi(theta_y)) / (1 + lam) for the target."""
    x, w = emb.detach().double().numpy(), weight.detach().double().numpy()
    out = np.zeros((x.shape[0], w.shape[0]))
    for i, y in enumerate(labels.tolist()):
        norm = math.sqrt(x[i] @ x[i])
        for j in range(w.shape[0]):
            c = x[i] @ w[j] / (norm * math.sqrt(w[j] @ w[j]))
            out[i, j] = norm * ((lam * c + reference_psi(c, m)) / (1 + lam) if j == y else c)
    return out


def inputs(head, n=24, n_opposite=6, seed=0):
    """Embeddings of norm 3 to 10; the first ``n_opposite`` point away from their class (theta near pi)."""
    emb, labels = labelled_embeddings(head, n, 0, n_opposite, 0.05, seed)
    norms = 3 + 7 * torch.rand(n, 1, generator=torch.Generator().manual_seed(seed))
    return emb / emb.norm(dim=1, keepdim=True) * norms, labels


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_matches_the_paper_and_is_monotone_and_continuous(m):
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = a_softmax_psi(theta.cos(), m)
    ref = torch.tensor([reference_psi(c, m) for c in theta.cos().tolist()], dtype=torch.float64)
    torch.testing.assert_close(psi, ref, rtol=0, atol=1e-9)
    assert psi[0].item() == pytest.approx(1.0) and psi[-1].item() == pytest.approx(1 - 2 * m)
    steps = psi.diff()
    assert (steps <= 1e-12).all() and steps.abs().max() < 2 * m * math.pi / 20000


@pytest.mark.parametrize("m, schedule", [(4, {}), (2, {}),
                                         (3, dict(base=10.0, gamma=1.0, power=2.0, lambda_min=0.5))])
def test_logits_follow_the_annealed_formula_step_by_step(m, schedule):
    torch.manual_seed(0)
    head = SphereFace(16, 7, margin=m, **schedule)
    emb, labels = inputs(head)
    cos_y = F.cosine_similarity(emb, head.weight.detach()[labels])
    assert (cos_y < -0.9).sum() >= 4  # theta near pi is exercised
    for step in (1, 2, 3):
        got = head.logits(emb, labels)  # training mode: iteration is incremented first
        assert head.iteration.item() == step
        lam = reference_lambda(step, **schedule)
        assert head.annealing_lambda().item() == pytest.approx(lam, rel=1e-12)
        assert got.dtype == torch.float32
        ref = reference_logits(emb, head.weight, labels, m, lam)
        np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=1e-5, atol=1e-4)
    lam = reference_lambda(4, **schedule)
    ref = reference_logits(emb, head.weight, labels, m, lam)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    assert head.iteration.item() == 4  # one increment per forward
    np.testing.assert_allclose(head.double().eval().logits(emb.double(), labels).detach().numpy(), ref, rtol=1e-10)


def test_eval_mode_leaves_the_iteration_alone():
    head = SphereFace(8, 4)
    emb, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    head.eval()
    first = head.logits(emb, labels)
    head(emb, labels)
    assert head.iteration.item() == 0
    torch.testing.assert_close(head.logits(emb, labels), first)
    ref = reference_logits(emb, head.weight, labels, 4, 1000.0)  # lambda at iteration 0
    np.testing.assert_allclose(first.detach().double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_lambda_schedule_and_floor():
    head = SphereFace(8, 4)
    for it in (0, 1, 10, 1000, 1650, 1700, 10**6):
        head.iteration.fill_(it)
        assert head.annealing_lambda().item() == pytest.approx(reference_lambda(it), rel=1e-12)
    assert head.annealing_lambda().item() == 5.0


def test_checkpoint_resumes_the_annealing():
    torch.manual_seed(1)
    head = SphereFace(8, 4)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(7):
        head(emb, labels)
    state = head.state_dict()
    assert set(state) == {"weight", "iteration"} and state["iteration"].item() == 7
    resumed = SphereFace(8, 4)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.logits(emb, labels), head.logits(emb, labels))
    assert resumed.iteration.item() == head.iteration.item() == 8
    assert head.double().iteration.dtype == torch.int64  # .double() keeps the counter an integer


def test_margin_one_is_the_modified_softmax():
    torch.manual_seed(2)
    head = SphereFace(8, 5, margin=1)
    emb, labels = 4 * torch.randn(6, 8), torch.randint(0, 5, (6,))
    expected = emb @ F.normalize(head.weight.detach(), dim=1).t()  # ||x|| cos(theta_j) = x . w_j / ||w_j||
    torch.testing.assert_close(head.logits(emb, labels).detach(), expected, rtol=1e-5, atol=1e-5)


def test_arguments():
    head = SphereFace(8, 4)
    assert (head.margin, head.base, head.gamma, head.power, head.lambda_min) == (4, 1000.0, 0.12, 1.0, 5.0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            SphereFace(8, 4, margin=bad)
    with pytest.raises(TypeError):
        SphereFace(8, 4, scale=30.0)  # the feature norm is the scale
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        head(torch.randn(2, 8), torch.tensor([0, 4]))
    assert head.iteration.item() == 0  # a rejected call does not count
    assert "margin=4, base=1000, gamma=0.12, power=1, lambda_min=5" in repr(head)
