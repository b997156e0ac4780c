"""Pieces shared by the gradient-trained learners: model as pure functions, optimizers, losses."""

from __future__ import annotations

import inspect
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


BN_MODES = ("eval", "batch")


def pure_model(name: str, in_shape, num_classes: int, key: jax.Array,
               model_kwargs: Optional[dict] = None, bn_mode: str = "eval") -> PureModel:
  """Builds model ``name`` and splits it into graphdef + pure params (see ``pure_model_of``)."""
  module = models.create(name, in_shape, num_classes, key, **(model_kwargs or {}))
  return pure_model_of(module, bn_mode)


def takes_mode(fn) -> bool:
  """Whether a module method takes ``use_running_average`` (batch-norm models, e.g. ResNet-18)."""
  return "use_running_average" in inspect.signature(fn).parameters


def pure_model_of(module: nnx.Module, bn_mode: str = "eval") -> PureModel:
  """``PureModel`` of an existing module; ``params`` is its whole state (batch statistics too).

  For modules whose ``__call__`` takes ``use_running_average`` (batch norm), ``bn_mode``:

  * "eval": batch norm uses the running statistics in ``params``, so an output row does not
    depend on the rest of the batch (base models, frozen backbones, evaluation).
  * "batch": batch norm normalises with the statistics of the batch itself, in training and in
    prediction; the running statistics are not used or updated. This is how the SGD learners
    (``LazyModel``) train such a model without carrying statistics in their state: measured here,
    fine-tuning a base-trained ResNet-18 with its statistics frozen ("eval") diverged within ~20
    steps (Adam 1e-3: loss stuck at log 10; SGD 0.01: saturated logits), while batch statistics
    keep activations normalised. Predictions then depend on the test batch's composition.

  Either way the running statistics get zero gradients (stop_gradient) and no weight decay from
  ``optimizer``.
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f"unknown bn_mode {bn_mode!r}; valid: {list(BN_MODES)}")
  graphdef, state = nnx.split(module)
  params = nnx.to_pure_dict(state)
  ura = {"use_running_average": bn_mode == "eval"}
  call_kw = ura if takes_mode(type(module).__call__) else {}
  feat = getattr(type(module), "features", None)
  feat_kw = ura if feat is not None and takes_mode(feat) else {}

  def merged(p):
    m = nnx.merge(graphdef, p, copy=True)
    stats = nnx.state(m, nnx.BatchStat)
    nnx.update(m, jax.tree.map(jax.lax.stop_gradient, stats))  # never trained by gradients
    return m

  def apply(p, x):
    return merged(p)(x, **call_kw)

  def features(p, x):
    return merged(p).features(x, **feat_kw)

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
    # Batch-norm models train and predict with batch statistics (see pure_model_of).
    self.pure = pure_model(self._model, x.shape[1:], self._k, key, self._kw, bn_mode="batch")
    return self.pure.params

  def apply(self, params, x):
    if self.pure is None:
      raise RuntimeError(f"learner {self._learner!r}: call init(key, example_batch) before "
                         "update/predict")
    return self.pure.apply(params, x)


_STAT_LEAVES = ("mean", "var")  # nnx.BatchNorm's running statistics in a pure dict


def _decay_mask(params):
  # Batch-norm running statistics are not weights: no decay (they would shrink while frozen).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not (path and getattr(path[-1], "key", None) in _STAT_LEAVES), params)


def optimizer(name: str, lr, momentum: float = 0.9,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``sgd`` (momentum, L2 weight decay added to the gradient), ``adam`` or ``adamw``.

  lr: a float or an optax schedule. Leaves named ``mean``/``var`` (batch-norm statistics) get
  no weight decay.
  """
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=_decay_mask),
                       optax.sgd(lr, momentum=momentum or None))
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=_decay_mask), optax.adam(lr))
  if name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay, mask=_decay_mask)
  raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")


def cross_entropy(logits: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted mean softmax cross-entropy; logits [B, K], y [B] int, weight [B] (0 = ignore)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def mask_logits(logits: jax.Array, seen: jax.Array) -> jax.Array:
  """Sets the logits of classes not seen yet (seen [K] bool) to a large negative value."""
  return jnp.where(seen[None, :], logits, MASKED)
