"""Building a run's parts from its config: the head, wrapped by ``head.wrapper``."""

import pytest
import torch

from otface.config import load_config
from otface.errors import ConfigError
from otface.heads import ArcFace, Focal, HardMining
from otface.train.components import build_class_head
from otface.train.distributed import SINGLE


@pytest.mark.parametrize("overrides, wrapper, param", [
    (["head.wrapper=focal", "head.wrapper_params={gamma: 0.5}"], Focal, ("gamma", 0.5)),
    (["head.wrapper=hm", "head.wrapper_params={ratio: 0.25}"], HardMining, ("ratio", 0.25)),
    (["head.name=focal_arcface", "head.params={gamma: 0.5, margin: 0.3}"], Focal, ("gamma", 0.5)),
])
def test_the_config_wraps_the_head(overrides, wrapper, param):
    head = build_class_head(load_config(None, overrides), SINGLE, 7, torch.device("cpu"))
    assert isinstance(head, wrapper) and isinstance(head.head, ArcFace)
    assert getattr(head, param[0]) == param[1]


@pytest.mark.parametrize("overrides, message", [
    (["head.wrapper=fancy"], "unknown head wrapper 'fancy'; known: focal, hm"),
    (["head.wrapper=focal", "head.wrapper_params={ratio: 0.5}"], "head wrapper 'focal' has no hyper-parameter 'ratio'"),
])
def test_a_bad_wrapper_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_class_head(load_config(None, overrides), SINGLE, 7, torch.device("cpu"))
