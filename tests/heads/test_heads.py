import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads import HEADS, ArcFace, CosFace, MarginHead, build_head
from support.embeddings import labelled_embeddings


def reference_logits(kind, emb, weight, labels, s, m):
    """Float64 re-implementation of the published formulas, independent of otface.heads."""
    x = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = x @ w.T
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        c = cos[i, y]
        if kind == "arcface":
            theta = math.acos(max(-1.0, min(1.0, c)))
            # insightface (arcface_torch ArcFace, easy_margin=False): cos(theta + m) while
            # cos(theta) > cos(pi - m), otherwise cos(theta) - sin(pi - m) * m
            out[i, y] = math.cos(theta + m) if theta + m < math.pi else c - math.sin(math.pi - m) * m
        else:
            out[i, y] = c - m
    return s * out


@pytest.mark.parametrize("name, s, m", [("arcface", 64.0, 0.5), ("arcface", 30.0, 1.2), ("cosface", 64.0, 0.35),
                                        ("am_softmax", 30.0, 0.4)])
def test_logits_and_loss_match_the_formula(name, s, m):
    torch.manual_seed(0)
    head = build_head(name, 16, 7, scale=s, margin=m)
    emb, labels = labelled_embeddings(head)
    kind = "arcface" if name == "arcface" else "cosface"
    ref = reference_logits(kind, emb, head.weight, labels, s, m)
    if kind == "arcface":  # both branches are exercised
        cos_y = F.cosine_similarity(emb, head.weight.detach()[labels]).numpy()
        assert (cos_y < math.cos(math.pi - m)).sum() >= 3 and (cos_y > math.cos(math.pi - m)).sum() >= 3
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32 and got.shape == (40, 7)
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=2e-5 * s)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    # float64 end to end matches to rounding
    head64 = head.double()
    np.testing.assert_allclose(head64.logits(emb.double(), labels).detach().numpy(), ref, atol=1e-10 * s)


def test_straight_through_keeps_values_and_gives_the_plain_cosine_gradient():
    torch.manual_seed(2)
    s, m = 16.0, 0.5
    true = build_head("arcface", 8, 4, scale=s, margin=m)
    st = build_head("arcface", 8, 4, scale=s, margin=m, straight_through=True)
    st.load_state_dict(true.state_dict())
    emb, labels = labelled_embeddings(true, n=10, n_opposite=2, seed=2)
    torch.testing.assert_close(true.logits(emb, labels), st.logits(emb, labels))

    # arcface_torch (margin under no_grad): dL/dcos = s * (softmax(margin logits) - onehot) / N
    ref = torch.from_numpy(reference_logits("arcface", emb, true.weight, labels, s, m)).float()
    g_cos = s * (ref.softmax(1) - F.one_hot(labels, 4).float()) / len(labels)
    e = emb.clone().requires_grad_(True)
    cos = F.normalize(e, dim=1) @ F.normalize(st.weight.detach(), dim=1).t()
    (expected,) = torch.autograd.grad((cos * g_cos).sum(), e)
    e.grad = None
    st(e, labels).backward()
    torch.testing.assert_close(e.grad, expected, rtol=1e-4, atol=1e-6)
    # ... which differs from the true gradient
    e2 = emb.clone().requires_grad_(True)
    true(e2, labels).backward()
    assert not torch.allclose(e2.grad, expected, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int64])
def test_integer_label_dtypes_index_not_mask(dtype):
    head = build_head("cosface", 4, 3)
    emb = torch.randn(2, 4)
    labels = torch.tensor([1, 1])
    torch.testing.assert_close(head.logits(emb, labels.to(dtype)), head.logits(emb, labels))
    torch.testing.assert_close(head(emb, labels.to(dtype)), head(emb, labels))


def test_errors():
    head = build_head("cosface", 8, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\); got range \[0, 5\]"):
        head(torch.randn(2, 8), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        head(torch.randn(2, 8), torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="integer"):
        head(torch.randn(2, 8), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must be \(2,\)"):
        head(torch.randn(2, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        head(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="no hyper-parameter 'marign'; it accepts: scale, margin, straight_through"):
        build_head("arcface", 8, 5, marign=0.3)
    with pytest.raises(TypeError, match="'straight_through'"):
        build_head("cosface", 8, 5, straight_through=True)
    with pytest.raises(KeyError, match="known: a_softmax, am_softmax, arcface, combined, cosface"):
        build_head("nohead", 8, 5)


def test_registry_aliases_defaults_and_weight():
    assert {"arcface", "cosface", "am_softmax"} <= set(HEADS.names())
    assert HEADS.get("cosface") is HEADS.get("am_softmax") is CosFace
    arc, cos = build_head("arcface", 12, 9), build_head("am_softmax", 12, 9)
    assert isinstance(arc, ArcFace) and isinstance(cos, MarginHead)
    assert (arc.scale, arc.margin, arc.straight_through) == (64.0, 0.5, False)
    assert (cos.scale, cos.margin) == (64.0, 0.35)
    assert arc.weight.shape == (9, 12)
    torch.manual_seed(0)
    big = build_head("cosface", 64, 1000)
    assert big.weight.std().item() == pytest.approx(0.01, rel=0.02)
