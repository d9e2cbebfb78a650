"""TrainConfig: YAML load/save, typed key=value overrides, clear errors naming the key."""
from pathlib import Path

import pytest

from ciap_lib.config import TrainConfig, load_config, parse_override, save_config


def test_defaults_are_the_original_training_recipe():
    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.optimizer, cfg.lr, cfg.lr_step_size) == (32, "adam", 1e-3, 10)
    assert cfg.model == "default" and cfg.data == "data/synthetic"
    assert cfg.model_overrides() == {}


def test_yaml_round_trip_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: debug\nepochs: 3\nlr: 0.01\nimage_size: 48\n")
    cfg = load_config(path, ["epochs=5", "freeze_backbone=true", "run_name=123"], batch_size=8)
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.image_size, cfg.batch_size) == ("debug", 5, 0.01, 48, 8)
    assert cfg.freeze_backbone is True and cfg.run_name == "123"
    assert cfg.model_overrides() == {"image_size": 48, "freeze_backbone": True}
    out = save_config(cfg, tmp_path / "sub" / "saved.yaml")
    assert load_config(out) == cfg


def test_int_accepted_for_float_and_null_for_optional():
    assert parse_override("lr=1") == ("lr", 1.0)
    assert parse_override("image_size=null") == ("image_size", None)
    assert parse_override("grad_clip=0.5") == ("grad_clip", 0.5)


@pytest.mark.parametrize("item, words", [
    ("bogus=1", ["unknown config key", "'bogus'"]),
    ("epochs=abc", ["'epochs'", "int"]),
    ("epochs=1.5", ["'epochs'", "int"]),
    ("lr=fast", ["'lr'", "float"]),
    ("freeze_backbone=3", ["'freeze_backbone'", "bool"]),
    ("epochs", ["key=value"]),
])
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(ValueError) as e:
        load_config(None, [item])
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nimagesize: 64\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'imagesize'"):
        load_config(path)
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="'batch_size' expects int"):
        TrainConfig.from_dict({"batch_size": "32"})


def test_experiment_yaml_gives_its_train_section_and_data_root():
    """``train --config experiments/default.yaml`` trains what the pipeline's notebook 02 trains."""
    import yaml
    from ciap_lib.config import load_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"
    exp = yaml.safe_load(path.read_text())
    cfg = load_config(path, ["epochs=1"])
    assert cfg.data == exp["data"]["root"]
    assert cfg.model == exp["train"]["model"] and cfg.epochs == 1
    assert cfg.batch_size == exp["train"]["batch_size"]
