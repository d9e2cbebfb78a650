"""TrainConfig: YAML load/save, typed key=value overrides, value checks, clear errors naming the key."""
import typing
from pathlib import Path

import pytest

from ciap_lib.config import TrainConfig, load_config, parse_override, parse_value, save_config


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


# ------------------------------------------------------------------------------------ one parser for overrides
@pytest.mark.parametrize("text, tp, expected", [
    ("007", str, "007"), ("007", str | None, "007"), ("null", str | None, None),
    ("1e-3", float, 1e-3), ("2", float, 2.0), ("-1", int, -1), ("1_000", int, 1000),
    ("true", bool, True), ("no", bool | None, False), ("null", int | None, None),
    ("[a.png, b.png]", list, ["a.png", "b.png"]), ("a.png", list, ["a.png"]),
    ("1e-3", typing.Any, 1e-3), ("abc", typing.Any, "abc"), ("[1, 2]", typing.Any, [1, 2]),
])
def test_parse_value_follows_the_type_the_key_takes(text, tp, expected):
    v = parse_value(text, tp)
    assert v == expected and type(v) is type(expected)


def test_train_set_and_run_p_and_flags_share_the_parser():
    assert parse_override("run_name=007") == ("run_name", "007")
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("grad_clip=null") == ("grad_clip", None)
    assert load_config(None, ["lr=1e-3", "run_name=007"]).run_name == "007"


# ------------------------------------------------------------------------------------ values, not only types
@pytest.mark.parametrize("key, value, words", [
    ("epochs", -1, ["epochs", "-1", "positive"]),
    ("batch_size", 0, ["batch_size", "positive"]),
    ("lr", 0.0, ["lr", "positive"]),
    ("lr_gamma", 1.5, ["lr_gamma", "(0, 1]"]),
    ("weight_decay", -0.1, ["weight_decay", ">= 0"]),
    ("model", "nope", ["model", "'nope'", "debug", "seed"]),
    ("optimizer", "sgd", ["optimizer", "'sgd'", "adam", "adamw"]),
    ("lr_schedule", "linear", ["lr_schedule", "'linear'", "cosine", "step"]),
    ("loss", "triplet", ["loss", "'triplet'", "infonce"]),
    ("device", "gpu", ["device", "'gpu'", "cuda:N"]),
    ("run_name", "a b", ["run_name", "'a b'"]),
    ("image_backbone", "vgg", ["image_backbone", "'vgg'", "resnet18"]),
    ("audio_encoder", "wav2vec", ["audio_encoder", "'wav2vec'", "logmel_cnn"]),
    ("grad_clip", 0.0, ["grad_clip", "positive"]),
    ("image_backbone", "timm/not_a_timm_model", ["image_backbone", "timm does not know", "not_a_timm_model"]),
    ("image_pretrained", "pretrained", ["image_pretrained", "'pretrained'", "'imagenet'"]),  # default ResNet18
    ("head", "transformer", ["head", "'transformer'", "linear", "mlp"]),
    ("head_width", 0, ["head_width", "positive"]),
    ("unfreeze_last", 0, ["unfreeze_last", "positive"]),
    ("cosine_weight", -1.0, ["cosine_weight", ">= 0"]),
    ("intra_weight", -1.0, ["intra_weight", ">= 0"]),
    ("word_weight", -1.0, ["word_weight", ">= 0"]),
    ("backbone_loss", "head", ["backbone_loss", "'head'", "'all'", "'words'"]),
    ("backbone_loss", "words", ["backbone_loss", "word_weight > 0"]),  # words alone, with no word loss
    ("feature_precision", "fp16", ["feature_precision", "'fp16'", "bf16"]),
])
def test_check_names_the_key_the_value_and_what_is_allowed(key, value, words):
    cfg = TrainConfig.from_dict({key: value})
    with pytest.raises(ValueError) as e:
        cfg.check(prefix="train.")
    msg = str(e.value)
    assert f"train.{key}" in msg or f"train.{words[0]}" in msg
    for w in words:
        assert w in msg, msg


def test_label_words_need_a_backbone_that_trains():
    TrainConfig.from_dict({"word_weight": 1.0, "backbone_loss": "words"}).check()
    with pytest.raises(ValueError, match="word_weight.*freeze_backbone=true"):
        TrainConfig.from_dict({"word_weight": 1.0, "freeze_backbone": True}).check()


def test_check_lists_every_problem_and_passes_good_configs(tmp_path):
    assert TrainConfig().check() == TrainConfig()
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"epochs": 0, "optimizer": "sgd", "loss": "cosine"}).check()
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and "'epochs'" in lines[0] and "'optimizer'" in str(e.value)
    assert "audio_encoder 'clap'" in str(e.value)  # cosine regression needs the frozen CLAP tower
    TrainConfig.from_dict({"loss": "cosine", "audio_encoder": "clap"}).check()
    with pytest.raises(ValueError, match="folder .*nowhere.* does not exist"):
        TrainConfig.from_dict({"data": str(tmp_path / "nowhere")}).check(check_paths=True)


def test_missing_pretrained_weights_are_named_by_check(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = TrainConfig.from_dict({"model": "seed"})
    cfg.check()  # without check_paths nothing is looked up on disk
    with pytest.raises(ValueError) as e:
        cfg.check(check_paths=True)
    msg = str(e.value)
    assert "resnet18" in msg and str(tmp_path / "torch") in msg and "download" in msg
    assert "image_pretrained=none" in msg


def test_new_image_side_keys_are_model_overrides_and_combinations_are_checked():
    cfg = load_config(None, ["image_backbone=timm/vit_base_patch32_clip_224.openai", "head=mlp", "head_depth=3",
                             "head_width=256", "unfreeze_last=2", "loss=infonce+cosine", "cosine_weight=0.5"])
    assert cfg.model_overrides() == {"image_backbone": "timm/vit_base_patch32_clip_224.openai", "head": "mlp",
                                     "head_depth": 3, "head_width": 256, "unfreeze_last": 2}
    with pytest.raises(ValueError) as e:
        cfg.check()
    assert "infonce+cosine" in str(e.value) and "audio_encoder 'clap'" in str(e.value)
    with pytest.raises(ValueError, match="unfreeze_last.*freeze_backbone is true"):
        TrainConfig.from_dict({"freeze_backbone": True, "unfreeze_last": 1}).check()
    TrainConfig.from_dict({"model": "clip_mapper", "loss": "infonce+cosine"}).check()  # weights not looked up


def test_image_augmentation_with_a_frozen_cached_backbone_is_an_error():
    from ciap_lib.config import IMAGE_AUGMENT_KEYS

    assert IMAGE_AUGMENT_KEYS == ("augment_image",)
    for value, bad in [("crop", True), ("affine,jitter", True), ("", False), ("none", False)]:
        cfg = TrainConfig.from_dict({"freeze_backbone": True, "augment_image": value})
        if bad:
            with pytest.raises(ValueError, match="augment_image.*freeze_backbone=true.*cached"):
                cfg.check()
        else:
            cfg.check()
    TrainConfig.from_dict({"freeze_backbone": False, "augment_image": "crop,affine,jitter"}).check()
    with pytest.raises(ValueError, match="augment_image.*freeze_backbone=true.*cached"):
        TrainConfig.from_dict({"model": "clip_mapper", "augment_image": "crop"}).check()


def test_augmentation_keys_default_off_and_parse_from_the_command_line():
    cfg = TrainConfig()
    assert cfg.augment_audio == "" and cfg.augment_image == ""
    assert parse_override("augment_audio=gain,noise") == ("augment_audio", "gain,noise")
    cfg = load_config(None, ["augment_audio=gain,noise", "augment_image=crop, jitter", "noise_snr_db_min=0",
                             "specaug_time_mask=5"])
    assert cfg.check() is cfg and cfg.noise_snr_db_min == 0.0 and cfg.specaug_time_mask == 5
    assert load_config(None, ["augment_audio="]).augment_audio == ""


@pytest.mark.parametrize("kw, words", [
    ({"augment_audio": "gain,chorus"}, ["augment_audio", "'chorus'", "gain", "reverb", "specaugment"]),
    ({"augment_image": "flip"}, ["augment_image", "'flip'", "crop", "affine", "jitter"]),
    ({"noise_snr_db_min": 30.0, "noise_snr_db_max": 10.0}, ["noise_snr_db_min", "noise_snr_db_max", "30.0"]),
    ({"speed_perturb": 0.7}, ["speed_perturb", "0.7", "[0, 0.5]"]),
    ({"crop_scale_min": 0.0}, ["crop_scale_min", "(0, 1]"]),
    ({"affine_degrees": 200.0}, ["affine_degrees", "200.0", "[0, 180]"]),
    ({"affine_scale": 1.0}, ["affine_scale", "1.0", "[0, 1)"]),
    ({"tilt_max": 1.0}, ["tilt_max", "1.0", "[0, 1)"]),
    ({"reverb_rt60_max": 0.0}, ["reverb_rt60_max", "[0.05, 5]"]),
    ({"gain_db": -1.0}, ["gain_db", ">= 0"]),
    ({"specaug_freq_mask": -2}, ["specaug_freq_mask", ">= 0"]),
    ({"augment_audio": "noise", "audio_encoder": "clap"}, ["augment_audio", "audio_encoder 'clap'", "cached"]),
    ({"augment_audio": "gain,specaugment", "audio_encoder": "mlp"}, ["augment_audio", "specaugment", "log-mel",
                                                                    "'mlp'"]),
])
def test_bad_augmentation_settings_are_named_by_check(kw, words):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(kw).check(prefix="train.")
    msg = str(e.value)
    assert f"train.{words[0]}" in msg
    for w in words:
        assert w in msg, msg
    TrainConfig.from_dict({"augment_audio": "gain,noise", "audio_encoder": "mlp"}).check()  # waveform parts: fine
