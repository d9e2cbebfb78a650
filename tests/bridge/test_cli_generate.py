"""``python -m ciap_lib generate``: a folder of images -> one 16 kHz WAV each; clear errors."""
from __future__ import annotations

import soundfile as sf

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
