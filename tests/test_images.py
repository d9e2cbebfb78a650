"""ciap_lib.images: odd real-world images -> RGB uint8 -> normalized float tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ciap_lib.audio_io import BadFileError
from ciap_lib.images import denormalize_image, load_image, load_image_uint8
from fixtures.odd_files import odd_images

S = 32


@pytest.fixture(scope="module")
def odd_imgs(tmp_path_factory):
    """{kind: path} of every odd image (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated, 1 px, huge, ...)."""
    return odd_images(tmp_path_factory.mktemp("odd_img"))


def test_every_odd_image_becomes_rgb_normalized(odd_imgs):
    imgs = odd_imgs
    for kind, p in imgs.items():
        t = load_image(p, S)
        assert t.shape == (3, S, S) and t.dtype == torch.float32, kind
        assert torch.isfinite(t).all(), kind
        back = denormalize_image(t)
        assert back.min() >= 0 and back.max() <= 1


def test_image_mode_semantics(odd_imgs):
    imgs = odd_imgs
    assert (load_image_uint8(imgs["rgba"], 8) == 255).all()          # transparent -> white background
    mid = load_image_uint8(imgs["16bit"], 8)
    assert np.abs(mid.astype(int) - 128).max() <= 1                    # 16-bit scaled, not clipped to white
    assert (load_image_uint8(imgs["tiny"], 8) == (10, 200, 30)).all()  # 1x1 upscaled
    from PIL import Image
    as_i = Image.fromarray(np.full((4, 4), 32768, np.int32), "I")       # 16-bit data opened as mode "I"
    assert np.abs(load_image_uint8(_tiff_bytes(as_i), 4).astype(int) - 128).max() <= 1
    ramp = Image.fromarray(np.linspace(-1e6, 1e6, 64).reshape(8, 8).astype(np.float32), "F")
    r = load_image_uint8(_tiff_bytes(ramp), 8)[..., 0]
    assert r.min() <= 5 and r.max() >= 250                              # float image: range scaled
    huge = load_image_uint8(imgs["huge"], 16)
    assert np.abs(huge.astype(int) - (90, 90, 200)).max() <= 6


def _tiff_bytes(im) -> bytes:
    import io
    buf = io.BytesIO()
    im.save(buf, "TIFF")
    return buf.getvalue()


def test_exif_rotation_is_applied(odd_imgs):
    imgs = odd_imgs
    a = load_image_uint8(imgs["exif"], 32).astype(int)
    # stored: left red / right blue; Orientation 6 displays it rotated: top red / bottom blue.
    assert a[2, 16, 0] > 200 and a[2, 16, 2] < 60
    assert a[29, 16, 2] > 200 and a[29, 16, 0] < 60


def test_load_image_from_bytes(odd_imgs):
    imgs = odd_imgs
    t = load_image(imgs["cmyk"].read_bytes(), S)
    assert t.shape == (3, S, S)
    assert torch.equal(load_image(memoryview(imgs["cmyk"].read_bytes()), S), t)
    with pytest.raises(BadFileError, match="<bytes>"):
        load_image(b"not an image", S)
