from pathlib import Path

import pytest

from otface.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    from otface.heads import build_head
    from otface.losses import build_aux_loss
    from otface.models import build_backbone

    cfg = load_config(path)
    build_head(cfg.head.name, cfg.model.embedding_size, 10, **cfg.head.params)
    for name, spec in cfg.losses.items():
        build_aux_loss(name, cfg.model.embedding_size, 10, **spec.get("params", {}))
    backbone = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size, **cfg.model.params)
    if cfg.ot.weight > 0:
        assert cfg.ot.stage in backbone.stage_names
