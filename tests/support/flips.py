"""The random flip of a training set's items, checked the same way for every data set."""

from typing import Callable

import torch


def assert_flips_both_ways(item: Callable[[], torch.Tensor], plain: torch.Tensor, mirrored: torch.Tensor,
                           draws: int = 40) -> None:
    """Every seeded draw of ``item()`` is exactly ``plain`` or ``mirrored``, and both occur."""
    torch.manual_seed(0)
    seen = set()
    for _ in range(draws):
        x = item()
        if torch.equal(x, plain):
            seen.add("plain")
        else:
            torch.testing.assert_close(x, mirrored, rtol=0, atol=0)
            seen.add("mirror")
    assert seen == {"plain", "mirror"}
