"""The recipes ship inside the package and are found by name; one version; the licence file.
(.ci/run also installs a built wheel into a fresh environment and trains from a packaged recipe.)"""

import importlib.metadata
from pathlib import Path

import pytest
import yaml

import otface
from otface.cli import main
from otface.config import ConfigError, find_config, load_config, packaged_configs
from support.runs import TINY

ROOT = Path(__file__).parent.parent


def test_recipes_are_package_data_found_by_name_or_path(tmp_path):
    recipes = packaged_configs()
    assert {"synthetic_arcface", "ms1mv2_r100_otface_arcface", "recipes/ms1mv2_r100"} <= set(recipes)
    assert all(Path(otface.__file__).parent / "configs" in path.parents for path in recipes.values())
    named = recipes["ms1mv2_r100_arcface"]
    assert find_config("ms1mv2_r100_arcface") == find_config("ms1mv2_r100_arcface.yaml") == named
    own = tmp_path / "synthetic_arcface"  # a file of that name wins over the recipe
    own.write_text("optim: {lr: 0.3}\n")
    assert find_config(own) == own and load_config(own).optim.lr == 0.3
    cfg = load_config("ms1mv2_r100_otface_arcface")  # its base: chain resolves inside the package
    assert cfg.model.backbone == "iresnet100" and cfg.ot.weight == 1.0


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="--config nope: no such file, nor a packaged recipe .*synthetic_arcface"):
        find_config("nope")


def test_configs_lists_names_with_descriptions(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(packaged_configs())
    row = next(line for line in lines if line.startswith("ms1mv2_r100_otface_arcface "))
    assert "OTFace (ArcFace)" in row


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "synthetic_arcface", "--print-config", "optim.lr=0.05"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.05 and printed["ot"]["weight"] == 0.0
    assert load_config(None, []).to_dict().keys() == printed.keys()
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--config", "nope", "--print-config"]) == 2


def test_one_version_and_the_licence_file():
    assert otface.__version__ == importlib.metadata.version("otface")
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_print_config_of_a_resume_is_the_checkpoint_config_with_the_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = [*TINY, f"data.synthetic.cache_dir={tmp_path / 'cache'}", "optim.epochs=1", "ot.weight=0"]
    assert main(["train", "--out", str(out), *tiny]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--print-config", "optim.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["epochs"] == 3 and printed["model"]["embedding_size"] == 32
    assert main(["train", "--resume", "--out", str(out), "--print-config", "optim.lr=1"]) == 2  # not resumable
