import pytest
import yaml

from otface.config import Config, ConfigError, describe, load_config, parse_overrides, save_config


def test_defaults_are_the_dataclass_defaults():
    assert load_config().to_dict() == Config().to_dict()


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.2, "epochs": 3}, "head": {"name": "cosface"}}))
    cfg = load_config(path, ["optim.lr=0.05", "head.params={scale: 30, margin: 0.4}"])
    assert cfg.optim.lr == 0.05
    assert cfg.optim.epochs == 3
    assert cfg.head.name == "cosface"
    assert cfg.head.params == {"scale": 30, "margin": 0.4}


def test_int_accepted_for_float_and_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=1"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, message",
    [
        (["optim.lrr=0.1"], "unknown config key(s) optim.lrr"),
        (["nosuch.key=1"], "unknown config key(s) nosuch"),
        (["optim.lr=fast"], "optim.lr: expected float"),
        (["optim.epochs=2.5"], "optim.epochs: expected int"),
        (["data.flip=1"], "data.flip: expected true/false"),
        (["optim"], "not of the form key=value"),
        (["data.sampler=balanced"], "data.sampler must be"),
        (["optim.batch_size=30"], "multiple of data.images_per_identity"),
        (["ot.grad=implicit"], "ot.grad must be"),
    ],
)
def test_bad_keys_and_values_are_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(path)


def test_parse_overrides_nests_and_parses_yaml_values():
    tree = parse_overrides(["a.b.c=3", "a.d=[1, 2]", "e=text"])
    assert tree == {"a": {"b": {"c": 3}, "d": [1, 2]}, "e": "text"}


def test_every_key_is_documented():
    rows = list(describe())
    assert len(rows) == len({r[0] for r in rows}) > 30
    assert all(help_text for _, _, _, help_text in rows)
