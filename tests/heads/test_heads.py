import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads import HEADS, build_head


def reference_logits(name, emb, weight, labels, s, m):
    """Float64 re-implementation of the published formulas, independent of otface.heads."""
    x = emb.double().numpy()
    w = weight.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = x @ w.T
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        c = cos[i, y]
        if name == "arcface":
            theta = math.acos(max(-1.0, min(1.0, c)))
            # insightface fallback where theta + m > pi: cos(theta) - m * sin(m)
            out[i, y] = math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)
        else:
            out[i, y] = c - m
    return s * out


@pytest.mark.parametrize("name, s, m", [("arcface", 64.0, 0.5), ("arcface", 30.0, 1.2), ("cosface", 64.0, 0.35),
                                        ("am_softmax", 30.0, 0.4)])
def test_logits_and_loss_match_the_formula(name, s, m):
    torch.manual_seed(0)
    head = build_head(name, 16, 7, scale=s, margin=m)
    emb = torch.randn(40, 16)
    labels = torch.randint(0, 7, (40,))
    # put some samples near the negative of their class weight: theta + m > pi
    emb[:5] = -head.weight.detach()[labels[:5]] + 0.01 * torch.randn(5, 16)
    ref = reference_logits("arcface" if name == "arcface" else "cosface", emb, head.weight.detach(), labels, s, m)
    got = head.logits(emb, labels)
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=2e-4 * s)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_gradcheck(name):
    torch.manual_seed(1)
    head = build_head(name, 6, 4, scale=8.0).double()
    emb = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])
    # cosine() casts to float32; check the gradient of the float64 path through margin() directly
    cos = torch.rand(5, dtype=torch.float64) * 1.8 - 0.9
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(head.margin, (cos,))
    head(emb.float(), labels).backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", ["arcface", "cosface"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_gradients_at_cos_plus_minus_one(name, sign):
    head = build_head(name, 8, 3)
    labels = torch.tensor([0, 1, 2])
    emb = (sign * head.weight.detach().clone()).requires_grad_(True)
    loss = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_straight_through_keeps_value_changes_gradient():
    torch.manual_seed(2)
    emb = torch.randn(6, 8)
    labels = torch.randint(0, 4, (6,))
    true = build_head("arcface", 8, 4)
    st = build_head("arcface", 8, 4, straight_through=True)
    st.load_state_dict(true.state_dict())
    torch.testing.assert_close(true.logits(emb, labels), st.logits(emb, labels))
    cos = torch.linspace(-0.9, 0.9, 7, requires_grad=True)
    st.margin(cos).sum().backward()
    torch.testing.assert_close(cos.grad, torch.ones(7))  # gradient of plain cos(theta)


def test_bf16_autocast_gives_float32_logits():
    head = build_head("arcface", 16, 10)
    emb = torch.randn(8, 16)
    labels = torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.logits(emb.bfloat16(), labels)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, head.logits(emb.bfloat16().float(), labels))


def test_errors():
    head = build_head("cosface", 8, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        head(torch.randn(2, 8), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        head(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="marign"):
        build_head("arcface", 8, 5, marign=0.3)
    with pytest.raises(KeyError, match="known: am_softmax, arcface, cosface"):
        build_head("nohead", 8, 5)


def test_registry_aliases_and_weight_shape():
    assert type(HEADS.get("cosface")) is type(HEADS.get("am_softmax"))
    assert HEADS.get("cosface") is HEADS.get("am_softmax")
    assert build_head("arcface", 12, 9).weight.shape == (9, 12)
