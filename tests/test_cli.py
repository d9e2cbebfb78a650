"""``python -m ciap_lib train`` / ``evaluate``: help, overrides, errors naming the key, metrics JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ciap_lib.cli import main
from ciap_lib.synthetic import make_synthetic_dataset


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ciap_lib", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, words", [("train", ["--config", "--data", "--set"]),
                                            ("evaluate", ["--checkpoint", "--data", "--json"]),
                                            ("convert-checkpoint", ["old", "new", "--trust", "weights_only=True"]),
                                            ("evaluate-generation", ["--checkpoint", "--split", "--n", "--batch-size",
                                                                     "--overwrite", "--device", "--audioldm"])])
def test_help(command, words):
    r = _cli(command, "--help")
    assert r.returncode == 0, r.stderr
    for w in words:
        assert w in r.stdout


def test_bad_set_names_the_key(capsys):
    assert main(["train", "--set", "epochz=3"]) == 2
    assert "'epochz'" in capsys.readouterr().err
    assert main(["train", "--set", "batch_size=big"]) == 2
    err = capsys.readouterr().err
    assert "'batch_size'" in err and "int" in err


def test_bad_config_file_names_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: [1, 2]\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "'epochs'" in err


def test_train_then_evaluate(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", n_train=32, n_val=16, image_size=32)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: debug\nepochs: 3\nbatch_size: 16\nnum_workers: 0\n")
    rc = main(["train", "--config", str(cfg), "--data", str(data),
               "--set", "epochs=1", f"ckpt_dir={tmp_path / 'ckpt'}", "--set", "run_name=cli",
               "--json", str(tmp_path / "train.json")])
    assert rc == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["epoch"] == 1.0  # --set beat the YAML
    ckpt = tmp_path / "ckpt" / "cli" / "last.pt"
    assert trained["checkpoint"] == str(ckpt)
    assert trained["best"]["epoch"] == 1 and trained["best"]["path"] == str(ckpt.with_name("best.pt"))
    capsys.readouterr()
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(tmp_path / "m.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "i2a_R@1" in out and "a2i_median_rank" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["val_loss"] == pytest.approx(trained["val_loss"], abs=1e-5)
    assert metrics["n_pairs"] == 16
    # a split folder given directly works too
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data / "val")]) == 0


def test_evaluate_errors_name_the_file(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_train_logs_to_mlflow_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=32)
    rc = main(["train", "--data", str(data), "--set", "model=debug", "epochs=1", "batch_size=8", "num_workers=0",
               f"ckpt_dir={tmp_path / 'ckpt'}", "--mlflow", "--experiment", "cli-test",
               "--json", str(tmp_path / "t.json")])
    assert rc == 0
    run_id = json.loads((tmp_path / "t.json").read_text())["mlflow_run_id"]
    from ciap_lib import tracking
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "debug" and "val_loss" in run.data.metrics


def test_missing_data_folder_is_named(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--set", "model=debug"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "'data'" in err


def test_missing_imagenet_weights_is_one_message_not_a_traceback(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "ciap_lib", "train", "--set", "model=seed", "epochs=1"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    assert "resnet18" in r.stderr and str(tmp_path / "torch") in r.stderr and "image_pretrained=none" in r.stderr


def test_every_bad_file_is_listed_once_with_the_skip_hint(tmp_path, capsys):
    from fixtures.odd_files import make_bad_case

    data = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=32)
    (data / "train" / "pairs.csv").unlink()                    # folder layout, so stray files count
    make_bad_case(data / "train", "zero_byte_wav")
    (data / "train" / "lonely.png").write_bytes((data / "train" / "ok.png").read_bytes())
    assert main(["train", "--data", str(data), "--set", "model=debug", "epochs=1", "batch_size=8",
                 f"ckpt_dir={tmp_path / 'ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert "2 bad file(s)" in err and "bad.wav" in err and "lonely.png" in err and "--set skip_bad=true" in err
    assert "Traceback" not in err


def _old_format(path):
    """A ciap-checkpoint/1 file of an untrained debug model, written the way format 1 was (plain torch.save)."""
    from ciap_lib.config import load_config
    from ciap_lib.models import create_model
    from fixtures.crafted import old_format_checkpoint

    cfg = load_config(None, ["model=debug", "audio_encoder=mlp"])
    return old_format_checkpoint(path, create_model(cfg.model, **cfg.model_overrides()), cfg)


@pytest.mark.parametrize("command", ["evaluate", "embed"])
def test_refused_checkpoint_is_one_clear_message(command, tmp_path, capsys):
    from fixtures.crafted import crafted_file

    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.pt", marker)
    old = _old_format(tmp_path / "old.pt")
    extra = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "emb")] if command == "embed" else []
    for path, words in ((evil, ["io.open"]), (old, ["numpy", f"convert-checkpoint {old}", "--trust"])):
        assert main([command, "--checkpoint", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{command}: error: {path}: refused to load") and "Traceback" not in err, err
        assert all(w in err for w in words), err
        assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_convert_checkpoint_cli(tmp_path, capsys, caplog):
    from ciap_lib.checkpoint import load_ciap
    from fixtures.crafted import crafted_file

    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.pt", marker)
    assert main(["convert-checkpoint", str(evil), str(tmp_path / "new.pt")]) == 2
    err = capsys.readouterr().err
    assert "evil.pt" in err and "--trust" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "new.pt").exists()

    old = _old_format(tmp_path / "old.pt")
    with caplog.at_level("WARNING", logger="ciap_lib.safe_load"):
        assert main(["convert-checkpoint", str(old), str(tmp_path / "new.pt"), "--trust"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "new.pt")
    assert any("old.pt" in r.getMessage() and "arbitrary code" in r.getMessage() for r in caplog.records)
    model, cfg = load_ciap(tmp_path / "new.pt")
    assert cfg.model == "debug" and model.config.audio_encoder == "mlp"


def test_clip_mapper_without_its_weights_stops_at_check_with_the_file_it_needs(tmp_path):
    """The V2A-Mapper setup needs CLIP's weights; without them `run --check` names the model, where it looked and
    how to get them (nothing is downloaded, nothing heavy starts)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HUB_OFFLINE": "1"}
    ldm = tmp_path / "ckpt" / "audioldm-s-full.ckpt"
    r = subprocess.run([sys.executable, "-m", "ciap_lib", "run", str(root / "experiments" / "clip_mapper.yaml"),
                        "-p", f"train.audioldm={ldm}", "--check"], capture_output=True, text=True, timeout=300,
                       env=env, cwd=root)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 3 and "2 bad parameters" in lines[0], r.stderr
    # the AudioLDM checkpoint, whose frozen CLAP audio tower is the target, is looked for too
    assert lines[2].lstrip().startswith("train.audioldm: AudioLDM checkpoint not found: " + str(ldm)), lines[2]
    assert f"python -m ciap_lib download audioldm-s-full --ckpt-dir {ldm.parent}" in lines[2]
    for words in ("train.image_pretrained", "vit_base_patch32_clip_224.openai",
                  str(tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"), "model.safetensors",
                  "hf download timm/vit_base_patch32_clip_224.openai", "image_weights=", "image_pretrained=none"):
        assert words in r.stderr, (words, r.stderr)
    assert "cache-features" in subprocess.run([sys.executable, "-m", "ciap_lib", "--help"], capture_output=True,
                                              text=True, timeout=300, cwd=root).stdout
