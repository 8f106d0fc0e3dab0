import numpy as np
import pytest
import torch

from otface.data.skipping import CatchBadSamples, collate_skipping
from otface.errors import DataError


class _Items:
    """Item i is (a (3, 2, 2) tensor filled with i, label i % 3); items in ``bad`` raise."""

    def __init__(self, n, bad, error=DataError):
        self.n, self.bad, self.error = n, set(bad), error
        self.labels = np.arange(n) % 3
        self.num_classes = 3

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise self.error(f"file {i}: broken")
        return torch.full((3, 2, 2), float(i)), int(self.labels[i])


def _bad(samples):
    return [(b.index, b.reason, type(b.error)) for b in samples]


def test_bad_items_become_bad_samples_and_leave_the_batch_with_their_label():
    data = CatchBadSamples(_Items(6, bad={1, 4}))
    assert len(data) == 6 and data.num_classes == 3
    np.testing.assert_array_equal(data.labels, np.arange(6) % 3)
    images, labels, bad = collate_skipping([data[i] for i in range(6)])
    assert _bad(bad) == [(1, "file 1: broken", DataError), (4, "file 4: broken", DataError)]
    kept = [0, 2, 3, 5]
    assert images[:, 0, 0, 0].tolist() == kept  # each image still carries its own label
    assert labels.tolist() == [i % 3 for i in kept]


def test_a_batch_of_only_bad_items_collates_to_none():
    data = CatchBadSamples(_Items(2, bad={0, 1}))
    images, labels, bad = collate_skipping([data[0], data[1]])
    assert images is None and labels is None and _bad(bad) == [(0, "file 0: broken", DataError),
                                                               (1, "file 1: broken", DataError)]


@pytest.mark.parametrize("error", [ValueError, KeyError, OSError])
def test_programming_errors_are_not_caught(error):
    """Only DataError means a bad sample: a plain ValueError (say, from a shape bug) propagates."""
    with pytest.raises(error):
        CatchBadSamples(_Items(2, bad={0}, error=error))[0]


def test_collate_applies_the_batch_transform_to_the_good_images_only():
    data = CatchBadSamples(_Items(4, bad={2}))
    images, labels, bad = collate_skipping([data[i] for i in range(4)], transform=lambda x: 2 * x + 1)
    assert images[:, 0, 0, 0].tolist() == [1.0, 3.0, 7.0] and labels.tolist() == [0, 1, 0]
    assert _bad(bad) == [(2, "file 2: broken", DataError)]
