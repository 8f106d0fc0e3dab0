import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.base import MarginHead
from otface.heads.softmax import Softmax


def reference_logits(emb, weight, bias):
    """Float64 W x + b written as plain loops."""
    x, w = emb.detach().double().numpy(), weight.detach().double().numpy()
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().numpy()
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            out[i, j] = sum(x[i, k] * w[j, k] for k in range(x.shape[1])) + b[j]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_loss_match_a_linear_classifier(bias):
    torch.manual_seed(0)
    head = Softmax(6, 5, bias=bias)
    assert isinstance(head, MarginHead) and head.weight.shape == (5, 6)
    if bias:
        assert head.bias.shape == (5,) and not head.bias.detach().any()
        head.bias.data.normal_()
    else:
        assert head.bias is None and list(dict(head.named_parameters())) == ["weight"]
    emb = 3 * torch.randn(9, 6)  # not normalised: the norm matters
    labels = torch.randint(0, 5, (9,))
    ref = reference_logits(emb, head.weight, head.bias)
    got = head.logits(emb, labels)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=1e-5, atol=1e-6)
    ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
    assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(head.double().logits(emb.double(), labels).detach().numpy(), ref, rtol=1e-12)


def test_label_checks_and_repr():
    head = Softmax(4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        head.logits(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError):
        Softmax(4, 3, scale=2.0)
    labels = torch.tensor([1, 1])
    emb = torch.randn(2, 4)
    torch.testing.assert_close(head.logits(emb, labels.to(torch.uint8)), head.logits(emb, labels))
    assert repr(head) == "Softmax(embedding_size=4, num_classes=3, bias=True)"
