"""PartialFC against the one-process full head on the same global batch, in float64: with 2 and 3
gloo processes (spawned here) every head and wrapper gives the full head's loss, gradients to the
embeddings and to every weight row, and state; sampled (r < 1) it gives the full formula
restricted to the sampled classes."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from otface.heads import build_head
from otface.heads.partial_fc import PartialFC, shard_bounds

E, C, B = 6, 11, 4  # embedding size, classes, samples per process
HEADS = [
    ("softmax", {}), ("normface", {"learn_scale": True, "scale": 8.0}), ("sphereface", {}),
    ("cosface", {"scale": 16.0}), ("arcface", {"scale": 16.0}), ("combined", {"scale": 16.0}),
    ("curricular", {"scale": 16.0, "momentum": 0.5}), ("elastic_arc", {"scale": 16.0}),
    ("elastic_cos_plus", {"scale": 16.0}), ("mv_am", {}), ("mv_arc", {}),
    ("focal_arcface", {"scale": 16.0}), ("hm_cosface", {"scale": 16.0, "ratio": 0.4}),
]
SAMPLE_RATE = 0.5


def global_batch(world_size):
    g = torch.Generator().manual_seed(7)
    emb = torch.randn(world_size * B, E, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (world_size * B,), generator=g)
    labels[: len(labels) // 2] = labels[len(labels) // 2 :].flip(0)  # classes that recur
    return emb, labels


def full_head(name, hyper, num_classes=C):
    torch.manual_seed(0)
    return build_head(name, E, num_classes, **hyper).double()


def sharded(name, hyper, rank, world_size, **kwargs):
    lo, hi = shard_bounds(C, rank, world_size)
    pfc = PartialFC(full_head(name, hyper, hi - lo), C, rank=rank, world_size=world_size,
                    group=dist.group.WORLD if world_size > 1 else None, **kwargs)
    pfc.load_full_state_dict(full_head(name, hyper).state_dict())
    return pfc


def param_grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def _worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    emb, labels = global_batch(world_size)
    mine = slice(rank * B, (rank + 1) * B)
    results = {}
    for name, hyper in HEADS:
        pfc = sharded(name, hyper, rank, world_size)
        x = emb[mine].clone().requires_grad_(True)
        torch.manual_seed(1)  # the elastic margins: one stream, the same on every process
        losses = [pfc(x, labels[mine]) for _ in range(2)]  # twice: state (t, iteration) carried on
        sum(losses).backward()
        pfc.sync_replicated_gradients()
        grads = [torch.empty_like(x.grad) for _ in range(world_size)]
        dist.all_gather(grads, x.grad)
        weight_grads = {n: pfc.gather_rows(g) if n in pfc.class_tables else g
                        for n, g in param_grads(pfc.head).items()}
        state = pfc.full_state_dict()
        results[name] = {"losses": [loss.item() for loss in losses], "emb_grad": torch.cat(grads),
                         "weight_grads": weight_grads, "state": state}
    pfc = sharded("arcface", {"scale": 16.0}, rank, world_size, sample_rate=SAMPLE_RATE, seed=3)
    pfc.draw_key = (0, 5)
    rows = pfc.sample_classes(labels)
    loss = pfc(emb[mine], labels[mine])
    sampled = [None] * world_size
    dist.all_gather_object(sampled, (pfc.lo + rows).tolist())
    results["sampled"] = {"loss": loss.item(), "classes": sampled}
    if rank == 0:
        torch.save(results, f"{out_dir}/results.pt")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3])
def distributed(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"world{request.param}")
    torch.multiprocessing.start_processes(_worker, args=(request.param, free_port(), str(out)),
                                          nprocs=request.param, start_method="fork")
    return request.param, torch.load(out / "results.pt")


@pytest.mark.parametrize("name, hyper", HEADS, ids=[n for n, _ in HEADS])
def test_sharded_head_equals_the_full_head(distributed, name, hyper):
    world_size, results = distributed
    got = results[name]
    emb, labels = global_batch(world_size)
    head = full_head(name, hyper)
    x = emb.clone().requires_grad_(True)
    torch.manual_seed(1)
    losses = [head(x, labels) for _ in range(2)]
    sum(losses).backward()
    assert got["losses"] == pytest.approx([loss.item() for loss in losses], rel=1e-12, abs=1e-12)
    torch.testing.assert_close(got["emb_grad"], x.grad, rtol=1e-10, atol=1e-12)
    want = param_grads(head)
    assert set(got["weight_grads"]) == set(want)
    for n, g in want.items():
        torch.testing.assert_close(got["weight_grads"][n], g, rtol=1e-10, atol=1e-12)
    assert set(got["state"]) == set(head.state_dict())
    for n, t in head.state_dict().items():
        torch.testing.assert_close(got["state"][n], t, rtol=1e-12, atol=1e-12)


def test_sampled_classes_hold_every_positive_and_the_loss_is_the_restricted_formula(distributed):
    world_size, results = distributed
    emb, labels = global_batch(world_size)
    got = results["sampled"]
    for rank, classes in enumerate(got["classes"]):
        lo, hi = shard_bounds(C, rank, world_size)
        positives = {y for y in labels.tolist() if lo <= y < hi}
        assert positives <= set(classes) <= set(range(lo, hi))
        assert len(classes) == max(len(positives), math.ceil(SAMPLE_RATE * (hi - lo)))
    kept = torch.tensor(sorted(c for classes in got["classes"] for c in classes))
    head = full_head("arcface", {"scale": 16.0})
    logits = head.logits(emb, labels)[:, kept]  # ArcFace's target margin, then only the sampled columns
    expected = F.cross_entropy(logits, torch.searchsorted(kept, labels))
    assert got["loss"] == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("name, hyper", HEADS, ids=[n for n, _ in HEADS])
def test_one_process_with_rate_one_is_the_full_head(name, hyper):
    emb, labels = global_batch(2)
    pfc, head = sharded(name, hyper, 0, 1), full_head(name, hyper)
    torch.manual_seed(1)
    got = pfc(emb, labels)
    torch.manual_seed(1)
    torch.testing.assert_close(got, head(emb, labels), rtol=1e-12, atol=1e-12)


def test_one_process_sampling_is_reproducible_and_covers_the_positives():
    emb, labels = global_batch(2)
    pfc = sharded("cosface", {}, 0, 1, sample_rate=0.3, seed=1)
    pfc.draw_key = (2, 9)
    first = pfc.sample_classes(labels)
    assert torch.equal(first, pfc.sample_classes(labels))
    assert set(labels.tolist()) <= set(first.tolist()) and len(first) == max(len(labels.unique()), 4)
    pfc.draw_key = (2, 10)
    draws = {tuple(pfc.sample_classes(labels).tolist()) for pfc.draw_key in [(2, k) for k in range(20)]}
    assert len(draws) > 1
    pfc.eval()
    assert pfc.sample_classes(labels) is None


def test_full_state_round_trip_and_errors():
    pfc = sharded("softmax", {}, 1, 3)
    assert pfc.class_tables == {"weight", "bias"} and (pfc.lo, pfc.hi) == (3, 7)
    full = full_head("softmax", {}).state_dict()
    torch.testing.assert_close(pfc.head.weight, full["weight"][3:7])
    with pytest.raises(ValueError, match="a class table of 5 rows, not 11"):
        pfc.load_full_state_dict({"weight": full["weight"][:5], "bias": full["bias"]})
    with pytest.raises(ValueError, match="sample_rate must lie in"):
        PartialFC(full_head("arcface", {}, 4), C, rank=1, world_size=3, sample_rate=0.0)
    with pytest.raises(ValueError, match="holds 5 classes; shard 1 of 3 holds 4"):
        PartialFC(full_head("arcface", {}, 5), C, rank=1, world_size=3)
    with pytest.raises(ValueError, match="cannot be split between 12"):
        PartialFC(full_head("arcface", {}, 1), C, rank=0, world_size=12)
    hm = sharded("hm_arcface", {}, 0, 2)
    assert hm.class_tables == {"head.weight"}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 11\)"):
        sharded("softmax", {}, 0, 1)(torch.zeros(2, E, dtype=torch.float64), torch.tensor([0, 11]))
