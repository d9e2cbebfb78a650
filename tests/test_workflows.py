"""workflows: fit / evaluate_checkpoint dispatch — core for waveform encoders, the bridge for 'clap'."""
import subprocess
import sys

import pytest

from ciap_lib.config import load_config
from ciap_lib.synthetic import make_synthetic_dataset
from ciap_lib.workflows import evaluate_checkpoint, fit, resolve_split, resolved_audio_encoder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("wf") / "syn", n_train=16, n_val=8, image_size=32)


def test_resolved_audio_encoder():
    assert resolved_audio_encoder(load_config(None, model="clap_aligned")) == "clap"
    assert resolved_audio_encoder(load_config(None, model="clap_aligned", audio_encoder="mlp")) == "mlp"
    assert resolved_audio_encoder(load_config(None, model="seed")) == "mlp"


def test_waveform_modes_stay_in_core(data, tmp_path):
    cfg = load_config(None, data=str(data), model="debug", epochs=1, batch_size=8, num_workers=0,
                      ckpt_dir=str(tmp_path / "ckpt"))
    result = fit(cfg)
    metrics = evaluate_checkpoint(result.checkpoint)  # data defaults to the training data
    assert metrics["val_loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-5)
    assert resolve_split(data, "val") == (data, "val") and resolve_split(data / "val", "val") == (data / "val", None)


def test_core_and_workflows_never_import_the_upper_layers():
    code = ("import sys, ciap_lib.config, ciap_lib.models, ciap_lib.losses, ciap_lib.checkpoint, ciap_lib.train, "
            "ciap_lib.distributed, ciap_lib.workflows, ciap_lib.cli.train, ciap_lib.cli.evaluate; "
            "bad = [m for m in ('audioldm', 'diffusers', 'mlflow', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_clap_mode_goes_through_the_bridge(data, tmp_path, tiny_audioldm_ckpt, tiny_audioldm):
    cfg = load_config(None, data=str(data), model="debug", audio_encoder="clap", epochs=1, batch_size=8,
                      num_workers=0, ckpt_dir=str(tmp_path / "ckpt"), audioldm=str(tiny_audioldm_ckpt),
                      clap_cache_dir=str(tmp_path / "clap"))
    result = fit(cfg)
    assert any((tmp_path / "clap").rglob("*")), "CLAP features were cached by the bridge"
    metrics = evaluate_checkpoint(result.checkpoint, data, audioldm=tiny_audioldm)  # same weights, loaded once
    assert metrics["val_loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-4)
    assert metrics["n_pairs"] == 8
