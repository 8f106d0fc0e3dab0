import numpy as np
import pytest

from otface.synth import sample_nuisance


def test_unknown_level():
    with pytest.raises(ValueError, match="unknown level"):
        sample_nuisance(np.random.default_rng(0), "medium")
