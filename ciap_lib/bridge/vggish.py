"""VGGish frame embeddings for ``fad_vggish``, as audioldm_eval computes them (``audioldm_eval/metrics/fad.py``).

audioldm_eval builds ``torch.hub.load("harritaylor/torchvggish", "vggish")`` and then sets
``postprocess = False`` (no PCA/whitening/8-bit quantisation) and drops the last ReLU of ``embeddings``
(``use_activation=False``). Each clip goes through ``model.forward(audio.numpy(), 16000)``: torchvggish's
``vggish_input.waveform_to_examples`` cuts it into non-overlapping 0.96 s examples of 96 x 64 log-mel frames
(25 ms window, 10 ms hop, 125-7500 Hz, log(mel + 0.01)), and the network gives one 128-d embedding per
example. FAD is then the Fréchet distance over all examples' embeddings of all clips (frame level, not one
vector per clip).

Here the same pieces come from the installed ``torchvggish`` 0.2 (its ``mel_features``, ``vggish_input`` and
``vggish_params`` are byte-identical to the hub repository's; its ``VGG`` has the same layers and state-dict
keys), so the released ``vggish-10086976.pth`` loads unchanged. The PCA file is not needed.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ciap_lib.bridge.metric_weights import VGGISH, load_into

VGGISH_SAMPLE_RATE = 16000   #: torchvggish.vggish_params.SAMPLE_RATE
VGGISH_DIM = 128             #: embedding size


class VGGishEmbedder(nn.Module):
    """torchvggish's ``VGG`` without PCA postprocessing and without the final ReLU.

    ``forward(examples)``: (n, 1, 96, 64) log-mel examples -> (n, 128) float32 embeddings (can be negative).
    The wrapped network is ``self.vgg``; its state-dict keys are those of ``vggish-10086976.pth``.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvggish.torchvggish import VGG, make_layers

        vgg = VGG(make_layers(), postprocess=False)
        vgg.embeddings = nn.Sequential(*list(vgg.embeddings.children())[:-1])  # audioldm_eval: use_activation=False
        self.vgg = vgg

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        return self.vgg(examples)


def build_vggish(path: str | os.PathLike, device: str | torch.device = "cpu") -> VGGishEmbedder:
    """A :class:`VGGishEmbedder` with the weights of ``path`` (a ``vggish-10086976.pth``), in eval mode on
    ``device``. A bad file raises :class:`ciap_lib.bridge.metric_weights.MetricWeightsError` naming it."""
    model = VGGishEmbedder()
    load_into(model.vgg, VGGISH, path)
    return model.eval().requires_grad_(False).to(device)


def vggish_examples(waveform: torch.Tensor) -> torch.Tensor:
    """(T,) 16 kHz waveform -> (n, 1, 96, 64) float32 log-mel examples (torchvggish ``waveform_to_examples``;
    n = number of whole 0.96 s examples, 0 for clips under 0.975 s)."""
    from torchvggish import vggish_input

    x = waveform.detach().to("cpu", torch.float32).numpy()
    if x.shape[0] < 400:   # shorter than one 25 ms STFT window: torchvggish's framing would fail
        return torch.empty(0, 1, 96, 64)
    return vggish_input.waveform_to_examples(x, VGGISH_SAMPLE_RATE).detach()


@torch.inference_mode()
def vggish_embeddings(model: VGGishEmbedder, clips: list[torch.Tensor], batch_size: int = 64
                      ) -> list[torch.Tensor]:
    """Per clip, the (n_i, 128) float32 CPU embeddings of its 0.96 s examples. ``clips``: 1-D 16 kHz tensors.
    Examples of several clips share a forward pass (at most ``batch_size`` examples each); the result does
    not depend on the batching (VGGish has no batch statistics)."""
    device = next(model.parameters()).device
    examples = [vggish_examples(w) for w in clips]
    flat = torch.cat(examples) if examples else torch.empty(0, 1, 96, 64)
    out = [model(flat[i:i + batch_size].to(device)).float().cpu() for i in range(0, flat.shape[0], batch_size)]
    emb = torch.cat(out) if out else torch.empty(0, VGGISH_DIM)
    return list(torch.split(emb, [e.shape[0] for e in examples]))
