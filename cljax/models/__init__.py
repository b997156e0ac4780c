"""Flax NNX models, chosen by name: ``cljax.models.create(name, in_shape, num_classes, key)``."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import nnx

from cljax.models.small import CNN, MLP


def _resnet18(in_shape, num_classes, rngs, **kw):
  from cljax.models import resnet  # pylint: disable=import-outside-toplevel
  return resnet.ResNet18(in_shape=in_shape, num_classes=num_classes, rngs=rngs, **kw)


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
