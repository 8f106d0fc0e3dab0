import numpy as np
import pytest

from otface.data.samplers import PKBatchSampler, RandomBatchSampler


def test_random_sampler_is_a_permutation_per_epoch():
    s = RandomBatchSampler(103, 10, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 10
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == 100 and flat.max() < 103
    s.set_epoch(1)
    assert list(s) != batches


def test_pk_batches_hold_k_images_of_p_identities():
    labels = np.repeat(np.arange(20), [3, 5, 8, 2, 6] * 4)
    s = PKBatchSampler(labels, batch_size=12, images_per_identity=4, seed=0)
    assert len(s) == len(labels) // 12
    for batch in s:
        groups = labels[np.asarray(batch)].reshape(3, 4)
        assert (groups == groups[:, :1]).all()
        # identities with >= K images are sampled without replacement
        for row, idx in zip(groups, np.asarray(batch).reshape(3, 4)):
            if (labels == row[0]).sum() >= 4:
                assert len(set(idx.tolist())) == 4


@pytest.mark.parametrize("cls_args", [("random",), ("pk",)])
def test_resume_mid_epoch_continues_the_same_order(cls_args):
    labels = np.repeat(np.arange(30), 6)
    make = (lambda: RandomBatchSampler(len(labels), 12, seed=3)) if cls_args[0] == "random" else \
        (lambda: PKBatchSampler(labels, 12, 3, seed=3))
    full = make()
    full.set_epoch(2)
    expected = list(full)
    resumed = make()
    resumed.set_epoch(2, start_batch=5)
    assert len(resumed) == len(expected) - 5
    assert list(resumed) == expected[5:]


LABELS = np.repeat(np.arange(40), [3, 5, 8, 2, 6] * 8)


def make_sampler(kind, **kw):
    """A sampler over LABELS with global batch size 24 (= 2 x 3 x 4, K = 4)."""
    if kind == "random":
        return RandomBatchSampler(len(LABELS), 24, seed=5, **kw)
    return PKBatchSampler(LABELS, 24, 4, seed=5, **kw)


def rank_slices(kind, world_size, epoch=0, start_batch=0):
    """[rank][step] -> that rank's indices, for every rank of a world of ``world_size``."""
    ranks = []
    for rank in range(world_size):
        s = make_sampler(kind, rank=rank, world_size=world_size)
        s.set_epoch(epoch, start_batch)
        assert s.local_batch_size == 24 // world_size and len(s) == s.num_batches - start_batch
        ranks.append(list(s))
    return ranks


@pytest.mark.parametrize("kind", ["random", "pk"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("epoch, start_batch", [(0, 0), (3, 4)])
def test_ranks_split_the_single_process_batches(kind, world_size, epoch, start_batch):
    single = make_sampler(kind)
    single.set_epoch(epoch, start_batch)
    expected = list(single)
    ranks = rank_slices(kind, world_size, epoch, start_batch)
    assert all(len(r) == len(expected) for r in ranks)
    for step, batch in enumerate(expected):
        assert all(len(r[step]) == 24 // world_size for r in ranks)
        assert sum((r[step] for r in ranks), []) == batch


@pytest.mark.parametrize("world_size", [2, 3])
def test_pk_identity_groups_stay_on_one_rank(world_size):
    ranks = rank_slices("pk", world_size)
    for step in range(len(ranks[0])):
        for r in ranks:
            labels = LABELS[np.asarray(r[step])]
            # each label of the slice comes in runs of K, and a rank holds whole groups only
            assert (labels.reshape(-1, 4) == labels.reshape(-1, 4)[:, :1]).all()
            assert (np.unique(labels, return_counts=True)[1] % 4 == 0).all()


@pytest.mark.parametrize("make, match", [
    (lambda: RandomBatchSampler(100, 10, world_size=0), "world_size must be >= 1"),
    (lambda: RandomBatchSampler(100, 10, rank=2, world_size=2), r"rank 2 outside \[0, world_size=2\)"),
    (lambda: RandomBatchSampler(100, 10, rank=-1, world_size=2), "rank -1"),
    (lambda: RandomBatchSampler(100, 10, world_size=3), "not a multiple of world_size = 3"),
    (lambda: PKBatchSampler(LABELS, 24, 4, world_size=4), r"world_size x K = 4 x 4 = 16: .* multiple of 16"),
    (lambda: PKBatchSampler(LABELS, 24, 4, world_size=5), "world_size x K = 5 x 4 = 20"),
    (lambda: PKBatchSampler(LABELS, 24, 0), "images_per_identity"),
])
def test_bad_distributed_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        PKBatchSampler(np.zeros(10, dtype=int), 10, 3)
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler(np.zeros(40, dtype=int), 8, 4)
    with pytest.raises(ValueError, match="start_batch"):
        RandomBatchSampler(10, 5).set_epoch(0, start_batch=3)
