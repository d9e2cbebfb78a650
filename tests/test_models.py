"""Encoders: shapes and unit norm of every encoder, logit scale, configs, ImageNet weight loading (offline)."""
import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from ciap_lib.models import (AUDIO_ENCODERS, CIAP, HEADS, MODEL_CONFIGS, ImageWeightsNotFoundError, create_head,
                             create_model, get_model_config, imagenet_weights_file, register_audio_encoder)


def _unit(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny_cnn", "small_cnn", "resnet18"])
def test_image_encoders_shape_and_unit_norm(backbone):
    model = create_model("debug", image_backbone=backbone, embed_dim=64).eval()
    out = model.encode_image(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 64) and _unit(out)


@pytest.mark.parametrize("encoder", sorted(AUDIO_ENCODERS))
def test_audio_encoders_shape_and_unit_norm(encoder):
    model = create_model("debug", audio_encoder=encoder).eval()
    x = torch.randn(3, 512) if model.audio_input_kind == "embedding" else 0.1 * torch.randn(3, 16000)
    out = model.encode_audio(x)
    assert out.shape == (3, 512) and _unit(out)


def test_logmel_cnn_tc_is_logmel_cnn_plus_residual_temporal_convolutions():
    torch.manual_seed(0)
    enc = create_model("debug", audio_encoder="logmel_cnn_tc").audio_encoder.eval()
    mel = enc.log_mel(torch.randn(2, enc.num_samples, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        base = enc.cnn(mel).mean(dim=2)                 # the conv blocks of logmel_cnn, frequency averaged
        h = enc.frame_features(mel)
        assert h.shape == base.shape and not torch.allclose(h, base, atol=1e-3)
        assert h.shape[-1] == math.ceil(mel.shape[-1] / 8)     # time halved by three conv blocks, not the fourth
        plain = create_model("debug", audio_encoder="logmel_cnn").audio_encoder.eval()
        assert plain.frame_features(mel).shape[-1] == math.ceil(mel.shape[-1] / 16)
        for block in enc.temporal:                      # with zero convolutions each residual block adds nothing
            block[0].weight.zero_()
            block[0].bias.zero_()
        assert torch.equal(enc.frame_features(mel), base)
    assert [block[0].dilation for block in enc.temporal] == [(1,), (2,), (4,)]   # +-7 frames of context
    from ciap_lib.config import TrainConfig

    TrainConfig.from_dict({"model": "debug", "audio_encoder": "logmel_cnn_tc",
                           "augment_audio": "gain,specaugment"}).check()   # it has a log-mel input to mask


def test_mlp_is_exactly_the_original_design():
    enc = create_model("seed", image_pretrained="none").audio_encoder
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16000, 1024), (1024, 512)]
    with pytest.raises(ValueError, match=r"\(B,16000\)"):
        enc(torch.randn(2, 8000))


def test_forward_logit_scale_init_and_clamp():
    model = create_model("debug")
    assert math.isclose(float(model.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 16000))
    assert out["image_features"].shape == out["audio_features"].shape == (4, 512)
    assert math.isclose(float(out["logit_scale"].detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert math.isclose(float(model.logit_scale.exp()), 100.0, rel_tol=1e-5)


def test_named_configs_and_overrides():
    assert {"debug", "default", "seed", "clap_aligned"} <= set(MODEL_CONFIGS)
    seed = get_model_config("seed")
    assert (seed.image_size, seed.image_backbone, seed.image_pretrained, seed.audio_encoder) == \
        (224, "resnet18", "imagenet", "mlp")
    assert get_model_config("debug", image_size=None).image_size == 32  # None keeps the named value
    with pytest.raises(ValueError, match="unknown model config"):
        create_model("huge")
    with pytest.raises(ValueError, match="unknown audio_encoder"):
        create_model("debug", audio_encoder="wav2vec")
    with pytest.raises(ValueError, match="embed_dim == clap_dim"):
        create_model("debug", audio_encoder="clap", embed_dim=64)


def test_registry_accepts_new_encoders():
    @register_audio_encoder("test_mean")
    class MeanEncoder(nn.Module):
        input_kind = "waveform"

        def __init__(self, config):
            super().__init__()
            self.proj = nn.Linear(1, config.embed_dim)

        def forward(self, audio):
            return nn.functional.normalize(self.proj(audio.mean(dim=1, keepdim=True)), dim=-1)

    try:
        model = create_model("debug", audio_encoder="test_mean")
        assert model.encode_audio(torch.randn(2, 16000)).shape == (2, 512)
    finally:
        AUDIO_ENCODERS.pop("test_mean")


def test_freeze_backbone_keeps_weights_and_batchnorm_stats():
    model = create_model("debug", image_backbone="resnet18", freeze_backbone=True).train()
    backbone = model.image_encoder.backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training and model.image_encoder.head.training
    before = backbone.bn1.running_mean.clone()
    model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
    assert torch.equal(before, backbone.bn1.running_mean)
    assert model.image_encoder.head.proj.weight.grad is not None


def _fake_imagenet_state_dict() -> dict:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def _no_download(*args, **kwargs):
    raise urllib.error.URLError("network disabled in this test")


def test_imagenet_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    path = imagenet_weights_file("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's name
    sd = _fake_imagenet_state_dict()
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    model = create_model("debug", image_backbone="resnet18", image_pretrained="imagenet")
    got = model.image_encoder.backbone.state_dict()
    assert torch.equal(got["conv1.weight"], sd["conv1.weight"])
    assert torch.equal(got["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])
    assert "fc.weight" not in got  # classifier replaced by the projection head


def test_imagenet_weights_from_local_file(tmp_path):
    sd = _fake_imagenet_state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    model = create_model("debug", image_backbone="resnet18", image_pretrained="imagenet",
                         image_weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.image_encoder.backbone.conv1.weight, sd["conv1.weight"])
    with pytest.raises(ImageWeightsNotFoundError, match="missing.pth"):
        create_model("debug", image_backbone="resnet18", image_pretrained="imagenet",
                     image_weights=str(tmp_path / "missing.pth"))


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(ImageWeightsNotFoundError) as e:
        create_model("debug", image_backbone="resnet18", image_pretrained="imagenet")
    msg = str(e.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    with pytest.raises(ValueError, match="tiny_cnn"):
        create_model("debug", image_pretrained="imagenet")


def test_load_pretrained_false_skips_weight_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    model = CIAP(get_model_config("debug", image_backbone="resnet18", image_pretrained="imagenet"),
                 load_pretrained=False)
    assert model.config.image_pretrained == "imagenet"


def test_crafted_image_weights_are_refused_by_name(tmp_path, monkeypatch):
    from ciap_lib.safe_load import UnsafeCheckpointError
    from fixtures.crafted import crafted_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    marker = tmp_path / "pwned"
    cached = imagenet_weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    for path, kw in ((crafted_file(tmp_path / "r18.pth", marker), {"image_weights": str(tmp_path / "r18.pth")}),
                     (crafted_file(cached, marker), {})):
        with pytest.raises(UnsafeCheckpointError) as e:
            create_model("debug", image_backbone="resnet18", image_pretrained="imagenet", **kw)
        assert str(path) in str(e.value) and "io.open" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("head", sorted(HEADS))
def test_heads_give_unit_vectors_of_the_embedding_size(head):
    model = create_model("debug", head=head, head_depth=3, head_width=48).eval()
    out = model.encode_image(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 512) and _unit(out)
    h = model.image_encoder.head
    if head == "mlp":  # Linear(64->48), 3 residual blocks of two 48x48 Linears + LayerNorm, LayerNorm, Linear(48->512)
        assert len(h.blocks) == 3 and h.inp.in_features == 64 and h.out.out_features == 512
        assert sum(p.numel() for p in h.parameters()) == \
            (64 * 48 + 48) + 3 * (2 * (48 * 48 + 48) + 2 * 48) + 2 * 48 + (48 * 512 + 512)
    else:
        assert [type(m).__name__ for m in h.children()] == ["Linear", "LayerNorm"]
    feats = torch.rand(2, 64) + 0.1
    if head == "normed_linear":  # it sees the direction of the features, not their size
        assert torch.allclose(h(feats), h(3.0 * feats), atol=1e-6)
    else:
        assert not torch.allclose(h(feats), h(3.0 * feats), atol=1e-6)
    with pytest.raises(ValueError, match="unknown head"):
        create_head("attention", 64, model.config)
