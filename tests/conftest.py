"""Shared pytest setup. Fixtures shared by several test files live in tests/fixtures/."""
import os

# Progress bars would only clutter test logs.
os.environ.setdefault("TQDM_DISABLE", "1")

# No network here: any hub lookup (e.g. audioldm's import-time RobertaTokenizer.from_pretrained, now stubbed by
# the bridge) must fail fast instead of retrying with back-off for minutes (measured once: tiny AudioLDM build
# 255 s retrying vs 25 s offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Session fixtures shared across test folders (tiny AudioLDM checkpoint: tests/fixtures/audioldm.py; random-weight
# metric models: tests/fixtures/metric_weights.py; real pipeline runs in one MLflow store: tests/fixtures/pipeline.py).
pytest_plugins = ["fixtures.audioldm", "fixtures.metric_weights", "fixtures.pipeline"]
