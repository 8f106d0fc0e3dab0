import functools
import json

import pytest

from otface.config import load_config, packaged_configs
from otface.heads import build_head
from otface.losses import build_aux_loss
from otface.models import build_backbone

CONFIGS = [path for name, path in packaged_configs().items() if not name.startswith("recipes/")]


@functools.lru_cache(maxsize=None)
def stage_names(backbone: str, embedding_size: int, params: str) -> tuple[str, ...]:
    """Stages of a backbone, built once per distinct setting (IResNet-100 takes seconds)."""
    return tuple(build_backbone(backbone, embedding_size=embedding_size, **json.loads(params)).stage_names)


def test_configs_exist():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    build_head(cfg.head.name, cfg.model.embedding_size, 10, cfg.head.wrapper, cfg.head.wrapper_params,
               **cfg.head.params)
    for name, spec in cfg.losses.items():
        build_aux_loss(name, cfg.model.embedding_size, 10, **spec.get("params", {}))
    stages = stage_names(cfg.model.backbone, cfg.model.embedding_size, json.dumps(cfg.model.params, sort_keys=True))
    if cfg.ot.weight > 0:
        assert cfg.ot.stage in stages
