import pytest
import yaml

from otface.config import Config, ConfigError, SynthSection, describe, load_config, parse_overrides, save_config


def test_the_defaults_pass_validation_and_survive_a_yaml_round_trip(tmp_path):
    save_config(Config(), tmp_path / "defaults.yaml")  # validate() runs on load: pk batches, milestones...
    assert load_config(tmp_path / "defaults.yaml").to_dict() == Config().to_dict()


def test_null_switches_an_optional_setting_off(tmp_path):
    cfg = load_config(None, ["ot.tol=null", "ot.max_groups=null"])
    assert cfg.ot.tol is None and cfg.ot.max_groups is None
    cfg = load_config(None, ["ot.tol=1e-3", "ot.max_groups=16"])
    assert cfg.ot.tol == 1e-3 and cfg.ot.max_groups == 16
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").ot.tol == 1e-3


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
        (["data.sampler=balanced"], "data.sampler: must be one of 'random', 'pk'"),
        (["optim.batch_size=30"], "multiple of data.images_per_identity"),
        (["ot.grad=implicit"], "ot.grad: must be one of"),
        (["optim.lr=.inf"], "optim.lr: must be a finite number"),
        (["optim.lr=nan"], "optim.lr: must be a finite number"),
        (["optim.lr=-1e-3"], "optim.lr: must be > 0"),
        (["ot.eps=0"], "ot.eps: must be > 0"),
        (["train.checkpoint_steps=-1"], "train.checkpoint_steps: must be >= 0"),
        (["train.log_interval=0"], "train.log_interval: must be >= 1"),
        (["train.seed=-3"], "train.seed: must be >= 0"),
        (["optim.momentum=1.5"], "optim.momentum: must be < 1"),
        (["data.max_skip_fraction=2"], "data.max_skip_fraction: must be <= 1"),
        (["train.deterministic=2"], "train.deterministic: expected true/false"),
        (["optim.milestones=[5, .inf]"], "optim.milestones must be numbers > 0"),
        (["losses.center={weight: .nan}"], "losses.center must be"),
        (["optim.lr=[1"], "override 'optim.lr=[1': not a YAML value"),
        (["head.sample_rate=0"], "head.sample_rate: must be > 0"),
        (["head.sample_rate=1.5"], "head.sample_rate: must be <= 1"),
        (["train.compile=yes please"], "train.compile: expected true/false"),
        (["data.synthetic.num_identities=1"], "data.synthetic.num_identities: must be >= 2"),
        (["ot.tol=0"], "ot.tol: must be > 0"),
        (["ot.tol=fine"], "ot.tol: expected float"),
        (["ot.max_groups=0"], "ot.max_groups: must be >= 1"),
        (["ot.omega=2"], "ot.omega: must be < 2"),
        (["data.synthetic.num_pairs=30"], "num_pairs must be a positive multiple of 20 (10 balanced folds), got 30"),
    ],
)
def test_bad_keys_and_values_are_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_a_synthetic_section_built_directly_is_checked_too():
    with pytest.raises(ConfigError, match="num_pairs must be a positive multiple of 20.*got 30"):
        SynthSection(num_pairs=30)
    with pytest.raises(ConfigError, match="images_per_identity must be >= 1, got 5 and 0"):
        SynthSection(num_identities=5, images_per_identity=0)


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


def test_base_chain_merges_under_the_file(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "root.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.3, "epochs": 7}}))
    (tmp_path / "recipes" / "mid.yaml").write_text(
        yaml.safe_dump({"base": "root.yaml", "optim": {"epochs": 9}, "ot": {"weight": 0.0}}))
    (tmp_path / "method.yaml").write_text(yaml.safe_dump({"base": "recipes/mid.yaml", "ot": {"weight": 2.0}}))
    cfg = load_config(tmp_path / "method.yaml", ["optim.lr=0.01"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.ot.weight) == (0.01, 9, 2.0)


def test_circular_or_bad_base_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular base"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: [x]\n")
    with pytest.raises(ConfigError, match="base must be a file path"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("spec", ["{weight: -1}", "{weight: true}", "{weigth: 1}", "3", "{weight: 1, params: 2}"])
def test_bad_aux_loss_spec_is_an_error(spec):
    with pytest.raises(ConfigError, match="losses.center must be"):
        load_config(None, [f"losses.center={spec}"])


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1.0e6", 1e6), ("1E6", 1e6), ("2.5e+2", 250.0),
                                         (".5", 0.5), ("5.", 5.0), ("'1e-3'", 1e-3), ("1_000.5", 1000.5)])
def test_every_python_float_literal_is_a_float(text, value, tmp_path):
    assert load_config(None, [f"optim.lr={text}"]).optim.lr == value
    (tmp_path / "c.yaml").write_text(f"optim:\n  lr: {text}\n")
    assert load_config(tmp_path / "c.yaml").optim.lr == value


def test_exponent_floats_stay_floats_inside_mappings_and_lists():
    cfg = load_config(None, ["head.params={scale: 1e2, margin: 5e-1}", "optim.milestones=[1e1, 2e1]"])
    assert cfg.head.params == {"scale": 100.0, "margin": 0.5} and cfg.optim.milestones == [10.0, 20.0]


def test_list_keys_says_what_each_key_admits():
    helps = {key: help_text for key, _, _, help_text in describe()}
    assert helps["optim.lr"].endswith("[> 0]")
    assert helps["data.sampler"].endswith("[one of 'random', 'pk']")
    assert helps["data.max_skip_fraction"].endswith("[>= 0, <= 1]")
