"""Tiny timm models for tests, smoke runs and benchmarks, registered in timm's own registry.

They are real timm architectures (timm's ``VisionTransformer`` and ``ResNet``) built by
``timm.models.build_model_with_cfg`` with a pretrained config of their own, so ``timm/ciap_tiny_vit_clip.test``
goes through exactly the path a real timm backbone takes: ``timm.create_model``, the pretrained path with
``pretrained_cfg_overlay=dict(file=...)`` and the checkpoint filter, ``resolve_data_config``.

* ``ciap_tiny_vit_clip.test``: a CLIP-style ViT (pre-norm, QuickGELU, class token) with a 16-d projection head,
  depth 2, width 32, patch 16, 32 px; OpenAI CLIP mean/std, crop 0.9 (not ImageNet's preprocessing).
* ``ciap_tiny_resnet.test``: a ResNet with one basic block per stage, channels 8/16/32/64, 32 px, ImageNet
  mean/std, crop 0.875, a 10-class classifier (dropped: pooled 64-d features).

No weights are published for them: ``image_pretrained: pretrained`` needs ``image_weights`` (or a file placed in
the Hugging Face cache under their made-up hub ids, as the tests do).
"""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

default_cfgs = generate_default_cfgs({
    "ciap_tiny_vit_clip.test": dict(
        hf_hub_id="ciap-test/ciap_tiny_vit_clip.test", num_classes=16, input_size=(3, 32, 32),
        fixed_input_size=True, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, interpolation="bicubic", crop_pct=0.9,
        crop_mode="center", first_conv="patch_embed.proj", classifier="head"),
    "ciap_tiny_resnet.test": dict(
        hf_hub_id="ciap-test/ciap_tiny_resnet.test", num_classes=10, input_size=(3, 32, 32),
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation="bilinear", crop_pct=0.875,
        crop_mode="center", first_conv="conv1", classifier="fc"),
})


@register_model
def ciap_tiny_vit_clip(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """CLIP-style ViT, depth 2, width 32, patch 16 at 32 px, 16-d projection head (~30k parameters)."""
    args = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, pre_norm=True,
                norm_layer=nn.LayerNorm, act_layer="quick_gelu")
    return build_model_with_cfg(VisionTransformer, "ciap_tiny_vit_clip", pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kwargs))


@register_model
def ciap_tiny_resnet(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet with one basic block per stage, channels 8/16/32/64 (~90k parameters)."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8)
    return build_model_with_cfg(ResNet, "ciap_tiny_resnet", pretrained, **dict(args, **kwargs))
