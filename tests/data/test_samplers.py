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


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        PKBatchSampler(np.zeros(10, dtype=int), 10, 3)
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler(np.zeros(40, dtype=int), 8, 4)
    with pytest.raises(ValueError, match="start_batch"):
        RandomBatchSampler(10, 5).set_epoch(0, start_batch=3)
