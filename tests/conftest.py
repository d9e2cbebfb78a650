"""Shared pytest setup. Fixtures shared by several test files live in tests/fixtures/."""
import os

# Progress bars would only clutter test logs.
os.environ.setdefault("TQDM_DISABLE", "1")

# No network here: `import audioldm.clap.encoders` pulls in audioldm/clap/training/data.py, whose module-level
# RobertaTokenizer.from_pretrained("roberta-base") otherwise retries the hub with back-off for minutes
# (measured: tiny AudioLDM build 255 s online-retrying vs 25 s offline). Added by engineer D.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Session fixtures shared across test folders (tiny AudioLDM checkpoint: tests/fixtures/audioldm.py).
pytest_plugins = ["fixtures.audioldm"]
