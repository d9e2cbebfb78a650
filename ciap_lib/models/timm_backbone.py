"""timm backbones: ``image_backbone: timm/<name>[.<tag>]``, e.g. ``timm/vit_base_patch32_clip_224.openai``.

* **Names**: any model timm knows (``timm.is_model`` and, with a tag, a pretrained config for that tag).
* **Weights** (``image_pretrained: pretrained``): the weights the tag names, always loaded through timm's own
  pretrained path from a local file: ``timm.create_model(name, pretrained=True,
  pretrained_cfg_overlay=dict(file=...))``, which runs the model's checkpoint filter (CLIP/DINOv2 key
  conversion, position-embedding resampling) and loads strictly. The file is ``image_weights`` when set, else
  the one in the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``:
  ``model.safetensors``, else ``pytorch_model.bin``, of the tag's ``hf_hub_id``), else timm's torch hub cache
  file of the tag's URL. Nothing is ever downloaded: a missing file is an :class:`ImageWeightsNotFoundError`
  naming the model, the files looked for and how to get them. ``image_weights`` must hold the whole model as
  timm saves it (``timm.create_model(name).state_dict()``, classifier included) or as the hub publishes it.
* **Features**: CLIP image towers (see :func:`is_clip_tower`) keep their head, the projection into CLIP's joint
  image-text space, so the features are CLIP's own image embedding (512-d for ViT-B/32), as in V2A-Mapper;
  every other model gives its pooled features (``reset_classifier(0)``).
* **Preprocessing**: ``timm.data.resolve_data_config`` of the model (input size, mean/std, interpolation, crop
  pct/mode); ``image_size`` overrides the input size (and is passed as ``img_size`` to models with a fixed input
  size, e.g. ViTs, whose position embeddings timm then resamples).
* **Blocks** (``unfreeze_last``): timm's fine-grained ``group_matcher`` groups (see ``ciap_lib.models.backbones``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ciap_lib.images import ImagePreprocess
from ciap_lib.models.backbones import Backbone, ImageWeightsNotFoundError, register_backbone
from ciap_lib.models.config import ModelConfig

#: Hugging Face file names timm reads for a hub id without an ``hf_hub_filename`` (safetensors first, as timm)
HF_FILES = ("model.safetensors", "pytorch_model.bin")
#: tag parts that mark a fine-tuned classifier head (not CLIP's projection)
_FINE_TUNED = ("in1k", "in12k", "in22k")


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` (``arch[.tag]``) as a dict; ``ValueError`` when timm does not know it."""
    if not timm.is_model(name):
        raise ValueError(f"timm does not know the model {name!r} (timm {timm.__version__}; "
                         "see timm.list_models())")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as e:  # an unknown tag
        raise ValueError(f"timm model {name!r}: {e} (see timm.list_pretrained({name.split('.')[0] + '*'!r}))") from None
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}")
    return cfg.to_dict()


def is_clip_tower(name: str, cfg: dict[str, Any]) -> bool:
    """A CLIP-style image tower whose timm head is the projection into the joint image-text space: "clip" in the
    model name or tag, a head (``num_classes`` > 0), and a tag that is not a classifier fine-tune (no ``ft``,
    ``in1k``, ``in12k``, ``in22k``). E.g. ``vit_base_patch32_clip_224.openai`` (512-d) yes,
    ``vit_base_patch32_clip_224.laion2b_ft_in12k_in1k`` (ImageNet classifier) no."""
    tag = str(cfg.get("tag") or "")
    fine_tuned = "ft" in tag.split("_") or any(m in tag for m in _FINE_TUNED)
    return "clip" in f"{name}.{tag}".lower() and int(cfg.get("num_classes") or 0) > 0 and not fine_tuned


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_files(cfg: dict[str, Any]) -> list[str]:
    name = cfg.get("hf_hub_filename")
    if not name:
        return list(HF_FILES)
    safe = [name[:-4] + ".safetensors"] if name.endswith(".bin") else []
    return safe + [name]


def find_weights(name: str, config: ModelConfig) -> Path:
    """The local file holding the pretrained weights of timm model ``name`` (see the module doc for the order);
    :class:`ImageWeightsNotFoundError` naming the model, every file looked for and how to get one."""
    if config.image_weights:
        p = Path(config.image_weights)
        if p.is_file():
            return p
        raise ImageWeightsNotFoundError(
            f"image_weights={str(p)!r}: file not found (the pretrained weights of timm model {name!r}); "
            "point image_weights at the file, or use image_pretrained=none")
    cfg = pretrained_cfg(name)
    looked: list[str] = []
    how: list[str] = []
    repo = cfg.get("hf_hub_id")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = str(repo).partition("@")
        cache = hf_cache_dir()
        for filename in _hf_files(cfg):
            found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
            looked.append(str(cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "<revision>" / filename))
        how.append(f"hf download {repo_id} {_hf_files(cfg)[0]} (the Hugging Face CLI; then copy the cache here, "
                   f"or set HF_HUB_CACHE)")
    url = cfg.get("url")
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url))
        if p.is_file():
            return p
        looked.append(str(p))
        how.append(f"download {url} and put it at {p}")
    if not looked:
        raise ImageWeightsNotFoundError(f"timm model {name!r} names no pretrained weights (no Hugging Face id or URL); "
                                        "set image_weights=<file> or use image_pretrained=none")
    raise ImageWeightsNotFoundError(  # one line: config checks list one problem per line
        f"the pretrained weights of timm model {name!r} are not on this machine (looked for "
        + ", ".join(looked) + "). Get them on a machine with network access: " + "; or ".join(how)
        + "; or set image_weights=<file> (timm's whole-model .safetensors); or use image_pretrained=none")


class TimmFamily:
    """The ``timm/`` prefix: any timm model (see the module doc)."""

    pretrained = ("none", "pretrained")

    def check(self, name: str, config: ModelConfig, check_weights: bool) -> list[str]:
        try:
            pretrained_cfg(name)
        except ValueError as e:
            return [f"image_backbone: {e}"]
        if config.image_pretrained == "pretrained" and check_weights:
            try:
                find_weights(name, config)
            except ImageWeightsNotFoundError as e:
                return [f"image_pretrained: {e}"]
        return []

    def build(self, name: str, config: ModelConfig, load_pretrained: bool) -> Backbone:
        cfg = pretrained_cfg(name)
        kwargs: dict[str, Any] = {}
        if config.image_size and cfg.get("fixed_input_size"):
            kwargs["img_size"] = config.image_size
        if config.image_pretrained == "pretrained" and load_pretrained:
            path = find_weights(name, config)
            try:
                net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
            except (RuntimeError, KeyError, ValueError, OSError) as e:
                raise ValueError(
                    f"image_weights {str(path)!r}: not the weights of timm model {name!r} "
                    f"({type(e).__name__}: {str(e)[:600]}). The file must hold the whole model as timm saves it "
                    "(timm.create_model(name).state_dict(), classifier included) or as the hub publishes it") from e
        else:
            net = timm.create_model(name, pretrained=False, **kwargs)
        if is_clip_tower(name, cfg):
            dim = int(net.num_classes)  # CLIP's projected image embedding
        else:
            net.reset_classifier(0)
            dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        data_config = timm.data.resolve_data_config({}, model=net)
        return Backbone(net, dim, ImagePreprocess.from_timm(data_config, config.image_size))

    def blocks(self, name: str, net: nn.Module) -> tuple[list[list[str]], list[str]]:
        from timm.models import group_parameters

        if not hasattr(net, "group_matcher"):
            raise ValueError(f"unfreeze_last: timm model {name!r} has no group_matcher, so its blocks are unknown; "
                             "use freeze_backbone instead")
        groups = group_parameters(net, net.group_matcher(coarse=False))
        ordered = [list(groups[k]) for k in sorted(groups)][1:]  # the first group is the stem
        tail: list[str] = []
        while ordered and not any(part.isdigit() for n in ordered[-1] for part in n.split(".")):
            tail = ordered.pop() + tail  # final norm / projection / pooling: no block index in their names
        return ordered, tail


register_backbone("timm/", TimmFamily())
