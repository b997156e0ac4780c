"""Pieces shared by the gradient-trained learners: model as pure functions, optimizers, losses."""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

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
  jit, differentiate and checkpoint like any function of arrays. ``params`` is the module's whole
  state: for batch-norm models (e.g. ResNet-18) it holds the running statistics too, and
  ``apply``/``features`` use them (inference mode: a row's output does not depend on its batch).

  ``apply_train(params, x, mask=None) -> (logits, trained)`` runs the model in training mode
  (batch norm normalises with the batch's statistics over the rows where ``mask`` [B] is True,
  when the model takes a mask) and returns in ``trained`` the params with the running statistics
  moved by that batch (no gradient flows into them). A training step differentiates the loss of
  ``logits``, applies its optimizer update, then ``with_stats(new_params, trained)`` keeps the
  moved statistics: torch's ``model.train()`` / ``model.eval()`` semantics. Models without batch
  norm: ``apply_train`` is ``apply`` and ``trained`` is ``params``.
  """

  graphdef: nnx.GraphDef
  params: dict
  apply: Callable[[dict, jax.Array], jax.Array]
  features: Callable[[dict, jax.Array], jax.Array]
  apply_train: Callable[..., tuple] = None
  stat_mask: Any = None  # same tree as params: True at running-statistic leaves

  def with_stats(self, params: dict, trained: dict, take=True) -> dict:
    """``params`` with the running statistics of ``trained`` where ``take`` (a bool scalar)."""
    return jax.tree.map(lambda is_stat, p, t: jnp.where(take, t, p) if is_stat else p,
                        self.stat_mask, params, trained)


def pure_model(name: str, in_shape, num_classes: int, key: jax.Array,
               model_kwargs: Optional[dict] = None) -> PureModel:
  """Builds model ``name`` and splits it into graphdef + pure params (see ``PureModel``)."""
  module = models.create(name, in_shape, num_classes, key, **(model_kwargs or {}))
  return pure_model_of(module)


def takes_mode(fn) -> bool:
  """Whether a module method takes ``use_running_average`` (batch-norm models, e.g. ResNet-18)."""
  return "use_running_average" in inspect.signature(fn).parameters


def pure_model_of(module: nnx.Module) -> PureModel:
  """``PureModel`` of an existing module (see ``PureModel``).

  The running statistics never get gradients (stop_gradient) and ``optimizer`` never decays
  them. Why training mode matters: fine-tuning a base-trained ResNet-18 with its statistics
  frozen diverged within ~20 steps here (Adam 1e-3: loss stuck at log 10).
  """
  graphdef, state = nnx.split(module)
  params = nnx.to_pure_dict(state)
  stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
  stat_paths = {p for p, _ in jax.tree_util.tree_flatten_with_path(stats)[0]}
  stat_mask = jax.tree_util.tree_map_with_path(lambda p, _: p in stat_paths, params)
  call = type(module).__call__
  bn = takes_mode(call)
  eval_kw = {"use_running_average": True} if bn else {}
  feat = getattr(type(module), "features", None)
  feat_kw = eval_kw if feat is not None and takes_mode(feat) else {}
  takes_mask = "mask" in inspect.signature(call).parameters

  def merged(p):
    m = nnx.merge(graphdef, p, copy=True)
    nnx.update(m, jax.tree.map(jax.lax.stop_gradient, nnx.state(m, nnx.BatchStat)))
    return m

  def apply(p, x):
    return merged(p)(x, **eval_kw)

  def features(p, x):
    return merged(p).features(x, **feat_kw)

  def apply_train(p, x, mask=None):
    if not bn:
      return apply(p, x), p
    m = merged(p)
    kw = {"mask": mask} if mask is not None and takes_mask else {}
    logits = m(x, use_running_average=False, **kw)
    return logits, jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(m)))

  return PureModel(graphdef, params, apply, features, apply_train, stat_mask)


def warm_start(params: dict, init_params: Optional[dict], learner: str, built: str) -> dict:
  """``params`` of a freshly built model, or ``init_params`` (a warm start) when given; a
  structure mismatch is a clear error naming the learner and what was built (``built``)."""
  if init_params is None:
    return params
  if jax.tree.structure(init_params) != jax.tree.structure(params):
    raise ValueError(f"learner {learner!r}: init_params do not match the {built}")
  return jax.tree.map(jnp.asarray, init_params)


class LazyModel:
  """A model built by a learner's ``init`` (which first sees the input shape) and used by its
  jitted functions at trace time. ``build(key, x)`` returns the initial params; ``apply``,
  ``apply_train`` and ``with_stats`` are ``PureModel``'s, and raise a clear error when called
  before ``build``."""

  def __init__(self, learner: str, model: str, num_classes: int,
               model_kwargs: Optional[dict] = None):
    self._learner, self._model, self._k, self._kw = learner, model, num_classes, model_kwargs
    self.pure: Optional[PureModel] = None

  def build(self, key: jax.Array, x: jax.Array, init_params: Optional[dict] = None) -> dict:
    """Builds the model for inputs like x [B, ...]; returns its initial params, or
    ``init_params`` (a warm start, e.g. a base-initialised network) once checked to fit it."""
    self.pure = pure_model(self._model, x.shape[1:], self._k, key, self._kw)
    return warm_start(self.pure.params, init_params, self._learner,
                      f"model {self._model!r} built for inputs {tuple(x.shape[1:])}")

  def _built(self) -> PureModel:
    if self.pure is None:
      raise RuntimeError(f"learner {self._learner!r}: call init(key, example_batch) before "
                         "update/predict")
    return self.pure

  def apply(self, params, x):
    return self._built().apply(params, x)

  def apply_train(self, params, x, mask=None):
    return self._built().apply_train(params, x, mask)

  def with_stats(self, params, trained, take=True):
    return self._built().with_stats(params, trained, take)


def train_step(net, tx: optax.GradientTransformation, params: dict, opt, x: jax.Array,
               w: jax.Array, loss_fn: Callable, edit_update: Optional[Callable] = None):
  """One optimizer step with the model in training mode (``PureModel.apply_train``).

  Args:
    net: a ``PureModel`` or ``LazyModel``.
    x: [B, ...] inputs; w: [B] row weights (0 = padding: left out of batch-norm statistics when
      the model takes a mask; an all-zero batch leaves the running statistics unchanged).
    loss_fn: (params, logits [B, K]) -> scalar loss.
    edit_update: optional (update tree) -> update tree, applied before the update is added.

  Returns:
    (params, opt, loss): new parameters with the running statistics moved by the batch.
  """
  def f(p):
    logits, trained = net.apply_train(p, x, w > 0)
    return loss_fn(p, logits), trained

  (loss, trained), grads = jax.value_and_grad(f, has_aux=True)(params)
  upd, opt = tx.update(grads, opt, params)
  if edit_update is not None:
    upd = edit_update(upd)
  new = jax.tree.map(jnp.add, params, upd)
  return net.with_stats(new, trained, jnp.sum(w) > 0), opt, loss


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
