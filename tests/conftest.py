"""Shared pytest setup. Fixtures shared by several test files live in tests/fixtures/."""
import os

# Progress bars would only clutter test logs.
os.environ.setdefault("TQDM_DISABLE", "1")

# Session fixtures shared across test folders (tiny AudioLDM checkpoint: tests/fixtures/audioldm.py).
pytest_plugins = ["fixtures.audioldm"]
