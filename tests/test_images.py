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


CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_equals_timms_eval_transform(tmp_path, crop_mode, interpolation):
    """load_image with an ImagePreprocess gives what timm's own eval transform (create_transform) gives."""
    from PIL import Image
    from timm.data import create_transform

    from ciap_lib.images import ImagePreprocess

    rng = np.random.default_rng(0)
    pp = ImagePreprocess(size=S, interpolation=interpolation, crop_pct=0.9, crop_mode=crop_mode, **CLIP)
    timm_tf = create_transform(input_size=(3, S, S), interpolation=interpolation, crop_pct=0.9, crop_mode=crop_mode,
                               **CLIP)
    for w, h in [(97, 61), (40, 130), (31, 33), (100, 100)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        with Image.open(path) as im:
            ref = timm_tf(im.convert("RGB"))
        got = load_image(path, pp)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5), (w, h)
        assert torch.allclose(denormalize_image(got, pp.mean, pp.std),
                              torch.from_numpy(load_image_uint8(path, pp)).permute(2, 0, 1) / 255, atol=1e-5)


def test_preprocess_round_trips_as_plain_values_and_checks_its_values():
    from ciap_lib.images import IMAGENET_MEAN, ImagePreprocess

    pp = ImagePreprocess(size=48, interpolation="bilinear", crop_pct=0.875, crop_mode="squash", **CLIP)
    d = pp.to_dict()
    assert all(isinstance(v, (int, float, str, list)) for v in d.values())
    assert ImagePreprocess.from_dict(d) == pp and pp.scale_size == 54
    assert ImagePreprocess(S) == ImagePreprocess(S, IMAGENET_MEAN)  # the original design
    assert torch.equal(load_image(_png_bytes(), S), load_image(_png_bytes(), ImagePreprocess(S)))
    for bad, words in [({**d, "crop_mode": "zoom"}, "crop_mode"), ({**d, "crop_pct": 0}, "crop_pct"),
                       ({**d, "interpolation": "cubic"}, "interpolation"), ({**d, "std": [1, 0, 1]}, "std"),
                       ({**d, "gamma": 2}, "keys"), ({"mean": [0, 0, 0]}, "'size' required")]:
        with pytest.raises(ValueError, match=words):
            ImagePreprocess.from_dict(bad, "checkpoint x.pt")


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)).save(buf, format="PNG")
    return buf.getvalue()
