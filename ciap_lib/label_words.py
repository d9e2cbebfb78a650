"""Label words: supervise the image backbone with the words of the class labels (``word_weight``).

A label such as ``red-circle-x2`` or ``dog barking`` is split into lowercase words (``red``, ``circle``, ``x2``;
``dog``, ``barking``). A linear classifier on the image backbone's pooled features predicts, for each labelled pair,
which words its label has (multi-label binary cross-entropy). Classes that share a word (``red-circle-x2`` and
``red-square-x3``; ``dog barking`` and ``dog growling``) then share a feature direction, and a combination of
words never seen together in training can still be read off. With one-word labels this is plain one-vs-rest
classification of the class.

``backbone_loss: words`` goes further: the image backbone learns from this loss alone, and the contrastive loss
trains the head (and the audio side) on the backbone's features with their gradient stopped. The backbone then
learns what the labels name, and the head how that sounds.

The classifier is discarded after training: it is not part of the model, and checkpoints keep it only to resume.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["label_words", "LabelWordLoss", "BackboneTap"]

_SPLIT = re.compile(r"[^0-9a-z]+")


def label_words(label: str) -> list[str]:
    """The distinct lowercase words of ``label``, in order: runs of letters and digits (``"Red-circle x2"`` ->
    ``["red", "circle", "x2"]``)."""
    words = [w for w in _SPLIT.split(label.lower()) if w]
    return list(dict.fromkeys(words))


class LabelWordLoss(nn.Module):
    """Multi-label word prediction from backbone features.

    Args:
        classes: the class names, index = the label id the dataset gives (``PairDataset.classes``).
        in_dim: the backbone's feature width F.

    Attributes:
        vocab: the sorted words of all classes (V).
        targets: (C, V) buffer, 1 where class c has word v.

    Forward: ``features`` (B, F), ``labels`` (B,) class ids (-1 = unlabelled) -> scalar: binary cross-entropy of
    the V word logits, summed over words, divided by the mean number of words per class, averaged over the
    labelled rows (0, still attached to the graph, when no row is labelled).
    """

    def __init__(self, classes: Sequence[str], in_dim: int):
        super().__init__()
        if not classes:
            raise ValueError("word_weight needs labelled training pairs: the train split has no labels "
                             "(a pairs.csv with a 'label' column)")
        words = [label_words(c) for c in classes]
        empty = [c for c, w in zip(classes, words) if not w]
        if empty:
            raise ValueError(f"word_weight: labels without a letter or digit have no words: {empty[:5]}")
        self.vocab = sorted({w for ws in words for w in ws})
        targets = torch.zeros(len(classes), len(self.vocab))
        for i, ws in enumerate(words):
            targets[i, [self.vocab.index(w) for w in ws]] = 1.0
        self.register_buffer("targets", targets)
        self.words_per_class = float(targets.sum(1).mean())
        self.classifier = nn.Linear(in_dim, len(self.vocab))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labelled = labels >= 0
        if not bool(labelled.any()):
            return self.classifier(features).sum() * 0.0
        logits = self.classifier(features[labelled])
        target = self.targets[labels[labelled]].to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return bce.sum(dim=1).mean() / self.words_per_class


class BackboneTap:
    """A forward hook on an image backbone that keeps its last training-mode output (``features``) for
    :class:`LabelWordLoss`; with ``stop_gradient`` the head receives that output detached, so that only the word
    loss trains the backbone. Evaluation-mode calls pass through untouched.

    Use: ``tap = BackboneTap(model.image_encoder.backbone, stop_gradient)``; after each forward, ``tap.pop()``;
    ``tap.remove()`` when done.
    """

    def __init__(self, backbone: nn.Module, stop_gradient: bool):
        self.stop_gradient = bool(stop_gradient)
        self.features: torch.Tensor | None = None
        self._handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        self.features = output
        return output.detach() if self.stop_gradient else None

    def pop(self) -> torch.Tensor:
        """The features of the last training-mode forward, (B, F); raises if there was none since the last pop."""
        if self.features is None:
            raise RuntimeError("BackboneTap: no training-mode backbone forward since the last pop")
        out, self.features = self.features, None
        return out

    def remove(self) -> None:
        self._handle.remove()
