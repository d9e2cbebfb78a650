"""The condition stage prepares images as the CIAP checkpoint stores (size, mean/std, interpolation, crop)."""
from __future__ import annotations

import torch

from ciap_lib.bridge import CIAPCondStage
from ciap_lib.images import load_image
from ciap_lib.synthetic import make_synthetic_dataset


def test_load_images_follow_the_stored_preprocessing(tmp_path):
    from fixtures.preprocess import STORED, stored_preprocess_checkpoint

    data = make_synthetic_dataset(tmp_path / "syn", n_train=4, n_val=2, image_size=40)
    stage = CIAPCondStage.from_checkpoint(stored_preprocess_checkpoint(tmp_path, data, audio_encoder="clap"))
    paths = sorted((data / "val").glob("*.png"))
    assert stage.preprocess == STORED and stage.image_size == 32
    images = stage.load_images(paths)
    assert torch.equal(images, torch.stack([load_image(p, STORED) for p in paths]))
    assert not torch.allclose(images, torch.stack([load_image(p, 32) for p in paths]), atol=0.05)
    assert torch.equal(images[1:], stage.load_images([paths[1].read_bytes()]))  # bytes take the same path
    assert stage(images).shape == (2, 1, 512)
