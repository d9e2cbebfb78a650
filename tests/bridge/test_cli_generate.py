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
