"""Backbones: the registry, timm models by name, their weights through timm's own pretrained path (offline, from
real .safetensors files), CLIP heads kept, the missing-weights error, preprocessing from timm's data config,
unfreeze_last."""
from __future__ import annotations

import timm
import torch

import pytest

from ciap_lib.images import ImagePreprocess
from fixtures.timm_weights import save_timm_weights
from ciap_lib.models import (BACKBONES, CIAP, ImageWeightsNotFoundError, ModelConfig, check_image_config,
                             create_model, get_model_config, weights_digest)
from ciap_lib.models.timm_backbone import hf_cache_dir, is_clip_tower, pretrained_cfg

VIT = "ciap_tiny_vit_clip.test"      # CLIP-style: 16-d projection head kept, CLIP mean/std, crop 0.9
RESNET = "ciap_tiny_resnet.test"     # 10-class classifier dropped: pooled 64-d features


@pytest.mark.parametrize("name, dropped", [(VIT, ()), (RESNET, ("fc.weight", "fc.bias"))])
def test_timm_weights_load_through_timms_pretrained_path(name, dropped, tmp_path, monkeypatch):
    saved = save_timm_weights(name, tmp_path / "w.safetensors")
    calls = []
    real = timm.models._builder.load_pretrained
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda model, pretrained_cfg=None, **kw: calls.append(pretrained_cfg) or
                        real(model, pretrained_cfg=pretrained_cfg, **kw))
    model = create_model("debug", image_backbone=f"timm/{name}", image_pretrained="pretrained",
                         image_weights=str(tmp_path / "w.safetensors"))
    assert [c["file"] for c in calls] == [str(tmp_path / "w.safetensors")]  # timm's own path, from the file
    got = model.image_encoder.backbone.state_dict()
    assert set(saved) - set(got) == set(dropped) and set(got) <= set(saved)
    for k, v in got.items():
        assert torch.equal(v, saved[k]), k
    assert model.config.image_weights_digest == weights_digest(model.image_encoder.backbone)
    torch.manual_seed(0)  # another file -> another digest
    other = create_model("debug", image_backbone=f"timm/{name}", image_pretrained="none")
    assert other.config.image_weights_digest != model.config.image_weights_digest


def test_clip_tower_keeps_its_projection_other_models_give_pooled_features():
    torch.manual_seed(0)
    clip = create_model("debug", image_backbone=f"timm/{VIT}").image_encoder
    x = torch.randn(2, 3, 32, 32)
    ref = timm.create_model(VIT, pretrained=False)
    ref.load_state_dict(clip.backbone.state_dict())
    assert clip.feature_dim == 16 and torch.allclose(clip.backbone(x), ref(x))  # CLIP's projected embedding
    res = create_model("debug", image_backbone=f"timm/{RESNET}").image_encoder
    assert res.feature_dim == 64 and res.backbone(x).shape == (2, 64)
    assert res.backbone.get_classifier().__class__.__name__ == "Identity"
    # the rule on real timm names (nothing is built)
    for name, clip_tower in [("vit_base_patch32_clip_224.openai", True), ("vit_base_patch16_clip_224.laion2b", True),
                             ("convnext_base.clip_laion2b", True), ("resnet50_clip.openai", True),
                             ("vit_base_patch32_clip_224.laion2b_ft_in12k_in1k", False),
                             ("vit_base_patch32_clip_224", False), ("vit_small_patch14_dinov2.lvd142m", False),
                             ("convnext_tiny.fb_in22k", False), ("resnet18.a1_in1k", False)]:
        assert is_clip_tower(name, pretrained_cfg(name)) == clip_tower, name


def test_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--ciap-test--ciap_tiny_resnet.test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    saved = save_timm_weights(RESNET, repo / "snapshots" / "0123abcd" / "model.safetensors")
    config = get_model_config("debug", image_backbone=f"timm/{RESNET}", image_pretrained="pretrained")
    assert check_image_config(config, check_weights=True) == []
    got = create_model("debug", image_backbone=f"timm/{RESNET}", image_pretrained="pretrained")
    assert torch.equal(got.image_encoder.backbone.conv1.weight, saved["conv1.weight"])


def test_missing_weights_name_the_model_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_cache_dir() == tmp_path / "hub"
    config = get_model_config("debug", image_backbone=f"timm/{VIT}", image_pretrained="pretrained")
    [problem] = check_image_config(config, check_weights=True)  # found before anything is built
    assert check_image_config(config, check_weights=False) == []
    with pytest.raises(ImageWeightsNotFoundError) as e:
        create_model("debug", image_backbone=f"timm/{VIT}", image_pretrained="pretrained")
    for msg in (problem, str(e.value)):
        assert VIT in msg and str(tmp_path / "hub" / "models--ciap-test--ciap_tiny_vit_clip.test") in msg
        assert "model.safetensors" in msg and "hf download ciap-test/ciap_tiny_vit_clip.test" in msg
        assert "image_weights=" in msg and "image_pretrained=none" in msg and "\n" not in msg
    with pytest.raises(ImageWeightsNotFoundError, match="nothere.safetensors"):
        create_model("debug", image_backbone=f"timm/{VIT}", image_pretrained="pretrained",
                     image_weights=str(tmp_path / "nothere.safetensors"))
    save_timm_weights(RESNET, tmp_path / "resnet.safetensors")  # another model's file: an error, never random init
    with pytest.raises(ValueError, match=r"resnet\.safetensors.*not the weights of timm model"):
        create_model("debug", image_backbone=f"timm/{VIT}", image_pretrained="pretrained",
                     image_weights=str(tmp_path / "resnet.safetensors"))


def test_a_weights_file_with_image_pretrained_none_is_an_error_not_a_random_init(tmp_path):
    from ciap_lib.checkpoint import load_ciap, save_checkpoint
    from ciap_lib.config import TrainConfig, load_config

    save_timm_weights(RESNET, tmp_path / "w.safetensors")
    for backbone, load in ((f"timm/{RESNET}", "pretrained"), ("resnet18", "imagenet")):
        kw = dict(image_backbone=backbone, image_weights=str(tmp_path / "w.safetensors"))
        [problem] = check_image_config(get_model_config("debug", **kw))
        assert problem.startswith("image_weights: ") and "w.safetensors" in problem
        assert "image_pretrained is 'none'" in problem and f"image_pretrained={load}" in problem
        with pytest.raises(ValueError, match="would not be loaded"):
            create_model("debug", **kw)
        with pytest.raises(ValueError, match="would not be loaded"):  # found by the config check, before training
            TrainConfig.from_dict({"model": "debug", **kw}).check(check_paths=False)
        # a checkpoint saved with that combination (before it was an error) still loads: its weights are its own
        saved = CIAP(get_model_config("debug", **kw), load_pretrained=False)
        path = save_checkpoint(tmp_path / f"{load}.pt", saved, load_config(None, model="debug"), epoch=1)
        model, _ = load_ciap(path)
        assert model.config.image_weights == kw["image_weights"]
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved.state_dict()[k]), k


def test_names_and_pretrained_values_are_checked():
    def problems(**kw):
        return check_image_config(get_model_config("debug", **kw))

    assert problems(image_backbone="timm/vit_base_patch32_clip_224.openai") == []
    assert "timm does not know the model 'no_such_net'" in problems(image_backbone="timm/no_such_net")[0]
    assert "Invalid pretrained tag" in problems(image_backbone="timm/resnet18.bogus")[0]
    assert "is not one of" in problems(image_backbone="resnet99")[0]
    assert "use one of ['none', 'pretrained']" in problems(image_backbone="timm/resnet18", image_pretrained="imagenet")[0]
    assert "use one of ['none', 'imagenet']" in problems(image_backbone="resnet18", image_pretrained="pretrained")[0]
    assert {"resnet18", "resnet34", "resnet50", "tiny_cnn", "small_cnn", "timm/"} <= set(BACKBONES)


def test_preprocessing_follows_timms_data_config_and_image_size_overrides_it():
    def own_size(backbone: str):  # a model config that leaves image_size unset: the backbone's own
        return CIAP(ModelConfig(image_backbone=backbone, cnn_width=8, n_mels=32, n_fft=512, hop_length=320))

    vit = own_size(f"timm/{VIT}")
    data_config = timm.data.resolve_data_config({}, model=timm.create_model(VIT))
    assert vit.preprocess == ImagePreprocess.from_timm(data_config)
    assert vit.preprocess.mean == tuple(timm.data.OPENAI_CLIP_MEAN) and vit.preprocess.crop_pct == 0.9
    big = create_model("debug", image_backbone=f"timm/{VIT}", image_size=48)  # a ViT is rebuilt for 48 px
    assert big.preprocess.size == 48 and big.image_encoder.backbone.pos_embed.shape[1] == 1 + 3 * 3
    assert big.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 512)
    assert own_size("resnet18").preprocess == ImagePreprocess(224)
    assert own_size("tiny_cnn").preprocess == ImagePreprocess(32)
    assert own_size("small_cnn").preprocess == ImagePreprocess(64)


def _trainable(model) -> set[str]:
    return {n for n, p in model.image_encoder.backbone.named_parameters() if p.requires_grad}


def test_unfreeze_last_trains_only_the_last_blocks():
    res = create_model("debug", image_backbone=f"timm/{RESNET}", unfreeze_last=1)
    assert {n.split(".")[0] for n in _trainable(res)} == {"layer4"}
    res.train()
    assert not res.image_encoder.backbone.layer1[0].bn1.training      # frozen blocks keep their statistics
    assert res.image_encoder.backbone.layer4[0].bn1.training
    res(torch.randn(2, 3, 32, 32), 0.1 * torch.randn(2, 16000))["image_features"].sum().backward()
    grads = {n for n, p in res.image_encoder.backbone.named_parameters() if p.grad is not None}
    assert grads == _trainable(res)
    vit = create_model("debug", image_backbone=f"timm/{VIT}", unfreeze_last=1)  # last block + final norm + projection
    assert {n.rsplit(".", 1)[0].split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
            for n in _trainable(vit)} == {"blocks.1", "norm", "head"}
    assert {n.split(".")[0] for n in _trainable(create_model("debug", image_backbone="resnet18", unfreeze_last=2))} \
        == {"layer4"}
    assert len(_trainable(create_model("debug", image_backbone="resnet18", unfreeze_last=3))) > \
        len(_trainable(create_model("debug", image_backbone="resnet18", unfreeze_last=2)))
    assert {n.split(".")[1] for n in _trainable(create_model("debug", unfreeze_last=1))} == {"9", "10"}  # tiny_cnn
    assert {n.split(".")[1] for n in _trainable(create_model("debug", image_backbone="small_cnn", unfreeze_last=2))} \
        == {"2", "3"}
    with pytest.raises(ValueError, match="more than the 4 blocks"):
        create_model("debug", image_backbone=f"timm/{RESNET}", unfreeze_last=5)
    assert "freeze_backbone is true" in check_image_config(
        get_model_config("debug", unfreeze_last=1, freeze_backbone=True))[0]


def test_checkpoints_from_before_the_head_registry_still_load():
    model = create_model("debug")
    legacy = {k.replace("image_encoder.head.", "image_encoder."): v for k, v in model.state_dict().items()}
    assert "image_encoder.proj.weight" in legacy
    fresh = create_model("debug")
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.image_encoder.head.proj.weight, model.image_encoder.head.proj.weight)
