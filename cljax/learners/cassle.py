"""CaSSLe (Fini et al., CVPR 2022, "Self-Supervised Models are Continual Learners";
DonkeyShot21/cassle), with Barlow Twins, in DietCL's budgeted semi-supervised protocol.

Self-supervised learning on the step's images (labelled or not):

    L = BT(z1, z2) + λ_d · ½ (BT(g(z1), z1') + BT(g(z2), z2'))

z = projector(encoder(view)) of two random resized crops, z' the same views through the frozen
encoder and projector of the previous step, g a predictor MLP (``distillers/decorrelative.py``;
``methods/barlow_twins.py``; ``cljax.ops.ssl.barlow_twins`` is solo-learn's loss). The distillation
term starts at the second step. Reference settings (``bash_files/continual/cifar/
barlow_distill.sh``): projector and predictor 2048 wide, λ = 5e-3, loss scale 0.1, λ_d = 1, the
distillation Barlow λ 5e-3 and scale 0.1; LARS SGD, 500 epochs per task, ResNet-18. Left out here:
the BatchNorm layers of the projector and predictor, colour jitter and solarisation (grey digits).

DietCL's protocol (Zhang et al. 2024, their CaSSLe baseline): each step's budget is split 4:1 between
SSL steps and supervised fine-tuning of the encoder with a linear head over all seen classes, on
every labelled row so far (a store of ``memory_size``); prediction is that head. The optimizer is
re-created for each phase.

Budget: an SSL step is one pass (``batch_size // 2`` images in two views, ``_ssl``) plus, from the
second step, the frozen network on both views (1/3 pass, ``_distill``); a fine-tuning step one
pass. ``update`` stores rows (0 passes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _distill, _ssl, _stores, _vit
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, apply_updates


class Heads(NamedTuple):
  """The SSL heads on the encoder's features: pred, the predictor MLP (P -> P); proj, the
  projector MLP (features -> P). Parameter trees of ``_ssl.mlp_head`` networks."""

  pred: Any
  proj: Any


class Teacher(NamedTuple):
  """The frozen network of the previous step: its encoder ``params`` and projector ``proj``."""

  params: Any
  proj: Any


class State(NamedTuple):
  """CaSSLe's state.

  params: the ViT's parameters (encoder and the linear head the prediction reads).
  heads: ``Heads``, the projector and predictor trained by the SSL phase.
  teacher: ``Teacher``, the network frozen at the end of the previous step.
  has_teacher: [] bool, whether a step has ended (the distillation term is on).
  seen: [K] bool, classes with a labelled row so far (the head's mask).
  cur: ``append`` store of this step's valid rows (labels unused), emptied at the step's end.
  mem: ``append`` store of every labelled row so far (capacity ``memory_size``).
  """

  params: Any
  heads: Heads
  teacher: Teacher
  has_teacher: jax.Array
  seen: jax.Array
  cur: Any
  mem: Any


def ssl_phase(budget: int, fraction: float, ssl_cost: float) -> tuple[int, int]:
  """(SSL steps, fine-tuning steps) of a step's budget: ``fraction`` of it to SSL steps of
  ``ssl_cost`` passes each, the rest (floored) to one-pass fine-tuning steps."""
  n_ssl = int(math.floor(fraction * budget / ssl_cost + 1e-9))
  return n_ssl, max(int(math.floor(budget - n_ssl * ssl_cost + 1e-9)), 0)


@jax.jit
def finish(state: State) -> State:
  """The trained encoder and projector become the next step's frozen teacher."""
  return state._replace(teacher=Teacher(state.params, state.heads.proj),
                        has_teacher=jnp.ones((), bool), cur=append_store.clear(state.cur))


def ssl_loss(net: Net, proj: Net, pred: Net, scale: tuple, lamb: float, scale_loss: float,
             distill_lamb: float):
  """``loss((params, heads), state, x, w, key, distil) -> []``: Barlow Twins on two views
  (crops of area ``scale``) of x [n, ...] with row weights w [n], plus, when ``distil``,
  λ_d · ½ (BT(g(z1), z1') + BT(g(z2), z2')) against ``state.teacher`` (module docstring)."""

  def loss(trained, state: State, x, w, key, distil: bool):
    p, q = trained
    encode = lambda v: net.features(p, v)  # noqa: E731
    z1, z2, (v1, v2) = _ssl.view_embeddings(encode, lambda f: proj.apply(q.proj, f), x, key,
                                             scale)
    out = _ssl.barlow(z1, z2, lamb, scale_loss, w)
    if distil:
      t = state.teacher
      frozen = lambda v: jax.lax.stop_gradient(  # noqa: E731
          proj.apply(t.proj, net.features(t.params, v)))
      d = 0.5 * (_ssl.barlow(pred.apply(q.pred, z1), frozen(v1), lamb, scale_loss, w)
                 + _ssl.barlow(pred.apply(q.pred, z2), frozen(v2), lamb, scale_loss, w))
      out = out + distill_lamb * d
    return out

  return loss


@register("cassle", inputs=("model", "model_kwargs", "batch_size", "init_params",
                            "max_step_size"))
def cassle(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
           batch_size: int = 64, optimizer: str = "adamw", lr: float = 1e-3,
           weight_decay: float = 0.0, accumulate: int = 1, proj_dim: int = 2048,
           proj_hidden: int = 2048, pred_hidden: int = 2048,
           lamb: float = 5e-3, scale_loss: float = 0.1, distill_lamb: float = 1.0,
           crop_scale: Sequence[float] = (0.2, 1.0), ssl_fraction: float = 0.8,
           memory_size: int = 10000, epochs_per_step: float = 1.0, max_step_size: int = 4096,
           chunk: int = 8, init_params: Optional[dict] = None) -> Learner:
  """Builds CaSSLe (see the module docstring).

  Args:
    num_classes: K, the linear head's size (unseen classes masked).
    model, model_kwargs, init_params: a ViT of ``cljax.models`` and its starting parameters
      (e.g. MAE-pretrained).
    batch_size: rows per pass (an SSL step embeds batch_size // 2 images twice).
    optimizer, lr, weight_decay: ``cljax.optim.build`` (the reference's AdamW, decay on weight
      matrices only; ``sgd`` with momentum 0.9), re-created for each phase of each step.
    accumulate: micro-batches per optimizer step (``cljax.optim.accumulate_gradients``).
    proj_dim, proj_hidden, pred_hidden: projector (2 hidden layers) and predictor (1) widths.
    lamb, scale_loss: Barlow Twins' off-diagonal weight and loss scale (both terms).
    distill_lamb: λ_d, weight of the predictive distillation.
    crop_scale: area range of the random resized crops of the views.
    ssl_fraction: the share of the budget spent on SSL (DietCL's 4:1 = 0.8).
    memory_size: labelled rows kept for fine-tuning (all, in DietCL's setting).
    epochs_per_step: passes when ``end_of_step`` gets no budget, in epochs over the step's rows.
    max_step_size: capacity of the step store; chunk: steps per jitted call (a ``lax.scan``).
  """
  _distill.check_sizes(batch_size=batch_size, memory_size=memory_size,
                       max_step_size=max_step_size, chunk=chunk)
  if batch_size < 4:
    raise ValueError(f"batch_size must be >= 4 (two views of >= 2 images), got {batch_size}")
  net = _vit.vit_net("cassle", model, num_classes, model_kwargs)
  proj = _ssl.mlp_head(proj_dim, (proj_hidden, proj_hidden))
  pred = _ssl.mlp_head(proj_dim, (pred_hidden,))
  tx = optim.build(optimizer, lr, weight_decay=weight_decay, decay_mask=optim.matrices,
                   accumulate=accumulate)
  store = buffers.get("append")
  n_img = batch_size // 2
  ssl = ssl_loss(net, proj, pred, tuple(float(s) for s in crop_scale), lamb, scale_loss,
                 distill_lamb)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_proj, k_pred, k_cur, k_mem = jax.random.split(key, 5)
    params = net.init(k_net, x.shape[1:], init_params)
    d = _ssl.features_dim(net, params, x.shape[1:])
    heads = Heads(pred=_ssl.init_head(pred, k_pred, proj_dim),
                  proj=_ssl.init_head(proj, k_proj, d))
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    return State(params=params, heads=heads, teacher=Teacher(params, heads.proj),
                 has_teacher=jnp.zeros((), bool), seen=jnp.zeros((num_classes,), bool),
                 cur=store.init(k_cur, max_step_size, ex, num_classes),
                 mem=store.init(k_mem, memory_size, ex, num_classes))

  def ssl_step(distil: bool):
    """The Loop step of the SSL phase (carry ((params, heads), opt), data the state), with the
    distillation term when ``distil``."""
    def step(carry, state: State, key, i, stop):
      del i, stop
      trained, opt = carry
      k_rows, k_views = jax.random.split(key)
      s = store.sample(state.cur, k_rows, n_img)
      x, w = sharding.data_rows((s.x, s.weight))
      loss, g = jax.value_and_grad(ssl)(trained, state, x, w, k_views, distil)
      trained, opt = apply_updates(tx, trained, opt, g)
      return (trained, opt), loss[None]
    return step

  def ft_step(carry, state: State, key, i, stop):
    """Masked CE over the seen classes on ``batch_size`` memory rows (carry (params, opt))."""
    del i, stop
    params, opt = carry
    s = store.sample(state.mem, key, batch_size)
    x, y, w = sharding.data_rows((s.x, s.y, s.weight))
    loss, g = jax.value_and_grad(
        lambda p: cross_entropy(mask_logits(net.apply(p, x), state.seen), y, w))(params)
    params, opt = apply_updates(tx, params, opt, g)
    return (params, opt), loss[None]

  ssl_loops = {b: Loop(ssl_step(b), chunk=chunk, unroll=False, accumulate=accumulate)
               for b in (False, True)}
  ft_loop = Loop(ft_step, chunk=chunk, unroll=False, accumulate=accumulate)
  opt_init = jax.jit(tx.init)

  @jax.jit
  def predict(state: State, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), state.seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """SSL (+ distillation) then fine-tuning, 4:1; spends at most ``budget`` passes. With
    ``early_stop`` the fine-tuning phase may stop early, keeping its best encoder and head (the
    SSL phase trains no classifier and always runs)."""
    k_ssl, k_ft = jax.random.split(key)
    distil = bool(state.has_teacher)
    cost = 1.0 + (_distill.FORWARD_COST if distil else 0.0)
    if budget is None:
      budget = contract.default_passes(epochs_per_step, int(state.cur.count), batch_size)
    n_ssl, n_ft = ssl_phase(budget, ssl_fraction, cost)
    if not int(state.cur.count):
      n_ssl = 0
    if not int(state.mem.count):
      n_ft = 0
    trained = (state.params, state.heads)
    (trained, _), s1 = ssl_loops[distil]((trained, opt_init(trained)), state, k_ssl, n_ssl,
                                         progress=progress)
    # The SSL phase's encoder is fine-tuned (the carry); the state gives memory and mask.
    (params, _), s2, stopped = ft_loop.stopping(
        (trained[0], opt_init(trained[0])), state, k_ft, n_ft, early_stop,
        lambda carry, x: predict(state._replace(params=carry[0]), x), progress=progress)
    planned, n_ft = n_ft, (n_ft if stopped is None else stopped.passes)
    state = finish(state._replace(params=params, heads=trained[1]))
    return state, contract.info(
        n_ssl * cost + n_ft, jnp.float32(jnp.nan) if s2 is None else s2[0] / n_ft,
        ssl_loss=jnp.float32(jnp.nan) if s1 is None else s1[0] / n_ssl,
        ssl_steps=jnp.float32(n_ssl), finetune_steps=jnp.float32(n_ft),
        **early_stop_lib.extra(stopped, planned))

  return Learner("cassle", init, _stores.store_all_update, end_of_step, predict,
                 early_stopping=True)
