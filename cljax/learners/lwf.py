"""Learning without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2017), class-incremental form.

Before each time step's training the network is copied (the teacher, frozen). Training on the
step's labelled rows minimises

    CE over the classes seen so far  +  λ · KL(softmax(teacher / T) ‖ softmax(student / T))

with the KL over the teacher's classes only (``cljax.ops.distillation.kd_loss``): the old
network's softened outputs on the *new* data stand in for the old data, which is never stored.
Defaults are the paper's λ_o = 1 and T = 2, without a T² factor: Li and Hoiem's Eq. (2) is the
cross-entropy of the softened outputs, weighted by λ_o alone. Reference code: mammoth
``models/lwf.py`` at e75a491 (lines 13-19 ``smooth`` / ``modified_kl_div``, 74-77 the loss: the same
term in its cross-entropy form, which differs from the KL by the teacher's entropy, a constant,
so the gradients are equal; weight α = 0.5 and no T²; it also first warms up the new head rows
alone, which the paper describes as optional and this learner leaves out). ``t_squared=True``
multiplies the term by T² (Hinton et al.'s distillation convention, 4x the paper's weight at
T = 2): the behaviour of this learner before issue 23, kept as an explicit option.

Streaming semantics: ``update`` stores the step's labelled rows (0 passes; the network learns at
the step's end); ``end_of_step`` computes the teacher's logits on the stored rows once
(ceil(rows / batch_size) forward passes, charged at 1/3 pass each: ``_distill``), then spends the
rest of the budget on SGD steps of ``batch_size`` rows drawn uniformly from the step's rows
(``cljax.train.loop.Loop``), and finally makes the trained network the next step's teacher.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

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
from cljax.ops.distillation import kd_loss
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, classifier_step

NET_INPUTS = ("model", "model_kwargs", "batch_size", "init_params", "max_step_size")


class State(NamedTuple):
  """The state of LwF (K = ``num_classes``).

  params: the network's parameters (a pure dict of ``cljax.models.pure.Net``), the student.
  opt: the optimizer state of ``params`` (carried over steps).
  teacher: the parameters at the end of the previous step (frozen; ``params`` at first).
  seen: [K] bool, classes with a labelled example so far (trained on and predicted).
  old: [K] bool, the classes the teacher knew (``seen`` at the previous step's end): the
    distillation term's classes.
  cur: the current step's labelled rows, an ``append`` store of ``max_step_size`` rows.
  soft: [max_step_size, K] float32, the teacher's logits on the rows of ``cur`` (this step's).
  """

  params: Any
  opt: Any
  teacher: Any
  seen: jax.Array
  old: jax.Array
  cur: Any
  soft: jax.Array


def train_step(net: Net, tx: optax.GradientTransformation, batch_size: int, lam: float,
               temperature: float, carry: tuple, data: State, key: jax.Array) -> tuple:
  """The ``Loop`` step: SGD on ``batch_size`` rows drawn uniformly from the step's rows, CE over
  the seen classes + ``lam`` · KL towards the teacher's softened logits (``lam`` already holds
  the 1 / T² that cancels ``kd_loss``'s T² unless ``t_squared``)."""
  params, opt = carry
  cur = data.cur
  idx, w = _distill.draw_rows(key, cur.count, batch_size)
  x, y, soft, w = sharding.data_rows((cur.x[idx], cur.y[idx], data.soft[idx], w))

  def loss(p, logits):
    del p
    return (cross_entropy(mask_logits(logits, data.seen), y, w)
            + lam * kd_loss(logits, soft, data.old, w, temperature))

  params, opt, l = classifier_step(net, tx, params, opt, x, w, loss)
  return (params, opt), l[None]


@jax.jit
def finish(state: State) -> State:
  """The trained network becomes the teacher of the next step; the step store is cleared."""
  return state._replace(teacher=state.params, old=state.seen, cur=append_store.clear(state.cur))


@register("lwf", inputs=NET_INPUTS)
def lwf(*, num_classes: int, lam: float = 1.0, temperature: float = 2.0,
        t_squared: bool = False, model: str = "mlp",
        model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
        momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
        batch_size: int = 32, epochs_per_step: float = 5.0, max_step_size: int = 4096,
        chunk: int = 8,
        init_params: Optional[dict] = None) -> Learner:
  """Builds LwF (see the module docstring).

  Args:
    num_classes: K (unseen classes are masked in training and prediction).
    lam: λ, weight of the distillation term (paper λ_o = 1).
    temperature: T of the softened outputs (paper 2).
    t_squared: multiply the distillation term by T² (Hinton's convention; not the paper's nor
      mammoth's: the pre-issue-23 behaviour, 4x the paper's weight at T = 2).
    model, model_kwargs, optimizer, lr, momentum, weight_decay, accumulate, batch_size,
      epochs_per_step, max_step_size, chunk, init_params: as for ``replay.replay_learner`` (the
      optimizer state carries over steps, as the warm-started fine-tuning it extends).
  """
  _distill.check_sizes(batch_size=batch_size, max_step_size=max_step_size, chunk=chunk)
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  tx = optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay,
                   accumulate=accumulate)
  # kd_loss returns T²·KL; the paper's term is the KL alone.
  kd_weight = float(lam) if t_squared else float(lam) / float(temperature) ** 2
  net = Net.named(model, num_classes, **(model_kwargs or {}))
  store = buffers.get("append")
  teacher_logits = _distill.RowMap(net.apply, batch_size)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_cur = jax.random.split(key)
    params = net.init(k_net, x.shape[1:], init_params)
    return State(params=params, opt=tx.init(params), teacher=params,
                 seen=jnp.zeros((num_classes,), bool), old=jnp.zeros((num_classes,), bool),
                 cur=store.init(k_cur, max_step_size,
                                jax.ShapeDtypeStruct(x.shape[1:], jnp.float32), num_classes),
                 soft=jnp.zeros((max_step_size, num_classes), jnp.float32))

  update = _distill.store_update

  loop = Loop(lambda carry, data, key, i, stop: train_step(net, tx, batch_size, kd_weight,
                                                           temperature, carry, data, key),
              chunk=chunk, unroll=True, accumulate=accumulate)

  @jax.jit
  def predict(state, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), state.seen)

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """Teacher logits on the step's rows, then SGD; spends at most ``budget`` passes (with
    ``early_stop``, fewer SGD passes when the held-out score stops improving; the best model
    kept)."""
    n = int(state.cur.count)
    fwd = 0.0
    distil = bool(jnp.any(state.old)) and n > 0
    if distil:
      fwd = _distill.forward_passes(n, batch_size)
      if budget is not None and fwd > budget:  # cannot afford the teacher: no training at all
        distil, fwd = False, 0.0
        budget = 0
    passes = _distill.train_passes(budget, fwd, n, epochs_per_step, batch_size)
    if distil and passes:
      soft, _ = teacher_logits(state.teacher, state.cur.x, n)
      state = state._replace(soft=soft)
    else:
      fwd = 0.0
    (params, opt), sums, stopped = loop.stopping(
        (state.params, state.opt), state, key, passes, early_stop,
        lambda carry, x: predict(state._replace(params=carry[0]), x), progress=progress)
    state = finish(state._replace(params=params, opt=opt))
    planned, passes = passes, (passes if stopped is None else stopped.passes)
    loss = sums[0] / passes if sums is not None else jnp.float32(jnp.nan)
    return state, contract.info(passes + fwd, loss, teacher_passes=jnp.float32(fwd),
                                **early_stop_lib.extra(stopped, planned))

  return Learner("lwf", init, update, end_of_step, predict, early_stopping=True)
