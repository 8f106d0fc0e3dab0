import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otface.heads.arcface import ArcFace, additive_angular_margin
from otface.heads.cosface import CosFace
from otface.heads.elastic import ElasticArcFace, ElasticArcFacePlus, ElasticCosFace, ElasticCosFacePlus

HEADS = [ElasticArcFace, ElasticCosFace, ElasticArcFacePlus, ElasticCosFacePlus]
ARC = (ElasticArcFace, ElasticArcFacePlus)


def reference_target(kind_arc, c, m):
    """ElasticFace-Arc: cos(theta + m) while theta + m < pi, else ArcFace's cos(theta) - m sin(m);
    ElasticFace-Cos: cos(theta) - m."""
    if not kind_arc:
        return c - m
    theta = math.acos(max(-1.0, min(1.0, c)))
    return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)


def reference_logits(kind_arc, emb, weight, labels, s, margins):
    x = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    out = cos.copy()
    for i, y in enumerate(labels.tolist()):
        out[i, y] = reference_target(kind_arc, cos[i, y], float(margins[i]))
    return s * out


def at_angles(head, theta, seed=0):
    """Embeddings at the given angles (N,) to their class weights, random labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, head.num_classes, (len(theta),), generator=g)
    w = F.normalize(head.weight.detach()[labels], dim=1)
    u = torch.randn(len(theta), head.embedding_size, generator=g)
    u = F.normalize(u - (u * w).sum(1, keepdim=True) * w, dim=1)  # orthogonal to w
    theta = torch.as_tensor(theta, dtype=torch.float32).unsqueeze(1)
    return theta.cos() * w + theta.sin() * u, labels


def recovered_margins(head, emb, labels):
    """The margins a head applied, read back from its target logits (angles kept below pi - m)."""
    logit = head.logits(emb, labels).detach().double()[torch.arange(len(labels)), labels] / head.scale
    cos_y = F.cosine_similarity(emb.double(), head.weight.detach().double()[labels])
    if isinstance(head, ARC):
        return torch.acos(logit) - torch.acos(cos_y), cos_y
    return cos_y - logit, cos_y


@pytest.mark.parametrize("cls", [ElasticArcFace, ElasticCosFace])
def test_training_margins_are_normal_with_the_given_mean_and_std(cls):
    torch.manual_seed(0)
    head = cls(8, 5, sigma=0.05)
    n = 20000
    emb, labels = at_angles(head, torch.linspace(0.3, 2.0, n))
    torch.manual_seed(1)
    margins, _ = recovered_margins(head, emb, labels)
    margins = margins.numpy()
    assert abs(margins.mean() - head.margin) < 4 * 0.05 / math.sqrt(n)
    assert margins.std() == pytest.approx(0.05, rel=0.03)
    assert np.mean(np.abs(margins - head.margin) < 0.05) == pytest.approx(0.6827, abs=0.015)
    torch.manual_seed(1)
    again, _ = recovered_margins(head, emb, labels)
    np.testing.assert_allclose(again.numpy(), margins, atol=1e-12)
    fresh, _ = recovered_margins(head, emb, labels)
    assert np.abs(fresh.numpy() - margins).max() > 0.05


@pytest.mark.parametrize("cls", [ElasticArcFacePlus, ElasticCosFacePlus])
def test_plus_gives_the_largest_margins_to_the_lowest_target_cosines(cls):
    torch.manual_seed(2)
    head = cls(8, 5)
    emb, labels = at_angles(head, 0.3 + 1.7 * torch.rand(64, generator=torch.Generator().manual_seed(3)), seed=4)
    torch.manual_seed(5)
    margins, cos_y = recovered_margins(head, emb, labels)
    order = torch.argsort(cos_y)
    assert (margins[order].diff() <= 1e-5).all()
    assert margins[order[0]] - margins[order[-1]] > 2 * head.sigma

    torch.manual_seed(5)
    plain = torch.normal(head.margin, head.sigma, (64,)).double()
    np.testing.assert_allclose(np.sort(margins.numpy()), np.sort(plain.numpy()), atol=1e-5)

    ascending = torch.sort(plain).values
    authors = ascending[torch.argsort(cos_y, descending=True)]
    assert (authors[order].diff() > 1e-3).any()
    batch_sorted = torch.argsort(cos_y, descending=True)
    torch.manual_seed(5)
    ours_sorted, _ = recovered_margins(head, emb[batch_sorted], labels[batch_sorted])
    torch.testing.assert_close(ours_sorted, ascending, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", HEADS)
def test_logits_match_the_formula_given_the_drawn_margins(cls):
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(0)
    head = cls(16, 7, scale=30.0, sigma=0.1, generator=g)
    theta = torch.cat([torch.linspace(0.05, 2.0, 20), torch.linspace(2.5, 3.13, 12)])
    emb, labels = at_angles(head, theta, seed=7)
    emb = emb + 0.01 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(8))
    cos_y = head.cosine(emb).detach()[torch.arange(len(labels)), labels]
    for step in range(2):
        g.manual_seed(step)
        margins = head.draw_margins(cos_y).numpy()
        g.manual_seed(step)
        got = head.logits(emb, labels)
        assert got.dtype == torch.float32
        ref = reference_logits(cls in ARC, emb, head.weight, labels, 30.0, margins)
        np.testing.assert_allclose(got.detach().double().numpy(), ref, atol=2e-5 * 30)
        if cls in ARC:
            theta_y = np.arccos(np.clip(cos_y.double().numpy(), -1, 1))
            assert ((theta_y + margins) > math.pi).sum() >= 3 and ((theta_y + margins) < math.pi).sum() >= 3
        g.manual_seed(step)
        ref_loss = F.cross_entropy(torch.from_numpy(ref), labels).item()
        assert head(emb, labels).item() == pytest.approx(ref_loss, rel=1e-5)
    head64 = head.double()
    g.manual_seed(3)
    margins = head64.draw_margins(cos_y.double()).numpy()
    g.manual_seed(3)
    ref = reference_logits(cls in ARC, emb, head64.weight, labels, 30.0, margins)
    np.testing.assert_allclose(head64.logits(emb.double(), labels).detach().numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("cls, plain", [(ElasticArcFace, ArcFace), (ElasticCosFace, CosFace),
                                        (ElasticArcFacePlus, ArcFace), (ElasticCosFacePlus, CosFace)])
def test_eval_mode_uses_the_mean_margin_and_draws_nothing(cls, plain):
    torch.manual_seed(9)
    head = cls(16, 7).eval()
    emb, labels = at_angles(head, torch.linspace(0.05, 3.1, 30), seed=10)
    rng = torch.get_rng_state()
    first, second = head.logits(emb, labels), head.logits(emb, labels)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first, second)
    ref = reference_logits(cls in ARC, emb, head.weight, labels, 64.0, [head.margin] * 30)
    np.testing.assert_allclose(first.detach().double().numpy(), ref, atol=2e-5 * 64)
    fixed = plain(16, 7, margin=head.margin)
    fixed.load_state_dict(head.state_dict())
    torch.testing.assert_close(first, fixed.logits(emb, labels))


def test_a_generator_reproduces_the_draw_and_leaves_the_global_rng_alone():
    torch.manual_seed(17)
    head = ElasticCosFace(8, 5, generator=torch.Generator().manual_seed(0))
    emb, labels = torch.randn(50, 8), torch.randint(0, 5, (50,))
    rng = torch.get_rng_state()
    first = head.logits(emb, labels)
    assert torch.equal(torch.get_rng_state(), rng)
    head.generator.manual_seed(0)
    torch.testing.assert_close(head.logits(emb, labels), first)
    assert set(head.state_dict()) == {"weight"}


def test_additive_angular_margin_matches_arcface_and_takes_per_sample_margins():
    torch.manual_seed(18)
    cos = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    torch.testing.assert_close(additive_angular_margin(cos, 0.5), ArcFace(4, 2).margin_cos(cos))
    margins = torch.linspace(-0.3, 1.2, len(cos)).double()
    got = additive_angular_margin(cos, margins)
    ref = [reference_target(True, c, m) for c, m in zip(cos.tolist(), margins.tolist())]
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-6)


def test_defaults_validation_and_repr():
    expected = {ElasticArcFace: (0.5, 0.05, False), ElasticCosFace: (0.35, 0.05, False),
                ElasticArcFacePlus: (0.5, 0.0175, True), ElasticCosFacePlus: (0.35, 0.02, True)}
    for cls, (m, sigma, plus) in expected.items():
        head = cls(8, 4)
        assert (head.scale, head.margin, head.sigma, head.plus, head.generator) == (64.0, m, sigma, plus, None)
        assert repr(head) == f"{cls.__name__}(embedding_size=8, num_classes=4, scale=64.0, margin={m}, sigma={sigma})"
    assert isinstance(ElasticArcFacePlus(8, 4), ElasticArcFace)
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        ElasticArcFace(8, 4, sigma=-0.1)
    zero = ElasticArcFace(8, 4, sigma=0.0)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    fixed = ArcFace(8, 4)
    fixed.load_state_dict(zero.state_dict())
    torch.testing.assert_close(zero.logits(emb, labels), fixed.logits(emb, labels))
