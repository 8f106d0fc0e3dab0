import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.arcface import ArcFace
from otface.heads.combined import CombinedMargin
from otface.heads.cosface import CosFace

# (m1, m2, m3): insightface's default; ArcFace's "CM2"; SphereFace-like m1 > 1; m1 < 1 with no fallback needed;
# a large m1 whose fallback needs the 1 - cos(d) step
PARAMS = [(1.0, 0.3, 0.2), (0.9, 0.4, 0.15), (1.35, 0.0, 0.0), (0.8, 0.5, 0.1), (4.0, 0.0, 0.1)]


def reference_target(c, m1, m2, m3):
    """cos(m1 theta + m2) - m3 while m1 theta + m2 <= pi; beyond, cos(theta) - m3 - p with
    d = pi - (pi - m2) / m1 and p = max(d sin d, 1 - cos d)."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    if m1 * theta + m2 <= math.pi:
        return math.cos(m1 * theta + m2) - m3
    d = math.pi - (math.pi - m2) / m1
    return c - m3 - max(d * math.sin(d), 1 - math.cos(d))


def reference_logits(emb, weight, labels, s, m1, m2, m3):
    x = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        out[i, y] = reference_target(cos[i, y], m1, m2, m3)
    return s * out


def inputs(head, n=40, n_spread=18, seed=0):
    """Random embeddings; the first ``n_spread`` at angles to their class from 0.05 to 3.138, dense near pi."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, head.num_classes, (n,), generator=g)
    emb = torch.randn(n, head.embedding_size, generator=g)
    w = F.normalize(head.weight.detach()[labels[:n_spread]], dim=1)
    u = torch.randn(n_spread, head.embedding_size, generator=g)
    u = F.normalize(u - (u * w).sum(1, keepdim=True) * w, dim=1)  # orthogonal to w
    half = n_spread // 2
    theta = torch.cat([torch.linspace(0.05, 2.0, half), torch.linspace(2.8, 3.138, n_spread - half)]).unsqueeze(1)
    emb[:n_spread] = theta.cos() * w + theta.sin() * u
    return emb, labels


@pytest.mark.parametrize("m1, m2, m3", PARAMS)
def test_logits_and_loss_match_the_formula(m1, m2, m3):
    torch.manual_seed(0)
    s = 32.0
    head = CombinedMargin(16, 7, scale=s, m1=m1, m2=m2, m3=m3)
    emb, labels = inputs(head)
    theta = F.cosine_similarity(emb, head.weight.detach()[labels]).double().acos()
    if (math.pi - m2) / m1 < math.pi:  # both branches are exercised
        assert (m1 * theta + m2 > math.pi).sum() >= 3 and (m1 * theta + m2 < math.pi).sum() >= 3
    ref = reference_logits(emb, head.weight, labels, s, m1, m2, m3)
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=1e-4 * s)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(head.double().logits(emb.double(), labels).detach().numpy(), ref, atol=1e-9 * s)


@pytest.mark.parametrize("m1, m2, m3", PARAMS + [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35)])
def test_target_is_monotone_in_theta(m1, m2, m3):
    head = CombinedMargin(4, 2, m1=m1, m2=m2, m3=m3)
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    target = head.margin_cos(theta.cos())
    assert (target.diff() <= 1e-12).all()
    ref = torch.tensor([reference_target(c, m1, m2, m3) for c in theta.cos().tolist()], dtype=torch.float64)
    away = (m1 * theta + m2 - math.pi).abs() > 1e-6  # the branch point itself is a tie
    # 1e-6: sin(theta) is clamped to >= 1e-6 at theta = 0 and pi (finite gradients there)
    torch.testing.assert_close(target[away], ref[away], rtol=0, atol=1e-6)


@pytest.mark.parametrize("base, m, margins, seed", [
    (ArcFace, 0.5, (1.0, 0.5, 0.0), 1), (ArcFace, 1.2, (1.0, 1.2, 0.0), 1),
    (CosFace, 0.35, (1.0, 0.0, 0.35), 2), (CosFace, 0.4, (1.0, 0.0, 0.4), 2),
])
def test_reduces_exactly_to_arcface_and_cosface(base, m, margins, seed):
    """(1, m, 0) is ArcFace and (1, 0, m) is CosFace: same logits and gradients, bit for bit."""
    torch.manual_seed(seed)
    ref = base(16, 7, scale=64.0, margin=m)
    comb = CombinedMargin(16, 7, scale=64.0, m1=margins[0], m2=margins[1], m3=margins[2])
    comb.load_state_dict(ref.state_dict())
    emb, labels = inputs(ref)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, l2 = ref.logits(e1, labels), comb.logits(e2, labels)
    assert torch.equal(l1, l2)
    F.cross_entropy(l1, labels).backward()
    F.cross_entropy(l2, labels).backward()
    assert torch.equal(e1.grad, e2.grad) and torch.equal(ref.weight.grad, comb.weight.grad)


def test_defaults_and_arguments():
    head = CombinedMargin(8, 4)
    assert (head.scale, head.m1, head.m2, head.m3) == (64.0, 1.0, 0.3, 0.2)
    assert repr(head) == "CombinedMargin(embedding_size=8, num_classes=4, scale=64.0, m1=1.0, m2=0.3, m3=0.2)"
    for bad in (dict(m1=0.0), dict(m1=-1.0), dict(m2=-0.1), dict(m2=math.pi)):
        with pytest.raises(ValueError, match="m1 > 0"):
            CombinedMargin(8, 4, **bad)
