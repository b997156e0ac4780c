"""Pieces shared by the gradient-trained learners: model as pure functions, optimizers, losses."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cljax import models

OPTIMIZERS = ("sgd", "adam", "adamw")
MASKED = -1e9  # logit of a class the learner has not seen; finite so softmax stays NaN-free


class PureModel(NamedTuple):
  """A Flax NNX model split once into a static graph and a pure parameter dict.

  ``apply(params, x) -> logits [B, K]`` and ``features(params, x) -> [B, F]`` are pure, so they
  jit, differentiate and checkpoint like any function of arrays.
  """

  graphdef: nnx.GraphDef
  params: dict
  apply: Callable[[dict, jax.Array], jax.Array]
  features: Callable[[dict, jax.Array], jax.Array]


def pure_model(name: str, in_shape, num_classes: int, key: jax.Array,
               model_kwargs: Optional[dict] = None) -> PureModel:
  """Builds model ``name`` and splits it into graphdef + pure params (see ``PureModel``)."""
  module = models.create(name, in_shape, num_classes, key, **(model_kwargs or {}))
  graphdef, state = nnx.split(module)
  params = nnx.to_pure_dict(state)

  def apply(p, x):
    return nnx.merge(graphdef, p, copy=True)(x)

  def features(p, x):
    return nnx.merge(graphdef, p, copy=True).features(x)

  return PureModel(graphdef, params, apply, features)


class LazyModel:
  """A model built by a learner's ``init`` (which first sees the input shape) and used by its
  jitted functions at trace time. ``build(key, x)`` returns the initial params; ``apply`` runs
  the model and raises a clear error when called before ``build``."""

  def __init__(self, learner: str, model: str, num_classes: int,
               model_kwargs: Optional[dict] = None):
    self._learner, self._model, self._k, self._kw = learner, model, num_classes, model_kwargs
    self.pure: Optional[PureModel] = None

  def build(self, key: jax.Array, x: jax.Array) -> dict:
    self.pure = pure_model(self._model, x.shape[1:], self._k, key, self._kw)
    return self.pure.params

  def apply(self, params, x):
    if self.pure is None:
      raise RuntimeError(f"learner {self._learner!r}: call init(key, example_batch) before "
                         "update/predict")
    return self.pure.apply(params, x)


def optimizer(name: str, lr: float, momentum: float = 0.9,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``sgd`` (momentum, L2 weight decay added to the gradient), ``adam`` or ``adamw``."""
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr, momentum=momentum or None))
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
  if name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")


def cross_entropy(logits: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted mean softmax cross-entropy; logits [B, K], y [B] int, weight [B] (0 = ignore)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def mask_logits(logits: jax.Array, seen: jax.Array) -> jax.Array:
  """Sets the logits of classes not seen yet (seen [K] bool) to a large negative value."""
  return jnp.where(seen[None, :], logits, MASKED)
