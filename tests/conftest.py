"""Shared pytest setup. Fixtures shared by several test files live in tests/fixtures/."""
import os

# Progress bars would only clutter test logs.
os.environ.setdefault("TQDM_DISABLE", "1")

# No network here: any hub lookup (e.g. audioldm's import-time RobertaTokenizer.from_pretrained, now stubbed by
# the bridge) must fail fast instead of retrying with back-off for minutes (measured once: tiny AudioLDM build
# 255 s retrying vs 25 s offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The tests' models are tiny: one intra-op thread per process is faster than two (a tiny AudioLDM UNet step took
# 0.07 s with 1 thread and 0.36 s with 2 on the 2-core machine with other work running), and the processes the
# tests start (papermill kernels, torchrun ranks, CLI subprocesses) inherit it instead of oversubscribing the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# Session fixtures shared across test folders (tiny AudioLDM checkpoint: tests/fixtures/audioldm.py; random-weight
# metric models: tests/fixtures/metric_weights.py; real pipeline runs in one MLflow store: tests/fixtures/pipeline.py;
# a tiny RoBERTa tokenizer: tests/fixtures/tokenizer.py).
pytest_plugins = ["fixtures.audioldm", "fixtures.metric_weights", "fixtures.pipeline", "fixtures.tokenizer"]

_CUDA_DESELECTED: list[str] = []


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: without one they are deselected, and the run says so (never skipped
    silently); ``bench/gpu_check.sh`` runs them on a CUDA machine."""
    import torch

    if torch.cuda.is_available():
        return
    cuda = [item for item in items if item.get_closest_marker("cuda") is not None]
    if cuda:
        items[:] = [item for item in items if item.get_closest_marker("cuda") is None]
        config.hook.pytest_deselected(items=cuda)
        _CUDA_DESELECTED[:] = [item.nodeid for item in cuda]


def pytest_report_collectionfinish(config, start_path, items):
    if _CUDA_DESELECTED:
        return f"{len(_CUDA_DESELECTED)} cuda tests deselected: no CUDA device"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _CUDA_DESELECTED:
        terminalreporter.write_line(f"{len(_CUDA_DESELECTED)} cuda tests deselected: no CUDA device "
                                    "(run them on a GPU machine: bench/gpu_check.sh)", yellow=True)


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
