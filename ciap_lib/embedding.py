"""Batch embedding: every pair of a dataset through a CIAP model, in order."""
from __future__ import annotations

import torch

from ciap_lib.data import make_loader
from ciap_lib.progress import progress as progress_bar


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 128, num_workers: int = 0,
                  device: str | torch.device | None = None, progress: bool = False,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every pair in order.

    Returns:
        image_emb (N,D) float32 unit-norm, audio_emb (N,D) float32 unit-norm, labels (N,) long (-1 if none).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, persistent_workers=False)
    ims, auds, labels = [], [], []
    for batch in progress_bar(loader, len(loader), "embed", progress):
        ims.append(model.encode_image(batch["image"].to(device)).float().cpu())
        auds.append(model.encode_audio(batch["audio"].to(device)).float().cpu())
        labels.append(batch["label"].long())
    model.train(was_training)
    return torch.cat(ims), torch.cat(auds), torch.cat(labels)
