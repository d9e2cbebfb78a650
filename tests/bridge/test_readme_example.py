"""The README's "Python API: image -> WAV" block runs as written against the tiny AudioLDM.

Substitutions (documented here, nothing else changes): "audioldm-s-full", ckpt_dir="ckpt" -> the tiny
checkpoint's path; "ckpt/ciap/last.pt" -> an untrained debug CIAP checkpoint; "photo.jpg" -> a real image
of the synthetic set; "photo.wav" -> a file in tmp_path. The generation itself runs with the README's
arguments (default 10-step DPM-Solver++, 5 s).
"""
from __future__ import annotations

import re
from pathlib import Path

import soundfile as sf

README = Path(__file__).resolve().parents[2] / "README.md"


def _block() -> str:
    text = README.read_text()
    section = text.split("## Python API: image -> WAV", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tiny_audioldm_ckpt, ciap_workspace, tmp_path):
    code = _block()
    image = sorted((ciap_workspace["data"] / "val").glob("*.png"))[0]
    out = tmp_path / "photo.wav"
    subs = {
        'load_audioldm("audioldm-s-full", ckpt_dir="ckpt")': f"load_audioldm({str(tiny_audioldm_ckpt)!r})",
        '"ckpt/ciap/last.pt"': repr(str(ciap_workspace["checkpoint"])),
        '"photo.jpg"': repr(str(image)),
        '"photo.wav"': repr(str(out)),
    }
    for old, new in subs.items():
        assert old in code, f"README example no longer contains {old}"
        code = code.replace(old, new)
    exec(compile(code, str(README), "exec"), {})
    data, sr = sf.read(out)
    assert sr == 16000 and data.shape == (80000,)
