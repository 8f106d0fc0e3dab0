import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.arcface import ArcFace
from otface.heads.cosface import CosFace
from otface.heads.mv_softmax import MVAMSoftmax, MVArcSoftmax
from support.embeddings import labelled_embeddings

VARIANTS = [(MVAMSoftmax, True), (MVAMSoftmax, False), (MVArcSoftmax, True), (MVArcSoftmax, False)]


def reference_logits(arc, emb, weight, labels, s, m, t, adaptive):
    """Float64 MV-Softmax written plainly: target f = cos - m (AM) or cos(theta + m) with ArcFace's
    fallback (Arc); a negative k with cos_k > f is mis-classified and becomes cos_k + t (fixed) or
    (t + 1) cos_k + t (adaptive); the others stay cos_k."""
    x = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        c = cos[i, y]
        if arc:
            theta = math.acos(max(-1.0, min(1.0, c)))
            target = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
        else:
            target = c - m
        for k in range(cos.shape[1]):
            if k == y:
                out[i, k] = target
            elif cos[i, k] > target:
                out[i, k] = (t + 1) * cos[i, k] + t if adaptive else cos[i, k] + t
    return s * out


def inputs(head, n=40, n_close=10, n_opposite=6, seed=0):
    return labelled_embeddings(head, n, n_close, n_opposite, 0.3 / head.embedding_size**0.5, seed)


@pytest.mark.parametrize("cls, adaptive", VARIANTS)
def test_logits_and_loss_match_the_formula(cls, adaptive):
    torch.manual_seed(0)
    s, t = 32.0, 0.2
    head = cls(16, 7, adaptive=adaptive)
    m = head.margin
    emb, labels = inputs(head, n_close=20)
    ref = reference_logits(cls is MVArcSoftmax, emb, head.weight, labels, s, m, t, adaptive)
    cos = F.normalize(emb, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    changed = np.abs(ref / s - cos.double().numpy()) > 1e-5
    negative = np.ones_like(changed)
    negative[np.arange(len(labels)), labels.numpy()] = False
    assert (changed & negative).sum() >= 20 and (~changed & negative).sum() >= 20
    if cls is MVArcSoftmax:
        assert (cos[torch.arange(len(labels)), labels] < math.cos(math.pi - m)).sum() >= 3
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=2e-5 * s)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    head64 = head.double()
    np.testing.assert_allclose(head64.logits(emb.double(), labels).detach().numpy(), ref, atol=1e-10 * s)


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_negative_equal_to_the_target_is_not_misclassified_one_above_is(adaptive):
    t = 0.2
    am = MVAMSoftmax(4, 4, scale=1.0, margin=0.25, adaptive=adaptive)
    target = 0.5  # 0.75 - 0.25, exact in binary
    above, below = math.nextafter(target, 1.0), math.nextafter(target, 0.0)
    cos = torch.tensor([[0.75, target, above, below]], dtype=torch.float64)
    got = am.adjust(cos, torch.tensor([0]))[0].tolist()
    lift = (t + 1) * above + t if adaptive else above + t
    assert got == pytest.approx([target, target, lift, below], abs=1e-15)

    arc = MVArcSoftmax(4, 4, scale=1.0, adaptive=adaptive)
    c = 0.6
    target = math.cos(math.acos(c) + 0.5)
    cos = torch.tensor([[c, target - 1e-9, target + 1e-9, -0.9]], dtype=torch.float64)
    got = arc.adjust(cos, torch.tensor([0]))[0].tolist()
    lift = (t + 1) * (target + 1e-9) + t if adaptive else target + 1e-9 + t
    assert got == pytest.approx([target, target - 1e-9, lift, -0.9], abs=1e-12)


def test_misclassification_is_judged_against_the_target_used_past_pi():
    """Past theta_y = pi - m the Arc target is the fallback cos - m sin m, below cos(theta_y + m); a
    negative in between is mis-classified here (the authors' code, comparing with cos(theta_y + m),
    would not)."""
    head = MVArcSoftmax(2, 2, scale=1.0, adaptive=False)
    cos_y, cos_k = math.cos(math.pi - 0.1), math.cos(math.pi - 0.15)
    target = cos_y - 0.5 * math.sin(0.5)
    assert target < cos_k < math.cos(math.pi - 0.1 + 0.5)
    got = head.adjust(torch.tensor([[cos_y, cos_k]], dtype=torch.float64), torch.tensor([0]))[0].tolist()
    assert got == pytest.approx([target, cos_k + 0.2], abs=1e-12)


@pytest.mark.parametrize("cls, plain", [(MVAMSoftmax, CosFace), (MVArcSoftmax, ArcFace)])
def test_t_zero_is_the_plain_margin_head(cls, plain):
    torch.manual_seed(1)
    head = cls(16, 7, t=0.0, adaptive=True)
    fixed = plain(16, 7, scale=32.0, margin=head.margin)
    fixed.load_state_dict(head.state_dict())
    emb, labels = inputs(head, seed=1)
    torch.testing.assert_close(head.logits(emb, labels), fixed.logits(emb, labels))


def test_defaults_validation_and_repr():
    am, arc = MVAMSoftmax(8, 4), MVArcSoftmax(8, 4)
    assert isinstance(am, CosFace) and isinstance(arc, ArcFace)
    assert (am.scale, am.margin, am.t, am.adaptive) == (32.0, 0.35, 0.2, True)
    assert (arc.scale, arc.margin, arc.t, arc.adaptive, arc.straight_through) == (32.0, 0.5, 0.2, True, False)
    assert repr(arc) == "MVArcSoftmax(embedding_size=8, num_classes=4, scale=32.0, margin=0.5, t=0.2, adaptive=True)"
    assert set(am.state_dict()) == {"weight"}
    with pytest.raises(ValueError, match="t must be finite and >= 0"):
        MVAMSoftmax(8, 4, t=-0.1)
    with pytest.raises(TypeError):
        MVArcSoftmax(8, 4, straight_through=True)
