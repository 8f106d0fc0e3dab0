import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.normface import NormFace


def reference_logits(emb, weight, s):
    """Float64 s * cos(theta_j), cosines written as plain loops."""
    x, w = emb.detach().double().numpy(), weight.detach().double().numpy()
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            out[i, j] = s * x[i] @ w[j] / math.sqrt((x[i] @ x[i]) * (w[j] @ w[j]))
    return out


@pytest.mark.parametrize("s, learn", [(30.0, False), (16.0, False), (10.0, True)])
def test_logits_and_loss_match_the_formula(s, learn):
    torch.manual_seed(0)
    head = NormFace(8, 6, scale=s, learn_scale=learn)
    emb, labels = torch.randn(12, 8), torch.randint(0, 6, (12,))
    ref = reference_logits(emb, head.weight, s)
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=2e-5 * s)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(head.double().logits(emb.double(), labels).detach().numpy(), ref, atol=1e-12 * s)


def test_defaults_and_fixed_scale():
    head = NormFace(8, 4)
    assert head.scale == 30.0 and not head.learn_scale
    assert list(dict(head.named_parameters())) == ["weight"] and list(head.state_dict()) == ["weight"]
    assert repr(head) == "NormFace(embedding_size=8, num_classes=4, scale=30, learn_scale=False)"


def test_learned_scale_is_a_parameter_with_the_analytic_gradient():
    torch.manual_seed(1)
    head = NormFace(8, 5, scale=10.0, learn_scale=True)
    assert isinstance(head.scale, torch.nn.Parameter) and head.scale.item() == 10.0
    assert set(head.state_dict()) == {"weight", "scale"}
    emb, labels = torch.randn(7, 8), torch.randint(0, 5, (7,))
    head(emb, labels).backward()
    # d/ds mean_i CE(s cos_i, y_i) = mean_i sum_j (softmax(s cos_i)_j - [j = y_i]) cos_ij
    cos = torch.from_numpy(reference_logits(emb, head.weight, 1.0))
    p = (10.0 * cos).softmax(1)
    expected = ((p - F.one_hot(labels, 5).double()) * cos).sum(1).mean().item()
    assert head.scale.grad.item() == pytest.approx(expected, rel=1e-4)
    # it trains, and it travels with the checkpoint
    head.scale.data.fill_(12.5)
    other = NormFace(8, 5, learn_scale=True)
    other.load_state_dict(head.state_dict())
    assert other.scale.item() == 12.5
    torch.testing.assert_close(other.logits(emb, labels), head.logits(emb, labels))
    assert "scale=12.5, learn_scale=True" in repr(other)


