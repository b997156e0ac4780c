"""The quadratic-penalty family: EWC (Kirkpatrick et al. 2017) and MAS (Aljundi et al. 2018).

Warm-started fine-tuning on the current step's labelled data plus a quadratic penalty that holds
each parameter near its value after the previous steps, weighted by an importance:

    L(θ) = CE(θ) + ½ λ Σ_i Ω_i (θ_i − θ*_i)²

The two methods differ only in Ω's per-example importance:

* ``ewc``: the diagonal empirical Fisher, the mean over the step's examples of the squared
  per-example gradient of log p(y | x) at the true label (``fisher``).
* ``mas``: label-free, the mean of |∂ ‖f(x)‖²₂ / ∂θ_i| with f the logits: how much the output
  moves when a parameter moves, whatever the label (``output_sensitivity``).

Importance is computed after each step's training, at the new parameters, on the step's data; it
accumulates online, Ω ← γ Ω + Ω_step (``decay`` γ = 1: the sum over steps), and θ* becomes the new
parameters. The importance pass is charged: each batch of ``batch_size`` examples it reads costs one
forward-backward pass, taken from the step's budget before training.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _distill
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, classifier_step

# importance(apply, params, x [...], y []) -> params-shaped tree, for one example
Importance = Callable[[Callable, dict, jax.Array, jax.Array], dict]


class State(NamedTuple):
  """The state of a quadratic-penalty learner (K = ``num_classes``).

  params: the network's parameters (a pure dict of ``cljax.models.pure.Net``).
  opt: the optimizer state of ``params``.
  seen: [K] bool, classes with a labelled example so far (``predict`` masks the others).
  cur: the current step's labelled rows, an ``append`` store of ``max_step_size`` rows.
  anchor: θ*, the parameters after the last finished step (params-shaped).
  importance: Ω, the accumulated per-parameter importance (params-shaped, >= 0).
  """

  params: Any
  opt: Any
  seen: jax.Array
  cur: Any
  anchor: Any
  importance: Any


# --- pure pieces -----------------------------------------------------------------------------


def quadratic_penalty(params, anchor, importance, lam: float) -> jax.Array:
  """½ λ Σ_i Ω_i (θ_i − θ*_i)² over matching pytrees of parameters, anchors and importances."""
  terms = jax.tree.map(lambda p, a, w: jnp.sum(w * (p - a) ** 2), params, anchor, importance)
  return 0.5 * lam * sum(jax.tree.leaves(terms))


def fisher(apply: Callable, params: dict, x: jax.Array, y: jax.Array) -> dict:
  """EWC's importance of one example x [...] with label y []: (∂ log p(y|x) / ∂θ)²."""
  g = jax.grad(lambda p: jax.nn.log_softmax(apply(p, x[None]))[0, y])(params)
  return jax.tree.map(jnp.square, g)


def output_sensitivity(apply: Callable, params: dict, x: jax.Array, y: jax.Array) -> dict:
  """MAS's importance of one example x [...]: |∂ ‖f(x)‖²₂ / ∂θ| (y is not used)."""
  del y
  g = jax.grad(lambda p: jnp.sum(apply(p, x[None]) ** 2))(params)
  return jax.tree.map(jnp.abs, g)


def importance_passes_of(importance_passes: int, rows: int, batch_size: int,
                         budget: Optional[int]) -> int:
  """Batches the importance pass reads: min(importance_passes, ceil(rows / batch_size), budget)."""
  n = min(importance_passes, math.ceil(rows / batch_size))
  return n if budget is None else min(n, budget)


# --- step functions (jitted by the factory) ---------------------------------------------------


def train_step(net: Net, tx: optax.GradientTransformation, batch_size: int, lam: float,
               carry: tuple, data: State, key: jax.Array) -> tuple:
  """The ``Loop`` step: SGD on ``batch_size`` rows drawn from the step's rows, CE + penalty."""
  params, opt = carry
  s = buffers.get("append").sample(data.cur, key, batch_size)
  x, y, w = sharding.data_rows((s.x, s.y, s.weight))
  params, opt, loss = classifier_step(
      net, tx, params, opt, x, w,
      lambda p, logits: (cross_entropy(logits, y, w)
                         + quadratic_penalty(p, data.anchor, data.importance, lam)))
  return (params, opt), loss[None]


def importance_batch(net: Net, importance: Importance, batch_size: int, state: State,
                     start: jax.Array) -> Any:
  """Sum of per-example importances over rows [start, start + batch_size) of the step's rows
  (rows past the count weigh 0); a params-shaped tree."""
  cur = state.cur
  cap = cur.y.shape[0]
  rows = start + jnp.arange(batch_size)
  w = (rows < cur.count).astype(jnp.float32)
  rows = jnp.minimum(rows, cap - 1)
  per = jax.vmap(lambda x, y: importance(net.apply, state.params, x, y))(cur.x[rows], cur.y[rows])
  return jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1), per)


def consolidate(decay: float, state: State, total: Any, n: jax.Array) -> State:
  """Ω ← γ Ω + total / n; anchor θ* ← θ; clears the step store."""
  scale = 1.0 / jnp.maximum(n, 1.0)
  imp = jax.tree.map(lambda o, t: decay * o + t * scale, state.importance, total)
  return state._replace(importance=imp, anchor=state.params, cur=append_store.clear(state.cur))


# --- the factory ------------------------------------------------------------------------------


def penalty_learner(name: str, importance: Importance, *, num_classes: int,
                    model: str = "mlp", model_kwargs: Optional[dict] = None,
                    optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                    weight_decay: float = 0.0, accumulate: int = 1, batch_size: int = 32,
                    lam: float = 100.0,
                    decay: float = 1.0, importance_passes: int = 16,
                    epochs_per_step: float = 5.0, max_step_size: int = 4096, chunk: int = 8,
                    init_params: Optional[dict] = None) -> Learner:
  """Builds a quadratic-penalty learner (see the module docstring).

  Args:
    importance: per-example importance (``fisher`` or ``output_sensitivity``).
    num_classes, model, model_kwargs, optimizer, lr, momentum, weight_decay, accumulate,
      batch_size, epochs_per_step, max_step_size, chunk, init_params: as for
      ``replay.replay_learner``.
    lam: penalty strength λ.
    decay: online accumulation factor γ of the importance (1 = sum over steps).
    importance_passes: the most batches of the step's data read to estimate the importance; the
      pass uses min(this, ceil(step size / batch_size), budget) batches, each charged one pass.
  """
  _distill.check_sizes(batch_size=batch_size, max_step_size=max_step_size, chunk=chunk)
  tx = optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay,
                   accumulate=accumulate)
  net = Net.named(model, num_classes, **(model_kwargs or {}))

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_cur = jax.random.split(key)
    params = net.init(k_net, x.shape[1:], init_params)
    cur = buffers.get("append").init(
        k_cur, max_step_size, jax.ShapeDtypeStruct(x.shape[1:], jnp.float32), num_classes)
    return State(params=params, opt=tx.init(params), seen=jnp.zeros((num_classes,), bool),
                 cur=cur, anchor=params, importance=jax.tree.map(jnp.zeros_like, params))

  loop = Loop(lambda carry, data, key, i, stop: train_step(net, tx, batch_size, lam, carry, data,
                                                           key), chunk=chunk, unroll=True,
              accumulate=accumulate)
  imp_batch = jax.jit(lambda state, start: importance_batch(net, importance, batch_size, state,
                                                            start))
  finish = jax.jit(lambda state, total, n: consolidate(decay, state, total, n))
  clear = jax.jit(lambda state: state._replace(cur=append_store.clear(state.cur)))

  @jax.jit
  def predict(state, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), state.seen)

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """Trains, then estimates the importance; together they spend exactly ``budget`` passes
    (with ``early_stop``, the training fewer when the held-out score stops improving; the best
    model kept, its importance estimated)."""
    n = int(state.cur.count)
    imp_passes = importance_passes_of(importance_passes, n, batch_size, budget)
    planned = (budget - imp_passes if budget is not None
               else contract.default_passes(epochs_per_step, n, batch_size))
    (params, opt), sums, stopped = loop.stopping(
        (state.params, state.opt), state, key, planned, early_stop,
        lambda carry, x: predict(state._replace(params=carry[0]), x), progress=progress)
    train = planned if stopped is None else stopped.passes
    state = state._replace(params=params, opt=opt)
    acc = None
    for b in range(imp_passes):
      part = imp_batch(state, jnp.int32(b * batch_size))
      acc = part if acc is None else jax.tree.map(jnp.add, acc, part)
    used = min(n, imp_passes * batch_size)
    state = finish(state, acc, jnp.float32(used)) if used else clear(state)
    loss = sums[0] / train if sums is not None else jnp.float32(jnp.nan)
    return state, contract.info(train + imp_passes, loss, importance_passes=imp_passes,
                                **early_stop_lib.extra(stopped, planned))

  return Learner(name=name, init=init, update=_distill.store_update, end_of_step=end_of_step,
                 predict=predict, early_stopping=True)


# --- registered wrappers ----------------------------------------------------------------------

_INPUTS = ("model", "model_kwargs", "batch_size", "init_params", "max_step_size")


@register("ewc", inputs=_INPUTS)
def ewc(*, num_classes: int, lam: float = 100.0, decay: float = 1.0,
        importance_passes: int = 16, model: str = "mlp",
        model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
        momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
        batch_size: int = 32, epochs_per_step: float = 5.0, max_step_size: int = 4096, chunk: int = 8,
        init_params: Optional[dict] = None) -> Learner:
  """EWC: diagonal empirical Fisher penalty, accumulated online over steps."""
  return penalty_learner("ewc", fisher, **locals())


@register("mas", inputs=_INPUTS)
def mas(*, num_classes: int, lam: float = 1.0, decay: float = 1.0,
        importance_passes: int = 16, model: str = "mlp",
        model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
        momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
        batch_size: int = 32, epochs_per_step: float = 5.0, max_step_size: int = 4096, chunk: int = 8,
        init_params: Optional[dict] = None) -> Learner:
  """MAS: label-free importance mean |∂‖f(x)‖²/∂θ|, EWC's penalty form."""
  return penalty_learner("mas", output_sensitivity, **locals())
