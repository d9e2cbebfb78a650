"""PANNs Cnn14 (16 kHz) clip embeddings and class logits for ``fd_panns``, ``kl_panns`` and ``is_panns``, as
audioldm_eval computes them.

audioldm_eval (``eval.py``, ``EvaluationHelper`` with ``backbone="cnn14"``, the default until commit 0c4e144
of 2024-09-28 made MERT the default) evaluates 16 kHz audio with ``Cnn14(sample_rate=16000, window_size=512,
hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)`` loaded from ``Cnn14_16k_mAP=0.438.pth``
(``feature_extractors/panns/models.py``), one clip per forward pass, in eval mode. Its outputs:

* ``"2048"``: ``relu(fc1(x))``, the 2048-d clip embedding (FD);
* ``"logits"``: ``fc_audioset(relu(fc1(x)))``, the 527 AudioSet class logits before the sigmoid (KL, IS).

The installed ``panns_inference`` 0.1.1 ``Cnn14`` has the same layers and state-dict keys; in eval mode its
``"embedding"`` output is exactly ``relu(fc1(x))`` (its dropout is off), and the logits are
``fc_audioset(embedding)``, the same operation its forward applies before the sigmoid.

Importing the ``panns_inference`` package runs its ``config.py``, which shells out to ``wget`` for an AudioSet
labels CSV; :func:`cnn14_class` imports only ``panns_inference.models`` without running the package's
``__init__`` (no network, no files written, nothing printed).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections import defaultdict

import torch
from torch import nn

from ciap_lib.bridge.metric_weights import CNN14_16K, load_into

PANNS_SAMPLE_RATE = 16000
PANNS_EMBED_DIM = 2048
PANNS_CLASSES = 527
#: audioldm_eval's 16 kHz Cnn14 front end (``eval.py``)
CNN14_16K_CONFIG = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
                        classes_num=PANNS_CLASSES)


def cnn14_class() -> type[nn.Module]:
    """``panns_inference.models.Cnn14``, imported without executing ``panns_inference/__init__.py``."""
    name = "panns_inference.models"
    if name not in sys.modules:
        spec = importlib.util.find_spec("panns_inference")   # locates the package without importing it
        if spec is None:
            raise ImportError("panns-inference is not installed (pyproject pins panns-inference==0.1.1)")
        added = "panns_inference" not in sys.modules
        if added:   # an unexecuted package object, so that `from .pytorch_utils import ...` resolves
            sys.modules["panns_inference"] = importlib.util.module_from_spec(spec)
        try:
            importlib.import_module(name)
        finally:
            if added:   # leave no half-initialised package behind for a later `import panns_inference`
                del sys.modules["panns_inference"]
    return sys.modules[name].Cnn14


class Cnn14Features(nn.Module):
    """PANNs Cnn14 at 16 kHz returning what audioldm_eval uses.

    ``forward(waveform)``: (B, T) 16 kHz -> ``(embedding (B, 2048), logits (B, 527))``, float32. Eval mode
    only (dropout and batch-norm statistics of training mode would change both). The wrapped network is
    ``self.cnn14``; its state-dict keys are those of the released checkpoint's ``"model"`` entry.
    """

    def __init__(self) -> None:
        super().__init__()
        cls = cnn14_class()
        with warnings.catch_warnings():   # torchlibrosa 0.0.9 calls librosa 0.9's pad_center positionally
            warnings.filterwarnings("ignore", message="Pass size=", category=FutureWarning)
            self.cnn14 = cls(**CNN14_16K_CONFIG)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            raise RuntimeError("Cnn14Features runs in eval mode only (call .eval())")
        emb = self.cnn14(waveform, None)["embedding"]       # relu(fc1(x)); dropout is the identity in eval
        return emb, self.cnn14.fc_audioset(emb)


def build_cnn14_16k(path: str | os.PathLike, device: str | torch.device = "cpu") -> Cnn14Features:
    """A :class:`Cnn14Features` with the weights of ``path`` (a ``Cnn14_16k_mAP=0.438.pth``: a dict whose
    ``"model"`` entry is the state dict), in eval mode on ``device``. A bad file raises
    :class:`ciap_lib.bridge.metric_weights.MetricWeightsError` naming it."""
    model = Cnn14Features()
    load_into(model.cnn14, CNN14_16K, path)
    return model.eval().requires_grad_(False).to(device)


@torch.inference_mode()
def panns_features(model: Cnn14Features, clips: list[torch.Tensor], batch_size: int = 8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings (N, 2048), logits (N, 527))`` float32 on the CPU, in the order of ``clips`` (1-D 16 kHz).

    Clips of equal length share a forward pass (at most ``batch_size``); clips are never padded to a common
    length, since Cnn14 pools over time and padding would change its output. In eval mode the result equals
    audioldm_eval's one-clip-at-a-time pass up to float round-off.
    """
    device = next(model.parameters()).device
    emb = torch.empty(len(clips), PANNS_EMBED_DIM)
    logits = torch.empty(len(clips), PANNS_CLASSES)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(clips):
        by_len[int(w.shape[-1])].append(i)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            e, lg = model(torch.stack([clips[i] for i in part]).float().to(device))
            emb[part], logits[part] = e.float().cpu(), lg.float().cpu()
    return emb, logits
