"""Regularization baselines: EWC (Kirkpatrick et al. 2017) and MAS (Aljundi et al. 2018).

Both are warm-started fine-tuning on the current step's labelled data plus a quadratic penalty
that holds each parameter near its value after the previous steps, weighted by an importance:

    L(θ) = CE(θ) + ½ λ Σ_i Ω_i (θ_i − θ*_i)²

* ``ewc``: Ω = diagonal empirical Fisher, the mean over the step's examples of the squared
  per-example gradient of log p(y | x) (true labels);
* ``mas``: Ω = mean over the step's examples of |∂ ‖f(x)‖²₂ / ∂θ|, f = the logits (label-free).

Importance is computed after each step's training, at the new parameters, on the step's data; it
accumulates online, Ω ← γ Ω + Ω_step (``decay`` γ = 1: the sum over steps), and θ* becomes the new
parameters. The importance pass is charged: each batch of ``batch_size`` examples it reads costs one
forward-backward pass, taken from the step's budget before training.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import jax
import jax.numpy as jnp

from cljax.learner import Learner, register
from cljax.learners import _common
from cljax.ops import buffers
from cljax.ops import sharding

IMPORTANCES = ("fisher", "mas")


def penalty(params, anchor, importance, lam: float) -> jax.Array:
  """½ λ Σ_i Ω_i (θ_i − θ*_i)² over matching pytrees of parameters, anchors and importances."""
  terms = jax.tree.map(lambda p, a, w: jnp.sum(w * (p - a) ** 2), params, anchor, importance)
  return 0.5 * lam * sum(jax.tree.leaves(terms))


def _regularized(name: str, importance: str, *, num_classes: int, model: str = "cnn",
                 model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
                 lam: float = 100.0, decay: float = 1.0, importance_passes: int = 16,
                 epochs_per_step: float = 2.0, max_step_size: int = 4096,
                 chunk: int = 8, init_params: Optional[dict] = None) -> Learner:
  """Builds ``ewc`` or ``mas`` (see module docstring).

  Args:
    num_classes, model, model_kwargs, optimizer, lr, momentum, weight_decay, batch_size,
      epochs_per_step, max_step_size, chunk: as for ``sgd.sgd_learner``.
    lam: penalty strength λ.
    decay: online accumulation factor γ of the importance (1 = sum over steps).
    importance_passes: the most batches of the step's data read to estimate the importance; the
      pass uses min(this, ceil(step size / batch_size), budget) batches, each charged one pass.
    init_params: start from these parameters (e.g. an MAE-pretrained ViT) instead of a random
      initialization; same model and structure.
  """
  if importance not in IMPORTANCES:
    raise ValueError(f"unknown importance {importance!r}; valid: {list(IMPORTANCES)}")
  for k, v in (("batch_size", batch_size), ("max_step_size", max_step_size),
               ("num_classes", num_classes), ("chunk", chunk)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  tx = _common.optimizer(optimizer, lr, momentum, weight_decay)
  net = _common.LazyModel(name, model, num_classes, model_kwargs)
  _apply = net.apply

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    params = net.build(key, x, init_params)
    return {"params": params, "opt": tx.init(params), "seen": jnp.zeros((num_classes,), bool),
            "cur": buffers.init(max_step_size, x.shape[1:], num_classes),
            "anchor": params, "importance": jax.tree.map(jnp.zeros_like, params)}

  def update(state, batch, key):
    del key
    mask = batch["valid"] & batch["labeled"]
    y = jnp.where(mask, batch["y"], 0).astype(jnp.int32)
    seen = state["seen"] | jnp.any(jax.nn.one_hot(y, num_classes, dtype=bool) & mask[:, None], 0)
    return ({**state, "seen": seen, "cur": buffers.append(state["cur"], batch["x"], y, mask)},
            {"passes": jnp.float32(0.0)})

  def _train_chunk(state, key, start, stop):
    """``chunk`` SGD steps on the current step's data, unrolled, masked past ``stop``."""
    cur = state["cur"]
    total = jnp.zeros(())
    for i in range(chunk):
      idx = buffers.sample_indices(jax.random.fold_in(key, start + i), cur["count"], batch_size)
      x, y, w = sharding.data_rows(
          (cur["x"][idx], cur["y"][idx], jnp.full((batch_size,), cur["count"] > 0, jnp.float32)))
      params, opt, loss = _common.train_step(
          net, tx, state["params"], state["opt"], x, w,
          lambda p, logits, y=y, w=w, st=state: (
              _common.cross_entropy(logits, y, w)
              + penalty(p, st["anchor"], st["importance"], lam)))
      new = {**state, "params": params, "opt": opt}
      active = start + i < stop
      state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
      total = total + jnp.where(active, loss, 0.0)
    return state, total

  def _example_importance(params, x, y):
    """Importance of one example x [...] with label y []: a pytree shaped like params."""
    if importance == "fisher":
      g = jax.grad(lambda p: jax.nn.log_softmax(_apply(p, x[None]))[0, y])(params)
      return jax.tree.map(jnp.square, g)
    g = jax.grad(lambda p: jnp.sum(_apply(p, x[None]) ** 2))(params)
    return jax.tree.map(jnp.abs, g)

  def _importance_batch(state, start):
    """Sum of per-example importances over rows [start, start + batch_size) of the step data."""
    cur = state["cur"]
    rows = start + jnp.arange(batch_size)
    w = (rows < cur["count"]).astype(jnp.float32)
    rows = jnp.minimum(rows, buffers.capacity(cur) - 1)
    per = jax.vmap(_example_importance, in_axes=(None, 0, 0))(
        state["params"], cur["x"][rows], cur["y"][rows])
    return jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1), per)

  def _consolidate(state, total, n):
    """Online accumulation Ω ← γ Ω + total / n; anchor θ* ← θ; clears the step buffer."""
    scale = 1.0 / jnp.maximum(n, 1.0)
    imp = jax.tree.map(lambda o, t: decay * o + t * scale, state["importance"], total)
    return {**state, "importance": imp, "anchor": state["params"],
            "cur": buffers.clear(state["cur"])}

  chunk_j, imp_j, cons_j = jax.jit(_train_chunk), jax.jit(_importance_batch), jax.jit(_consolidate)

  def end_of_step(state, key, budget):
    """Trains, then estimates the importance; the two together spend exactly ``budget`` passes."""
    n = int(state["cur"]["count"])
    imp_passes = min(importance_passes, math.ceil(n / batch_size))
    budget = int(budget)
    if budget >= 0:
      imp_passes = min(imp_passes, budget)
      train = budget - imp_passes
    else:
      train = math.ceil(epochs_per_step * n / batch_size)
    total_loss = 0.0
    for start in range(0, train, chunk):
      state, loss = chunk_j(state, key, jnp.int32(start), jnp.int32(train))
      total_loss = total_loss + loss
    acc = jax.tree.map(jnp.zeros_like, state["params"])
    for b in range(imp_passes):
      acc = jax.tree.map(jnp.add, acc, imp_j(state, jnp.int32(b * batch_size)))
    used = min(n, imp_passes * batch_size)
    if used:  # no data read: keep the old importance and anchor
      state = cons_j(state, acc, jnp.float32(used))
    else:
      state = {**state, "cur": buffers.clear(state["cur"])}
    return state, {"passes": jnp.float32(train + imp_passes),
                   "importance_passes": jnp.float32(imp_passes),
                   "loss": jnp.asarray(total_loss, jnp.float32) / max(train, 1)}

  # The compiled pieces, so tests can check that no step size or budget recompiles them.
  end_of_step.jitted = {"chunk": chunk_j, "importance": imp_j, "consolidate": cons_j}

  def predict(state, x):
    return _common.mask_logits(_apply(state["params"], x), state["seen"])

  hp = dict(num_classes=num_classes, model=model, optimizer=optimizer, lr=lr,
            batch_size=batch_size, lam=lam, decay=decay, importance=importance,
            importance_passes=importance_passes, epochs_per_step=epochs_per_step)
  return Learner(name=name, init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)


@register("ewc")
def ewc(*, num_classes: int, lam: float = 100.0, **kw) -> Learner:
  """EWC: diagonal empirical Fisher penalty, accumulated online over steps."""
  return _regularized("ewc", "fisher", num_classes=num_classes, lam=lam, **kw)


@register("mas")
def mas(*, num_classes: int, lam: float = 1.0, **kw) -> Learner:
  """MAS: label-free importance mean |∂‖f(x)‖²/∂θ|, same penalty form as EWC."""
  return _regularized("mas", "mas", num_classes=num_classes, lam=lam, **kw)


_SHARED = [p for p in inspect.signature(_regularized).parameters
           if p not in ("name", "importance", "num_classes", "lam")]
ewc.valid_hparams = ["num_classes", "lam", *_SHARED]
mas.valid_hparams = ["num_classes", "lam", *_SHARED]
