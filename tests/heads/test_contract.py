"""The contract every registered head and wrapper keeps, checked over the registries: built by
name, float64 gradients equal to finite differences, finite at cos = +-1, bf16 autocast giving
float32 logits, a state_dict round trip. The formulas themselves are checked per head file."""

import pytest
import torch

from otface.heads import HEAD_WRAPPERS, HEADS, build_head
from otface.registry import accepted_parameters
from support.embeddings import labelled_embeddings

COMBINED = [(1.0, 0.3, 0.2), (0.9, 0.4, 0.15), (1.35, 0.0, 0.0), (0.8, 0.5, 0.1), (4.0, 0.0, 0.1)]
CASES = [  # (head, hyper, wrapper, wrapper params): every head and wrapper, and variants that change the code path
    ("softmax", {}, None, {}), ("softmax", {"bias": False}, None, {}),
    ("normface", {}, None, {}), ("normface", {"learn_scale": True}, None, {}),
    ("sphereface", {"margin": 2, "base": 5.0, "gamma": 1.0}, None, {}),
    ("sphereface", {"margin": 4, "base": 5.0, "gamma": 1.0}, None, {}),
    ("cosface", {}, None, {}), ("am_softmax", {"margin": 0.4}, None, {}),
    ("arcface", {"margin": 0.5}, None, {}), ("arcface", {"margin": 1.2}, None, {}),
    *[("combined", {"m1": m1, "m2": m2, "m3": m3}, None, {}) for m1, m2, m3 in COMBINED],
    ("curricular", {}, None, {}),
    *[(f"elastic_{kind}", {"sigma": 0.1}, None, {}) for kind in ("arc", "cos", "arc_plus", "cos_plus")],
    *[(name, {"adaptive": adaptive}, None, {}) for name in ("mv_am", "mv_arc") for adaptive in (True, False)],
    ("arcface", {}, "focal", {"gamma": 2.0}), ("cosface", {}, "focal", {"gamma": 0.5}),
    ("sphereface", {}, "focal", {"gamma": 2.0}),
    ("arcface", {}, "hm", {"ratio": 0.5}), ("cosface", {}, "hm", {"ratio": 0.5}),
]
IDS = [f"{w + '-' if w else ''}{name}-{'-'.join(f'{k}={v}' for k, v in hyper.items())}"
       for name, hyper, w, _ in CASES]
# CurricularFace's t is detached by design (its authors' rule): gradients are checked at a fixed t
FIXED_STATE = {"curricular": {"t": 0.3}}


def build(case, embedding_size, num_classes, **extra):
    name, hyper, wrapper, wrapper_params = case
    return build_head(name, embedding_size, num_classes, wrapper, wrapper_params, **hyper, **extra)


def inner_name(head) -> str:
    return next(n for n in HEADS.names() if isinstance(getattr(head, "head", head), HEADS.get(n)))


def test_every_registered_head_and_wrapper_is_covered():
    names = {HEADS.get(name) for name, *_ in CASES}
    assert names == {HEADS.get(n) for n in HEADS.names()}
    assert {w for _, _, w, _ in CASES if w} == set(HEAD_WRAPPERS.names())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_equal_finite_differences_in_float64(case):
    torch.manual_seed(1)
    small = {"scale": 4.0} if "scale" in accepted_parameters(HEADS.get(case[0])) else {}  # smooth enough for
    head = build(case, 6, 4, **small).double()  # finite differences
    fixed = FIXED_STATE.get(case[0])
    if fixed:
        head.eval()
    emb, labels = labelled_embeddings(head, n=8, n_close=2, n_opposite=2, seed=1)
    emb = emb.double().requires_grad_(True)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in head.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in head.named_buffers()}
    for n in buffers:
        if fixed and n.split(".")[-1] in fixed:
            buffers[n].fill_(fixed[n.split(".")[-1]])
    names = list(params)

    def loss(e, *values):
        torch.manual_seed(13)  # a random margin draw (ElasticFace) is the same in every evaluation
        state = dict(zip(names, values)) | {n: b.clone() for n, b in buffers.items()}  # state updates start afresh
        return torch.func.functional_call(head, state, (e, labels))

    assert torch.autograd.gradcheck(loss, (emb, *params.values()))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_loss_and_gradients_at_cos_plus_minus_one(case, sign, dtype):
    torch.manual_seed(14)
    head = build(case, 8, 3).to(dtype)
    emb = (sign * 5 * head.weight.detach().clone()).requires_grad_(True)  # |x| = 5 for SphereFace's norm
    loss = head(emb, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert all(torch.isfinite(b).all() for b in head.buffers() if b.is_floating_point())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bf16_autocast_gives_float32_logits(case):
    """Under bf16 autocast: float32 logits equal to those of the upcast embeddings (evaluation
    mode: no random margins, no state update), finite loss and gradients in both modes."""
    torch.manual_seed(3)
    head, backbone = build(case, 16, 10), torch.nn.Linear(12, 16)
    x, labels = torch.randn(8, 12), torch.randint(0, 10, (8,))
    for training in (False, True):
        head.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = backbone(x)
            logits, loss = head.logits(emb, labels), head(emb, labels)
        assert emb.dtype == torch.bfloat16
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and torch.isfinite(loss)
        if not training:
            torch.testing.assert_close(logits, head.logits(emb.float(), labels))
        loss.backward()
        assert torch.isfinite(head.weight.grad).all() and torch.isfinite(backbone.weight.grad).all()
        head.zero_grad()
        backbone.zero_grad()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_gives_the_same_head(case):
    torch.manual_seed(4)
    head = build(case, 8, 5)
    emb, labels = labelled_embeddings(head, n=12, seed=4)
    for _ in range(3):  # state that training changes (t, iteration counts) is part of the round trip
        head(emb, labels)
    copy = build(case, 8, 5)
    copy.load_state_dict(head.state_dict())
    for training in (False, True):
        head.train(training), copy.train(training)
        torch.manual_seed(5)
        want = head(emb, labels)
        torch.manual_seed(5)
        torch.testing.assert_close(copy(emb, labels), want, rtol=0, atol=0)
    assert inner_name(copy) == inner_name(head)
