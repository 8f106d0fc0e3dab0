import pytest
import torch
import torch.nn.functional as F

from otface.heads import ArcFace, CosFace, MarginHead, build_head
from otface.heads.focal import Focal
from otface.heads.hard_mining import HardMining, num_hardest
from support.embeddings import labelled_embeddings
from support.margin_reference import reference_logits


def reference_ce(logits, labels):
    """(N,) per-sample -log p_y, one sample at a time."""
    return torch.stack([torch.logsumexp(logits[i], 0) - logits[i, y] for i, y in enumerate(labels.tolist())])


def hardest_by_hand(ce, k):
    """Indices of the k largest losses, ties to the lower index."""
    return sorted(range(len(ce)), key=lambda i: (-ce[i], i))[:k]


class CountingHead(MarginHead):
    """NormFace with a state buffer counting its training-mode calls."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 8.0) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def observe(self, target: torch.Tensor) -> None:
        self.calls += 1


@pytest.mark.parametrize("kind, s, m", [("arcface", 64.0, 0.5), ("cosface", 30.0, 0.35)])
@pytest.mark.parametrize("ratio, kept", [(0.9, 36), (0.5, 20), (0.3, 12)])
def test_value_gradient_and_selection_match_sorting_by_hand(kind, s, m, ratio, kept):
    torch.manual_seed(0)
    head = build_head(f"hm_{kind}", 16, 7, ratio=ratio, scale=s, margin=m)
    emb, labels = labelled_embeddings(head, n=40, n_opposite=8)
    emb.requires_grad_(True)
    loss = head(emb, labels)
    loss.backward()

    e64 = emb.detach().double().requires_grad_(True)
    w64 = head.weight.detach().double().requires_grad_(True)
    ce = reference_ce(reference_logits(kind, e64, w64, labels, s, m), labels)
    hard = hardest_by_hand(ce.tolist(), kept)
    ref = sum(ce[i] for i in hard) / kept
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    # only the kept samples get a gradient
    assert emb.grad.abs().sum(1).nonzero().flatten().tolist() == sorted(hard)
    torch.testing.assert_close(emb.grad.double(), e64.grad, rtol=1e-3, atol=1e-5 * e64.grad.abs().max().item())
    torch.testing.assert_close(head.weight.grad.double(), w64.grad, rtol=1e-3,
                               atol=1e-5 * w64.grad.abs().max().item())


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
@pytest.mark.parametrize("wrapper, neutral", [("hm", {"ratio": 1.0}), ("focal", {"gamma": 0.0})])
def test_neutral_setting_is_plain_cross_entropy(kind, wrapper, neutral):
    """hm_ with ratio 1 and focal_ with gamma 0 are the wrapped head's own loss, value and gradients."""
    torch.manual_seed(1)
    head = build_head(f"{wrapper}_{kind}", 8, 5, **neutral)
    emb, labels = labelled_embeddings(head, n=12, n_opposite=3, seed=1)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    loss = head(e1, labels)
    loss.backward()
    grad_w = head.weight.grad.clone()
    head.weight.grad = None
    plain = F.cross_entropy(head.head.logits(e2, labels), labels)  # the wrapped head's own loss
    plain.backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(e1.grad, e2.grad)
    torch.testing.assert_close(grad_w, head.weight.grad)


def test_at_least_one_sample_is_kept():
    torch.manual_seed(2)
    hm = build_head("hm_cosface", 8, 5, ratio=0.01)
    emb, labels = labelled_embeddings(hm, n=5, n_opposite=1, seed=2)
    ce = reference_ce(reference_logits("cosface", emb, hm.weight.detach(), labels, 64.0, 0.35), labels)
    assert hm(emb, labels).item() == pytest.approx(ce.max().item(), rel=1e-5)


def test_ties_at_the_cut_keep_the_lower_index():
    hm = build_head("hm_cosface", 4, 4, ratio=0.5, scale=8.0)
    with torch.no_grad():
        hm.weight.copy_(torch.eye(4))
    # hardest: sample 0 (opposite its class); samples 1 and 2 identical; sample 3 easy
    emb = torch.tensor([[-1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.8, 0.0], [0.0, 1.0, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 3])
    ce = F.cross_entropy(hm.logits(emb, labels), labels, reduction="none")
    assert ce[0] > ce[1] == ce[2] > ce[3]
    emb.requires_grad_(True)
    loss = hm(emb, labels)
    loss.backward()
    torch.testing.assert_close(loss, (ce[0] + ce[1]) / 2)
    assert emb.grad.abs().sum(1).nonzero().flatten().tolist() == [0, 1]


@pytest.mark.parametrize("batch, ratio, kept", [(10, 0.9, 9), (512, 0.9, 460), (100, 0.29, 29), (3, 0.1, 1),
                                                (7, 1.0, 7), (1, 0.5, 1), (0, 0.5, 0)])
def test_number_kept(batch, ratio, kept):
    assert num_hardest(batch, ratio) == kept


@pytest.mark.parametrize("name, cls, margin", [("hm_arcface", ArcFace, 0.5), ("hm_cosface", CosFace, 0.35),
                                                ("hm_am_softmax", CosFace, 0.35)])
def test_build_by_name(name, cls, margin):
    head = build_head(name, 12, 9)
    assert isinstance(head, HardMining) and type(head.head) is cls
    assert head.ratio == 0.9 and (head.head.scale, head.head.margin) == (64.0, margin)
    assert head.weight is head.head.weight and head.weight.shape == (9, 12)
    custom = build_head(name, 12, 9, ratio=0.25, scale=30.0, margin=0.2)
    assert custom.ratio == 0.25 and (custom.head.scale, custom.head.margin) == (30.0, 0.2)


@pytest.mark.parametrize("wrap", [lambda h: HardMining(h, ratio=0.5), lambda h: Focal(h, gamma=2.0)])
def test_wrapper_keeps_the_head_interface_and_state(wrap):
    torch.manual_seed(5)
    head = wrap(CountingHead(8, 5))
    emb, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    assert head.weight is head.head.weight
    assert [n for n, _ in head.named_parameters()] == ["head.weight"]
    assert list(head.state_dict()) == ["head.weight", "head.calls"]
    torch.testing.assert_close(head.cosine(emb), head.head.cosine(emb))

    head(emb, labels).backward()  # one state update per call
    assert head.head.calls.item() == 1 and head.weight.grad is head.head.weight.grad
    head.logits(emb, labels)
    assert head.head.calls.item() == 2
    head.eval()
    head(emb, labels)
    assert not head.head.training and head.head.calls.item() == 2

    torch.optim.SGD(head.parameters(), lr=1.0).step()  # the optimiser moves the wrapped head's weight
    restored = wrap(CountingHead(8, 5))
    restored.load_state_dict(head.state_dict())
    assert restored.head.calls.item() == 2 and torch.equal(restored.weight, head.weight)
    head64 = head.double()
    assert head64.weight.dtype == torch.float64 and head64(emb.double(), labels).dtype == torch.float64


def test_errors():
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\]"):
            build_head("hm_arcface", 8, 5, ratio=ratio)
    with pytest.raises(TypeError, match="head 'hm_cosface' has no hyper-parameter 'gamma', 'raito'; "
                                        "it accepts: ratio, scale, margin"):
        build_head("hm_cosface", 8, 5, raito=0.5, gamma=2)
    with pytest.raises(KeyError, match="hm_ cannot wrap 'focal_cosface', wrappers do not stack; "
                                       "use focal_<name> or hm_<name> with a registered head"):
        build_head("hm_focal_cosface", 8, 5)
    with pytest.raises(KeyError, match="wrappers do not stack"):
        build_head("hm_hm_arcface", 8, 5)
    with pytest.raises(KeyError, match="unknown head 'hm'; known:"):
        build_head("hm", 8, 5)
