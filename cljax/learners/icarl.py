"""iCaRL (Rebuffi, Kolesnikov, Sperl, Lampert, CVPR 2017): incremental classifier and
representation learning, class-incremental.

* Memory: ``memory_size`` exemplars split evenly over the classes seen, m = memory_size // classes
  (``cljax.ops.buffers`` policy ``ranked``). A new class's exemplars are chosen by herding on the
  L2-normalised features of the updated network (Algorithm 4, ``cljax.ops.herding``) and offered
  in that order; old classes are truncated to their first m (Algorithm 5).
* Representation learning (Algorithm 3): training rows come uniformly from the step's labelled
  rows and the exemplars; the loss is the sigmoid binary cross-entropy over the classes seen so
  far, with one-hot targets for the labels and, on the classes the previous network knew, that
  network's sigmoid outputs as targets (distillation; ``cljax.ops.distillation``).
* Classification (Algorithm 1): nearest mean of exemplars, ``argmin_y ‖φ(x) − μ_y‖`` with φ the
  L2-normalised features (the network's ``features``: the penultimate layer) and μ_y the
  re-normalised mean of the class's exemplars. Before the first step ends (no exemplars yet) the
  network's own outputs over the seen classes are used.

Reference code: mammoth ``models/icarl.py`` (herding in ``fill_buffer``, the loss in
``get_loss``, NME in ``forward``); the original is srebuffi/iCaRL (Theano). Paper settings
(CIFAR-100): memory 2,000, 32-layer ResNet, SGD lr 2.0 for 70 epochs per step; here the house
defaults (Adam 1e-3, a budget of passes) and ``memory_size=2000``.

Budget: ``update`` stores the step's rows (0 passes). ``end_of_step`` charges every forward at 1/3
pass per batch (``_distill``): the previous network's logits on the training rows (step rows and
exemplars, from the second step on), the features of the step's rows for herding and of the
exemplars for the class means; SGD steps of ``batch_size`` rows get what remains.
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
from cljax.ops.distillation import icarl_targets, sigmoid_bce
from cljax.ops.herding import herding_ranks, normalise
from cljax.ops.losses import mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, classifier_step


class State(NamedTuple):
  """The state of iCaRL (K = ``num_classes``, F = the network's feature size).

  params: the network's parameters (a pure dict of ``cljax.models.pure.Net``).
  opt: the optimizer state of ``params`` (carried over steps).
  teacher: the parameters at the end of the previous step (``params`` at first).
  seen: [K] bool, classes with a labelled example so far.
  old: [K] bool, the classes the teacher knew (distillation targets on those).
  cur: the current step's labelled rows, an ``append`` store of ``max_step_size`` rows.
  mem: the exemplars, a ``ranked`` store of ``memory_size`` rows (each class's in herding order).
  soft: [max_step_size + memory_size, K] float32, the teacher's logits on the rows of ``cur``
    (first ``max_step_size`` rows) and of ``mem`` (the rest), this step's.
  means: [K, F] float32, the normalised mean feature of each class's exemplars.
  has_mean: [K] bool, the classes with exemplars (NME predicts among these).
  """

  params: Any
  opt: Any
  teacher: Any
  seen: jax.Array
  old: jax.Array
  cur: Any
  mem: Any
  soft: jax.Array
  means: jax.Array
  has_mean: jax.Array


def nme_scores(feats: jax.Array, means: jax.Array, has_mean: jax.Array) -> jax.Array:
  """Nearest-mean-of-exemplars scores [B, K]: −‖normalise(f) − μ_k‖² (classes without
  exemplars masked). feats [B, F], means [K, F] (already normalised), has_mean [K] bool."""
  phi = normalise(feats)
  d2 = jnp.sum((phi[:, None, :] - means[None, :, :]) ** 2, axis=-1)
  return mask_logits(-d2, has_mean)


def class_means(feats: jax.Array, y: jax.Array, mask: jax.Array, num_classes: int) -> tuple:
  """(μ [K, F]: per class, the re-normalised mean of the normalised features, has [K] bool)."""
  member = (jax.nn.one_hot(jnp.where(mask, y, 0), num_classes) * mask[:, None]).T
  sums = jnp.dot(member, normalise(feats), precision=jax.lax.Precision.HIGHEST)
  return normalise(sums), member.sum(1) > 0


def train_step(net: Net, tx: optax.GradientTransformation, batch_size: int, carry: tuple,
               data: State, key: jax.Array) -> tuple:
  """The ``Loop`` step: SGD on rows drawn uniformly from the step's rows and the exemplars,
  sigmoid BCE with the teacher's outputs as targets on the old classes (Algorithm 3)."""
  params, opt = carry
  cur, mem = data.cur, data.mem
  cap_cur = cur.y.shape[0]
  n_cur = cur.count
  j, w = _distill.draw_rows(key, n_cur + mem.count, batch_size)
  from_cur = j < n_cur
  jm = jnp.maximum(j - n_cur, 0)
  sel = from_cur.reshape((-1,) + (1,) * (cur.x.ndim - 1))
  x = jnp.where(sel, cur.x[jnp.minimum(j, cap_cur - 1)], mem.x[jm])
  y = jnp.where(from_cur, cur.y[jnp.minimum(j, cap_cur - 1)], mem.y[jm])
  soft = data.soft[jnp.where(from_cur, j, cap_cur + jm)]
  x, y, soft, w = sharding.data_rows((x, y, soft, w))
  targets = icarl_targets(soft, y, data.old)
  params, opt, l = classifier_step(
      net, tx, params, opt, x, w,
      lambda p, logits: sigmoid_bce(logits, targets, data.seen, w))
  return (params, opt), l[None]


def herd_step(memory_size: int, num_classes: int, state: State, feats: jax.Array) -> State:
  """Offers the step's rows (features ``feats`` [max_step_size, F]) to the memory in herding
  order, m = memory_size // classes (Algorithms 4 and 5)."""
  cur, mem = state.cur, state.mem
  valid = jnp.arange(cur.y.shape[0]) < cur.count
  classes = (mem.class_seen > 0) | (cur.class_count > 0)
  m = memory_size // jnp.maximum(jnp.sum(classes), 1)
  rank = herding_ranks(feats, cur.y, valid, m, num_classes)
  order = jnp.argsort(rank, stable=True)  # each class's rows in herding order
  chosen = rank[order] < m
  return state._replace(mem=buffers.get("ranked").insert(mem, cur.x[order], cur.y[order], chosen))


def finish_step(memory_size: int, num_classes: int, state: State, mem_feats: jax.Array) -> State:
  """Class means of the exemplars (features ``mem_feats`` [memory_size, F]); the trained network
  becomes the teacher; the step store is cleared."""
  mem = state.mem
  means, has = class_means(mem_feats, mem.y, jnp.arange(memory_size) < mem.count, num_classes)
  return state._replace(means=means, has_mean=has, teacher=state.params, old=state.seen,
                        cur=append_store.clear(state.cur))


@register("icarl", inputs=("model", "model_kwargs", "batch_size", "init_params",
                           "max_step_size"))
def icarl(*, num_classes: int, memory_size: int = 2000, model: str = "mlp",
          model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
          momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
          batch_size: int = 32, epochs_per_step: float = 5.0, max_step_size: int = 4096,
          chunk: int = 8,
          init_params: Optional[dict] = None) -> Learner:
  """Builds iCaRL (see the module docstring).

  Args:
    num_classes: K.
    memory_size: exemplars kept over all classes (paper 2,000).
    model: a ``cljax.models`` name whose module has ``features`` (mlp, cnn, resnet18, ViTs).
    model_kwargs, optimizer, lr, momentum, weight_decay, accumulate, batch_size,
      epochs_per_step, max_step_size, chunk, init_params: as for ``replay.replay_learner``.
  """
  _distill.check_sizes(memory_size=memory_size, batch_size=batch_size,
                       max_step_size=max_step_size, chunk=chunk)
  tx = optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay,
                   accumulate=accumulate)
  net = Net.named(model, num_classes, **(model_kwargs or {}))
  store, memory = buffers.get("append"), buffers.get("ranked")
  logits_of = _distill.RowMap(net.apply, batch_size)
  features_of = _distill.RowMap(net.features, batch_size)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_cur, k_mem = jax.random.split(key, 3)
    params = net.init(k_net, x.shape[1:], init_params)
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    feat_dim = jax.eval_shape(net.features, params, jnp.zeros((1, *x.shape[1:]))).shape[1]
    return State(params=params, opt=tx.init(params), teacher=params,
                 seen=jnp.zeros((num_classes,), bool), old=jnp.zeros((num_classes,), bool),
                 cur=store.init(k_cur, max_step_size, ex, num_classes),
                 mem=memory.init(k_mem, memory_size, ex, num_classes),
                 soft=jnp.zeros((max_step_size + memory_size, num_classes), jnp.float32),
                 means=jnp.zeros((num_classes, feat_dim), jnp.float32),
                 has_mean=jnp.zeros((num_classes,), bool))

  update = _distill.store_update

  loop = Loop(lambda carry, data, key, i, stop: train_step(net, tx, batch_size, carry, data, key),
              chunk=chunk, unroll=True, accumulate=accumulate)
  herd = jax.jit(lambda state, feats: herd_step(memory_size, num_classes, state, feats))
  finish = jax.jit(lambda state, mem_feats: finish_step(memory_size, num_classes, state,
                                                        mem_feats))

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """Distillation targets, SGD, herding, class means; spends at most ``budget`` passes (the
    forwards for herding and the means are reserved first). With ``early_stop``, fewer SGD
    passes when the held-out score of the network's own head stops improving (its best kept)."""
    n_cur, n_mem = int(state.cur.count), int(state.mem.count)
    distil = bool(jnp.any(state.old))
    teacher = (_distill.forward_passes(n_cur, batch_size)
               + _distill.forward_passes(n_mem, batch_size)) if distil else 0.0
    reserved = (_distill.forward_passes(n_cur, batch_size)
                + _distill.forward_passes(min(memory_size, n_mem + n_cur), batch_size))
    passes = _distill.train_passes(budget, teacher + reserved, n_cur + n_mem, epochs_per_step,
                                   batch_size)
    fwd = 0.0
    if distil and passes:
      soft_cur, f1 = logits_of(state.teacher, state.cur.x, n_cur)
      soft_mem, f2 = logits_of(state.teacher, state.mem.x, n_mem)
      state = state._replace(soft=jnp.concatenate([soft_cur, soft_mem]))
      fwd += f1 + f2
    # Scored by the network's own head: the class means the prediction uses are computed after.
    (params, opt), sums, stopped = loop.stopping(
        (state.params, state.opt), state, key, passes, early_stop,
        lambda carry, x: own_logits(carry[0], state.seen, x), progress=progress)
    planned, passes = passes, (passes if stopped is None else stopped.passes)
    state = state._replace(params=params, opt=opt)
    feats, f3 = features_of(params, state.cur.x, n_cur)
    state = herd(state, feats)
    mem_feats, f4 = features_of(params, state.mem.x, int(state.mem.count))
    state = finish(state, mem_feats)
    fwd += f3 + f4
    loss = sums[0] / passes if sums is not None else jnp.float32(jnp.nan)
    return state, contract.info(passes + fwd, loss, forward_passes=jnp.float32(fwd),
                                exemplars=state.mem.count,
                                **early_stop_lib.extra(stopped, planned))

  @jax.jit
  def own_logits(params, seen, x):
    return mask_logits(net.apply(params, jnp.asarray(x, jnp.float32)), seen)

  @jax.jit
  def predict(state, x):
    x = jnp.asarray(x, jnp.float32)
    nme = nme_scores(net.features(state.params, x), state.means, state.has_mean)
    return jnp.where(jnp.any(state.has_mean), nme, own_logits(state.params, state.seen, x))

  return Learner("icarl", init, update, end_of_step, predict, early_stopping=True)
