"""``python -m ciap_lib generate``: a folder of images -> one 16 kHz WAV each; clear errors."""
from __future__ import annotations

import soundfile as sf
import torch

from ciap_lib.cli import main


def test_generate_folder_one_wav_each(tiny_audioldm_ckpt, ciap_workspace, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((ciap_workspace["data"] / "val").glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    rc = main(["generate", "--image", str(folder), "--checkpoint", str(ciap_workspace["checkpoint"]),
               "--audioldm", str(tiny_audioldm_ckpt), "--out", str(out), "--duration", "2.5", "--steps", "2",
               "--clap-score"])
    assert rc == 0
    wavs = sorted(out.glob("*.wav"))
    assert [w.stem for w in wavs] == sorted(p.stem for p in folder.iterdir())
    for w in wavs:
        data, sr = sf.read(w)
        assert sr == 16000 and data.shape == (40000,)
    assert "clap_score=" in capsys.readouterr().out


def test_generate_bad_arguments(ciap_workspace, tmp_path, capsys):
    img = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    base = ["generate", "--image", str(img), "--checkpoint", str(ciap_workspace["checkpoint"]),
            "--audioldm", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x.wav")]
    assert main(base + ["--duration", "12"]) == 2
    assert "duration" in capsys.readouterr().err
    assert main(base) == 2  # missing AudioLDM checkpoint: where to put it, how to download
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "python -m ciap_lib download" in err


def test_generate_refused_audioldm_is_one_message(ciap_workspace, tmp_path, capsys):
    from fixtures.crafted import crafted_file

    marker = tmp_path / "pwned"
    evil = crafted_file(tmp_path / "evil.ckpt", marker)
    img = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    assert main(["generate", "--image", str(img), "--checkpoint", str(ciap_workspace["checkpoint"]),
                 "--audioldm", str(evil), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x.wav").exists()
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]  # (plus a note that the model is not 'clap')
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"generate: error: {evil}: refused to load") and "io.open" in errors[0]
    assert "--trust-checkpoint" in errors[0]
    # the CIAP checkpoint goes through the same refusal
    assert main(["generate", "--image", str(img), "--checkpoint", str(evil), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"generate: error: {evil}: refused to load") and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


def test_generate_trust_checkpoint_flag(tiny_audioldm_ckpt_numpy, ciap_workspace, tmp_path, capsys):
    img = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    base = ["generate", "--image", str(img), "--checkpoint", str(ciap_workspace["checkpoint"]),
            "--audioldm", str(tiny_audioldm_ckpt_numpy), "--out", str(tmp_path / "x.wav"),
            "--duration", "2.5", "--steps", "1"]
    assert main(base) == 2
    assert "numpy." in capsys.readouterr().err
    assert main(base + ["--trust-checkpoint"]) == 0
    assert sf.read(tmp_path / "x.wav")[0].shape == (40000,)


def test_generate_negative_mix_device_flags_reach_generate(tiny_audioldm, ciap_workspace, tiny_tokenizer_dir,
                                                            tmp_path, monkeypatch, capsys):
    import numpy as np

    import ciap_lib.bridge as bridge

    clip = tmp_path / "speech.wav"
    sf.write(clip, 0.3 * np.random.default_rng(1).standard_normal(16000), 16000)
    calls = []
    real = bridge.generate

    def recording(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(bridge, "load_audioldm", lambda *_a, **_k: tiny_audioldm)   # the session model: no reload
    monkeypatch.setattr(bridge, "generate", recording)
    img = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    out = tmp_path / "x.wav"
    rc = main(["generate", "--image", str(img), "--checkpoint", str(ciap_workspace["checkpoint"]),
               "--audioldm", "tiny.ckpt", "--out", str(out), "--duration", "2.5", "--steps", "1",
               "--negative", str(clip), "--mix", "text:rain:0.3", f"{clip}:0.2",
               "--tokenizer-dir", str(tiny_tokenizer_dir), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    kw = calls[-1]
    assert kw["negative"] == [str(clip)] and kw["mix"] == ["text:rain:0.3", f"{clip}:0.2"]
    assert kw["tokenizer_dir"] == str(tiny_tokenizer_dir) and kw["device"] == "cpu" and kw["negative_text"] is None
    # --precision auto (the default) reaches generate() as what it resolves to on this CPU, and says so
    from ciap_lib.bridge.devices import resolve_precision

    resolved = resolve_precision("auto", torch.device("cpu"))
    assert kw["precision"] == resolved
    assert f"generate: precision auto -> {resolved} on cpu" in capsys.readouterr().err
    assert sf.info(out).frames == 40000


def test_generate_bad_negative_mix_device_fail_before_loading(ciap_workspace, tmp_path, capsys, monkeypatch):
    """Each is exit 2 with one message naming the problem, before the (missing) AudioLDM checkpoint is loaded."""
    import torch

    img = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    base = ["generate", "--image", str(img), "--checkpoint", str(ciap_workspace["checkpoint"]),
            "--audioldm", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x.wav")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, words in [
        (["--mix", "a.wav:1.5"], ["mix: 'a.wav:1.5': weight 1.5 is outside [0, 1]"]),
        (["--mix", "text:rain:0.6", "text:sea:0.6"], ["sum to 1.2"]),
        (["--negative", str(tmp_path / "nope.wav")], ["negative: audio file", "nope.wav"]),
        (["--negative-text", "speech"], [str(tmp_path / "roberta-base"), "save_pretrained", "--tokenizer-dir"]),
        (["--device", "cuda"], ["device='cuda' but CUDA is not available"]),
        (["--device", "gpu"], ["device: 'gpu' is not a device"]),
    ]:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        for w in words:
            assert w in err, (flags, err)
        assert "missing.ckpt" not in err, "the flags must be checked before the AudioLDM checkpoint is loaded"
