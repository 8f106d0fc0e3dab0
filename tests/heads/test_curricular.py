import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.arcface import ArcFace
from otface.heads.curricular import CurricularFace
from support.embeddings import labelled_embeddings


def reference_step(emb, weight, labels, s, m, t_prev, momentum=0.01):
    """Float64 CurricularFace, written plainly: t is updated first, then used; negatives above the
    target logit T (ArcFace's, fallback included) become cos_j (t + cos_j). Returns (logits, t)."""
    x = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    t = momentum * np.mean([cos[i, y] for i, y in enumerate(labels.tolist())]) + (1 - momentum) * t_prev
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        theta = math.acos(max(-1.0, min(1.0, cos[i, y])))
        target = math.cos(theta + m) if theta + m < math.pi else cos[i, y] - m * math.sin(m)
        for j in range(cos.shape[1]):
            if j == y:
                out[i, j] = target
            elif cos[i, j] > target:
                out[i, j] = cos[i, j] * (t + cos[i, j])
    return s * out, t


def inputs(head, n=40, n_close=10, n_opposite=6, seed=0):
    return labelled_embeddings(head, n, n_close, n_opposite, 0.3 / head.embedding_size**0.5, seed)


def test_logits_and_t_follow_the_authors_rule_step_by_step():
    torch.manual_seed(0)
    s, m = 64.0, 0.5
    head = CurricularFace(16, 7)
    emb, labels = inputs(head)
    cos_y = F.cosine_similarity(emb, head.weight.detach()[labels]).double()
    assert (cos_y < math.cos(math.pi - m)).sum() >= 3  # the fallback is exercised
    t = 0.0
    for step in range(3):
        e = emb + 0.1 * step * torch.randn(emb.shape, generator=torch.Generator().manual_seed(step))
        ref, t = reference_step(e, head.weight, labels, s, m, t)
        got = head.logits(e, labels)
        assert got.dtype == torch.float32
        assert head.t.item() == pytest.approx(t, abs=1e-7)
        np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=1e-4 * s)
    ref, t = reference_step(emb, head.weight, labels, s, m, t)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    assert head.t.item() == pytest.approx(t, abs=1e-7)


def test_the_reweighting_uses_the_t_updated_by_this_batch():
    torch.manual_seed(1)
    head = CurricularFace(16, 7, scale=8.0, momentum=0.5)
    emb, labels = inputs(head, n_close=20)
    ref_after, t_after = reference_step(emb, head.weight, labels, 8.0, 0.5, 0.0, momentum=0.5)
    ref_before, _ = reference_step(emb, head.weight, labels, 8.0, 0.5, 0.0, momentum=0.0)  # t stays 0
    got = head.logits(emb, labels).detach().double().numpy()
    assert t_after > 0.1 and head.t.item() == pytest.approx(t_after, abs=1e-7)
    np.testing.assert_allclose(got, ref_after, atol=1e-5)
    assert np.abs(got - ref_before).max() > 0.1


def test_hard_negatives_are_judged_against_the_target_logit_used():
    """Past theta_y = pi - m the target is ArcFace's fallback cos - m sin m, below cos(theta_y + m);
    a negative in between is hard here (the authors' code, comparing with cos(theta_y + m), would not)."""
    head = CurricularFace(2, 2, scale=1.0).eval()
    head.t.fill_(0.5)
    head.weight.data = torch.tensor([[1.0, 0.0], [math.cos(0.05), math.sin(0.05)]])
    emb = torch.tensor([[math.cos(math.pi - 0.1), math.sin(math.pi - 0.1)]])
    cos_y, cos_j = math.cos(math.pi - 0.1), math.cos(math.pi - 0.15)
    target = cos_y - 0.5 * math.sin(0.5)
    assert target < cos_j < math.cos(math.pi - 0.1 + 0.5)
    got = head.logits(emb, torch.tensor([0]))[0].tolist()
    assert got == pytest.approx([target, cos_j * (0.5 + cos_j)], abs=1e-6)


def test_eval_mode_keeps_t_and_uses_it():
    torch.manual_seed(2)
    head = CurricularFace(16, 7)
    emb, labels = inputs(head)
    head.t.fill_(0.4)
    head.eval()
    got = head.logits(emb, labels)
    head(emb, labels)
    assert head.t.item() == pytest.approx(0.4)
    ref, _ = reference_step(emb, head.weight, labels, 64.0, 0.5, 0.4, momentum=0.0)
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=1e-4 * 64)


def test_checkpoint_carries_t():
    torch.manual_seed(3)
    head = CurricularFace(8, 5)
    emb, labels = inputs(head, n=12, n_close=4, n_opposite=2)
    for _ in range(4):
        head(emb, labels)
    state = head.state_dict()
    assert set(state) == {"weight", "t"} and state["t"].item() != 0
    resumed = CurricularFace(8, 5)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.logits(emb, labels), head.logits(emb, labels))
    torch.testing.assert_close(resumed.t, head.t)


def test_gradcheck_float64():
    """t is detached by design, so the gradient is checked at a fixed t (eval mode), and the
    training-mode gradient must equal it once t holds this batch's value."""
    torch.manual_seed(6)
    head = CurricularFace(6, 4, scale=4.0).double().eval()
    emb, labels = inputs(head, n=8, n_close=2, n_opposite=2, seed=6)
    emb = emb.double().requires_grad_(True)
    weight = head.weight.detach().clone().requires_grad_(True)

    def loss(e, w):
        state = {"weight": w, "t": torch.tensor(0.3, dtype=torch.float64)}
        return torch.func.functional_call(head, state, (e, labels))

    assert torch.autograd.gradcheck(loss, (emb, weight))

    train = CurricularFace(6, 4, scale=4.0).double()
    train.load_state_dict(head.state_dict())
    (g_train,) = torch.autograd.grad(train(emb, labels), emb)
    head.t.copy_(train.t)
    (g_eval,) = torch.autograd.grad(head(emb, labels), emb)
    torch.testing.assert_close(g_train, g_eval)


def test_defaults_and_repr():
    head = CurricularFace(8, 4)
    assert isinstance(head, ArcFace)
    assert (head.scale, head.margin, head.momentum, head.t.item()) == (64.0, 0.5, 0.01, 0.0)
    assert repr(head) == "CurricularFace(embedding_size=8, num_classes=4, scale=64.0, margin=0.5, momentum=0.01)"
    with pytest.raises(TypeError):
        CurricularFace(8, 4, straight_through=True)
