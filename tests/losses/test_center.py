import datetime
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist

from otface.losses.center import CenterLoss


def batch(n=20, dim=6, num_classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(num_classes, (n,), generator=g)


def reference_loss(emb, labels, centers):
    """1/2 mean_i ||x_i - c_{y_i}||^2 (Eq. 2 divided by the batch size, as the authors' Caffe layer),
    one sample at a time in float64."""
    total = 0.0
    for x, y in zip(emb.double(), labels.tolist()):
        total = total + 0.5 * sum((x[k] - centers[y, k].double()) ** 2 for k in range(len(x)))
    return total / len(emb)


def reference_update(emb, labels, centers, alpha):
    """c_j <- c_j - alpha * sum_i [y_i=j](c_j - x_i) / (1 + sum_i [y_i=j]), class by class."""
    new = centers.double().clone()
    for j in range(len(centers)):
        members = [i for i, y in enumerate(labels.tolist()) if y == j]
        delta = sum((centers[j].double() - emb[i].double() for i in members), torch.zeros(centers.shape[1],
                                                                                       dtype=torch.float64))
        new[j] = centers[j].double() - alpha * delta / (1 + len(members))
    return new


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_gradient_and_update_match_the_paper(dtype):
    loss_fn = CenterLoss(6, 5, alpha=0.5)
    emb, labels = batch(dtype=dtype)
    emb.requires_grad_()
    before = loss_fn.centers.clone()
    want_value = reference_loss(emb.detach(), labels, before)
    want_centers = reference_update(emb.detach(), labels, before, 0.5)
    loss = loss_fn(emb, labels)
    assert loss.dtype == dtype and loss.ndim == 0
    assert loss.item() == pytest.approx(want_value.item(), rel=1e-6)
    loss.backward()
    ref_emb = emb.detach().double().requires_grad_()
    reference_loss(ref_emb, labels, before).backward()
    torch.testing.assert_close(emb.grad.double(), ref_emb.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss_fn.centers.double(), want_centers, rtol=1e-6, atol=1e-6)
    absent = sorted(set(range(5)) - set(labels.tolist()))
    assert torch.equal(loss_fn.centers[absent], before[absent])


def test_loss_uses_the_centers_before_the_update():
    loss_fn = CenterLoss(4, 3)
    emb, labels = batch(8, 4, 3)
    want = reference_loss(emb, labels, loss_fn.centers.clone())
    assert loss_fn(emb, labels).item() == pytest.approx(want.item())
    assert loss_fn(emb, labels).item() < want.item()  # the centers moved towards the features


def test_no_gradient_to_the_centers_and_no_update_in_eval():
    loss_fn = CenterLoss(4, 3)
    assert not loss_fn.centers.requires_grad and list(loss_fn.parameters()) == []
    emb, labels = batch(8, 4, 3)
    before = loss_fn.centers.clone()
    loss_fn.eval()
    loss_fn(emb, labels)
    assert torch.equal(loss_fn.centers, before)
    with torch.no_grad():  # the training-mode update does not depend on autograd being on
        loss_fn.train()(emb, labels)
    assert not torch.equal(loss_fn.centers, before)


def test_alpha_one_moves_a_lone_sample_halfway_and_alpha_zero_freezes():
    # one sample of class j: delta c_j = (c_j - x) / 2
    x = torch.tensor([[1.0, 2.0, 3.0]])
    for alpha, frac in [(1.0, 0.5), (0.0, 0.0), (0.5, 0.25)]:
        loss_fn = CenterLoss(3, 2, alpha=alpha)
        c = loss_fn.centers[1].clone()
        loss_fn(x, torch.tensor([1]))
        torch.testing.assert_close(loss_fn.centers[1], c + frac * (x[0] - c))


def test_state_dict_resumes_the_centers():
    a, b = CenterLoss(4, 3), CenterLoss(4, 3)
    emb, labels = batch(8, 4, 3, dtype=torch.float32)
    a(emb, labels)
    assert "centers" in a.state_dict()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(emb, labels), b(emb, labels)) and torch.equal(a.centers, b.centers)


def test_initialisation_is_the_authors_xavier_filler():
    torch.manual_seed(0)
    loss_fn = CenterLoss(48, 200)
    bound = math.sqrt(3 / 48)
    assert loss_fn.centers.dtype == torch.float32 and loss_fn.centers.shape == (200, 48)
    assert loss_fn.centers.abs().max() <= bound and loss_fn.centers.abs().max() > 0.95 * bound


def test_gradcheck():
    loss_fn = CenterLoss(3, 4).double().eval()
    emb, labels = batch(6, 3, 4)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb.requires_grad_(),))


def test_bf16_autocast_is_float32_and_finite():
    loss_fn = CenterLoss(8, 5)
    emb, labels = batch(16, 8, 5, dtype=torch.float32)
    emb = (100 * emb).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(emb, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite() and emb.grad.isfinite().all()
    assert loss_fn.centers.dtype == torch.float32 and loss_fn.centers.isfinite().all()


def test_empty_batch_is_zero_and_connected():
    emb = torch.zeros(0, 4, requires_grad=True)
    loss = CenterLoss(4, 3)(emb, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and emb.grad.shape == (0, 4)


@pytest.mark.parametrize("emb, labels, match", [
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), r"\(N, 4\)"),
    (torch.randn(4), torch.zeros(4, dtype=torch.long), r"\(N, 4\)"),
    (torch.randn(4, 4), torch.zeros(3, dtype=torch.long), r"labels must be \(4,\)"),
    (torch.randn(4, 4), torch.zeros(4), "integer"),
    (torch.randn(4, 4), torch.zeros(4, dtype=torch.bool), "integer"),
    (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), r"\[0, 3\)"),
    (torch.randn(4, 4), torch.tensor([0, -1, 2, 1]), r"\[0, 3\)"),
    (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, dtype=torch.long), "float"),
])
def test_bad_inputs(emb, labels, match):
    with pytest.raises(TypeError if match in ("integer", "float") else ValueError, match=match):
        CenterLoss(4, 3)(emb, labels)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(4, 3, alpha=1.5)
    with pytest.raises(ValueError, match="embedding_size"):
        CenterLoss(0, 3)


def distributed_worker(rank: int, world_size: int, init_method: str, tmp: str) -> None:
    """One gloo process: the loss on its contiguous share of the global batch saved by the parent
    (training mode), then its centers and loss value written to ``tmp/rank{rank}.pt``."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        setup = torch.load(os.path.join(tmp, "setup.pt"))
        loss_fn = CenterLoss(6, 5).double()
        loss_fn.load_state_dict(setup["state"])
        emb, labels = (t.chunk(world_size)[rank] for t in (setup["emb"], setup["labels"]))
        loss = loss_fn(emb, labels)
        torch.save({"centers": loss_fn.centers, "loss": loss.detach()}, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_update_uses_the_global_batch(tmp_path):
    loss_fn = CenterLoss(6, 5).double()
    emb, labels = batch(20, 6, 5)
    torch.save({"state": loss_fn.state_dict(), "emb": emb, "labels": labels}, tmp_path / "setup.pt")
    before = loss_fn.centers.clone()
    torch.multiprocessing.spawn(distributed_worker, nprocs=2,
                                args=(2, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)))
    want_centers = reference_update(emb, labels, before, 0.5)
    loss_fn(emb, labels)  # the single-process update on the whole batch
    torch.testing.assert_close(loss_fn.centers, want_centers)
    local_only = CenterLoss(6, 5).double()
    local_only.load_state_dict({"centers": before})
    local_only(emb[:10], labels[:10])
    assert not torch.allclose(local_only.centers, want_centers)  # the test tells the two apart
    outs = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert torch.equal(outs[0]["centers"], outs[1]["centers"])
    torch.testing.assert_close(outs[0]["centers"], loss_fn.centers)
    for out, e, y in zip(outs, emb.chunk(2), labels.chunk(2)):  # the loss is the local mean
        assert out["loss"].item() == pytest.approx(reference_loss(e, y, before).item(), rel=1e-12)
