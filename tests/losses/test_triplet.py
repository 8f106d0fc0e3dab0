import pytest
import torch

from otface.losses.triplet import TripletLoss


def batch(n=24, dim=6, num_classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(num_classes, (n,), generator=g)


def sq_dist(u, v):
    return sum((u[k] - v[k]) ** 2 for k in range(len(u)))


def reference_loss(emb, labels, margin, mining):
    """Brute force in float64: the triplets of FaceNet semi-hard mining (TensorFlow's fallback to the
    farthest negative) or of Hermans' batch-hard mining, then the mean hinge."""
    u = [x / x.norm() for x in emb.double()]
    y = labels.tolist()
    n = len(u)
    d = [[sq_dist(u[i], u[j]) for j in range(n)] for i in range(n)]
    hinges = []
    for a in range(n):
        pos = [p for p in range(n) if y[p] == y[a] and p != a]
        neg = [k for k in range(n) if y[k] != y[a]]
        if not neg:
            continue
        if mining == "semi_hard":
            for p in pos:
                farther = [k for k in neg if d[a][k].item() > d[a][p].item()]
                k = (min(farther, key=lambda k: d[a][k].item()) if farther
                     else max(neg, key=lambda k: d[a][k].item()))
                hinges.append(torch.relu(d[a][p] - d[a][k] + margin))
        elif pos:
            p = max(pos, key=lambda p: d[a][p].item())
            k = min(neg, key=lambda k: d[a][k].item())
            hinges.append(torch.relu(d[a][p] - d[a][k] + margin))
    return sum(hinges) / len(hinges) if hinges else torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_match_brute_force(mining, margin, dtype):
    emb, labels = batch(dtype=dtype)
    emb = (emb * torch.linspace(0.5, 3, len(emb), dtype=dtype)[:, None]).requires_grad_()  # norms vary
    loss = TripletLoss(margin=margin, mining=mining)(emb, labels)
    assert loss.dtype == dtype and loss.ndim == 0
    loss.backward()
    ref = emb.detach().double().requires_grad_()
    want = reference_loss(ref, labels, margin, mining)
    want.backward()
    assert want.item() > 0
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.double(), want.detach(), **tol)
    torch.testing.assert_close(emb.grad.double(), ref.grad, **tol)


def test_semi_hard_picks_the_closest_farther_negative_and_falls_back_to_the_farthest():
    # 2-D unit vectors at known angles; anchor 0, positive 1 at 40 degrees
    def unit(deg):
        t = torch.tensor(deg, dtype=torch.float64).deg2rad()
        return torch.stack([t.cos(), t.sin()])

    labels = torch.tensor([0, 0, 1, 2, 3])
    # negatives at 10 (harder than the positive), 50 (semi-hard), 60 (farther); anchor 1 sees all
    # three negatives closer than its positive 0, so it falls back to the farthest, 2
    emb = torch.stack([unit(0), unit(40), unit(10), unit(60), unit(50)])
    d = lambda i, j: float(((emb[i] - emb[j]) ** 2).sum())  # noqa: E731
    loss_fn = TripletLoss(margin=0.5)
    dist = (2 - 2 * emb @ emb.T).clamp_min(0)
    assert loss_fn.mine(dist, labels).tolist() == [[0, 1, 4], [1, 0, 2]]
    want = (max(d(0, 1) - d(0, 4) + 0.5, 0) + max(d(1, 0) - d(1, 2) + 0.5, 0)) / 2
    assert loss_fn(emb, labels).item() == pytest.approx(want)
    # every negative closer than the positive: the farthest of them (TensorFlow's rule)
    emb = torch.stack([unit(0), unit(90), unit(10), unit(20), unit(30)])
    dist = (2 - 2 * emb @ emb.T).clamp_min(0)
    assert loss_fn.mine(dist, labels)[0].tolist() == [0, 1, 4]


def test_batch_hard_picks_the_farthest_positive_and_closest_negative():
    labels = torch.tensor([0, 0, 0, 1, 1])
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    dist = (2 - 2 * emb @ emb.T).clamp_min(0)
    got = TripletLoss(mining="batch_hard").mine(dist, labels).tolist()
    assert got == [[0, 2, 3], [1, 0, 3], [2, 0, 3], [3, 4, 2], [4, 3, 2]]


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
@pytest.mark.parametrize("labels", [torch.arange(6), torch.zeros(6, dtype=torch.long), torch.tensor([3]),
                                    torch.zeros(0, dtype=torch.long)])
def test_no_triplet_gives_a_connected_zero(mining, labels):
    emb = torch.randn(len(labels), 4, requires_grad=True)
    loss = TripletLoss(mining=mining)(emb, labels)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_anchors_without_a_negative_or_positive_are_skipped():
    # class 0 has two samples, class 1 one: the anchor of class 1 has no positive
    emb, _ = batch(3, 4)
    labels = torch.tensor([0, 0, 1])
    for mining in ("semi_hard", "batch_hard"):
        loss_fn = TripletLoss(mining=mining)
        assert loss_fn.mine((2 - 2 * torch.eye(3)), labels)[:, 0].tolist() == [0, 1]
        assert loss_fn(emb, labels).item() == pytest.approx(reference_loss(emb, labels, 0.2, mining).item())


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_gradcheck(mining):
    emb, labels = batch(8, 3, 3, seed=2)
    loss_fn = TripletLoss(margin=0.5, mining=mining)
    assert loss_fn(emb, labels).item() > 0
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb.requires_grad_(),))


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_bf16_autocast_and_degenerate_embeddings(mining):
    emb, labels = batch(16, 8, 4, dtype=torch.float32)
    emb[1] = emb[0]  # identical pair
    emb[2] = -emb[0]  # opposite pair (cos = -1)
    emb[3] = 0.0  # a zero embedding
    emb = emb.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TripletLoss(mining=mining)(emb, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite() and emb.grad.isfinite().all()


@pytest.mark.parametrize("emb, labels, match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), r"\(N, E\)"),
    (torch.randn(4, 3), torch.zeros(3, dtype=torch.long), r"labels must be \(4,\)"),
    (torch.randn(4, 3), torch.zeros(4), "integer"),
    (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), "float"),
])
def test_bad_inputs(emb, labels, match):
    with pytest.raises(TypeError if match in ("integer", "float") else ValueError, match=match):
        TripletLoss()(emb, labels)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)
