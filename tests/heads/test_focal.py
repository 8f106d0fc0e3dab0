import math

import pytest
import torch
import torch.nn.functional as F

from otface.heads import HEADS, ArcFace, CosFace, MarginHead, build_head
from otface.heads.focal import Focal
from support.embeddings import labelled_embeddings
from support.margin_reference import reference_logits


def reference_focal(logits, labels, gamma):
    """mean_i (1 - p_i)^gamma * -log p_i, one sample at a time (focal loss Eq. 4)."""
    terms = []
    for i, y in enumerate(labels.tolist()):
        log_p = logits[i, y] - torch.logsumexp(logits[i], 0)
        terms.append((1 - torch.exp(log_p)) ** gamma * -log_p)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("kind, s, m", [("arcface", 64.0, 0.5), ("cosface", 30.0, 0.35)])
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_value_and_gradient_match_the_formula(kind, s, m, gamma):
    torch.manual_seed(0)
    head = build_head(f"focal_{kind}", 16, 7, gamma=gamma, scale=s, margin=m)
    emb, labels = labelled_embeddings(head, n=24, n_opposite=6)
    if kind == "arcface":  # both branches are exercised
        cos_y = F.cosine_similarity(emb, head.weight.detach()[labels])
        assert (cos_y < math.cos(math.pi - m)).sum() >= 3 and (cos_y > math.cos(math.pi - m)).sum() >= 3
    emb.requires_grad_(True)
    loss = head(emb, labels)
    loss.backward()

    e64 = emb.detach().double().requires_grad_(True)
    w64 = head.weight.detach().double().requires_grad_(True)
    ref = reference_focal(reference_logits(kind, e64, w64, labels, s, m), labels, gamma)
    ref.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(emb.grad.double(), e64.grad, rtol=1e-3, atol=1e-5 * e64.grad.abs().max().item())
    torch.testing.assert_close(head.weight.grad.double(), w64.grad, rtol=1e-3,
                               atol=1e-5 * w64.grad.abs().max().item())


def test_focal_weight_is_below_one_so_loss_is_below_cross_entropy():
    torch.manual_seed(1)
    head = build_head("focal_cosface", 8, 5, scale=16.0)
    emb, labels = labelled_embeddings(head, n=12, n_opposite=3, seed=1)
    assert 0 < head(emb, labels).item() < head.head(emb, labels).item()


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_where_p_is_one_and_cos_is_minus_one(kind, gamma, sign):
    head = build_head(f"focal_{kind}", 8, 4, gamma=gamma)  # s = 64
    with torch.no_grad():
        head.weight.copy_(torch.eye(4, 8))  # orthogonal classes
    labels = torch.tensor([0, 1, 2, 3])
    emb = (sign * head.weight.detach()[labels]).requires_grad_(True)
    if sign > 0:  # cos = 1 for the target, 0 elsewhere: p_y = 1 exactly in float32
        assert (F.cross_entropy(head.logits(emb, labels), labels, reduction="none") == 0).all()
    loss = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name, cls, margin", [("focal_arcface", ArcFace, 0.5), ("focal_cosface", CosFace, 0.35),
                                                ("focal_am_softmax", CosFace, 0.35)])
def test_build_by_name(name, cls, margin):
    head = build_head(name, 12, 9)
    assert isinstance(head, Focal) and type(head.head) is cls
    assert head.gamma == 2.0 and (head.head.scale, head.head.margin) == (64.0, margin)
    assert head.weight is head.head.weight and head.weight.shape == (9, 12)
    assert (head.embedding_size, head.num_classes) == (12, 9)
    assert [n for n, _ in head.named_parameters()] == ["head.weight"]
    custom = build_head(name, 12, 9, gamma=1.5, scale=30.0, margin=0.2)
    assert custom.gamma == 1.5 and (custom.head.scale, custom.head.margin) == (30.0, 0.2)


class GammaHead(MarginHead):
    """A head with a hyper-parameter named like the focal loss's."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 8.0, gamma: float = 0.1) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.gamma = gamma


def test_a_name_both_accept_must_be_qualified(monkeypatch):
    monkeypatch.setitem(HEADS._factories, "gammahead", GammaHead)
    head = build_head("focal_gammahead", 4, 3, **{"focal.gamma": 1.0, "gammahead.gamma": 0.3, "scale": 2.0})
    assert head.gamma == 1.0 and head.head.gamma == 0.3 and head.head.scale == 2.0
    with pytest.raises(TypeError, match="no hyper-parameter 'gamma'; it accepts: focal.gamma, scale, gammahead.gamma"):
        build_head("focal_gammahead", 4, 3, gamma=1.0)


def test_errors():
    with pytest.raises(ValueError, match="gamma must be finite and >= 0, got -1"):
        build_head("focal_arcface", 8, 5, gamma=-1)
    with pytest.raises(ValueError, match="gamma"):
        build_head("focal_cosface", 8, 5, gamma=math.inf)
    with pytest.raises(TypeError, match="head 'focal_arcface' has no hyper-parameter 'marign'; "
                                        "it accepts: gamma, scale, margin, straight_through"):
        build_head("focal_arcface", 8, 5, marign=0.3)
    with pytest.raises(TypeError, match="'ratio'"):
        build_head("focal_cosface", 8, 5, ratio=0.5)
    with pytest.raises(KeyError, match="focal_ cannot wrap 'hm_arcface', wrappers do not stack"):
        build_head("focal_hm_arcface", 8, 5)
    with pytest.raises(KeyError, match="wrappers do not stack"):
        build_head("focal_focal_cosface", 8, 5)
    known = "known: a_softmax, am_softmax"
    with pytest.raises(KeyError, match=f"unknown head 'focal_nohead': 'nohead' is not registered; {known}"):
        build_head("focal_nohead", 8, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        build_head("focal_arcface", 8, 5)(torch.randn(2, 8), torch.tensor([0, 5]))
