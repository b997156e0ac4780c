"""CCIC (Boschini, Buzzega, Bonicelli, Porrello, Calderara, TPAMI 2022, "Continual
Semi-Supervised Learning through Contrastive Interpolation Consistency"; reference code
aimagelab/mammoth ``models/ccic.py``), in DietCL's budgeted protocol.

Each SGD step reads labelled rows (this step's, and as many from a reservoir memory of labelled
rows) and unlabelled rows of the step, and minimises

    L = L_triplet + L_X + α_mm · L_U + α · L_neg      (``observe``)

* L_X: cross-entropy on MixMatch-interpolated labelled rows with their own labels (``mixup``:
  per row λ ~ Beta(0.75, 0.75), λ ← max(λ, 1 − λ), partners drawn from the shuffled labelled and
  augmented unlabelled rows), the memory part weighted ``memory_penalty``;
* L_U: interpolation consistency, the reference's rule (``pseudo="reference"``, mammoth
  ``models/ccic.py`` at e75a491, lines 138-141 and 182): pseudo-labels = the network's raw
  logits over all K classes averaged over ``k_aug`` weak augmentations (random crops) of each
  unlabelled row and sharpened as if they were probabilities (``mean ** (1 / T)``, renormalised;
  T = 0.5; no gradient), regressed by the raw logits on the interpolated augmented rows: mean
  squared error over rows and classes, / K (:func:`pseudo_labels`, :func:`consistency_loss`).
  ``pseudo="softmax"`` is this learner's rule before issue 23 (MixMatch's: the mean softmax over
  the seen classes, sharpened, against the softmax of the interpolated rows), kept as an option.
  One deliberate difference: the reference builds the k_aug views with ``repeat_interleave``
  (view-major per image) but averages them with ``reshape(k_aug, -1, K)`` (image-major), so its
  average mixes views of different images, and tiles the result with ``repeat``; here each row's
  pseudo-label is the mean over its own image's views;
* L_triplet: batch-hard triplet loss on the features of the labelled rows (k = batch // 10
  hardest pairs, margin 1; ``cljax.ops.ssl``);
* L_neg (from the second step): each of the step's unlabelled rows and each memory row of earlier
  steps' classes is pushed at least the margin away from the other group (negative-only triplet).

Prediction: k-nearest-neighbour vote (k = ``knn_k``) among the memory's normalised features,
ties broken by the distance to each class's nearest memory row (``forward``); the features are
cached at each step's end (a forward over the memory, charged). Before the first step ends: the
network's own outputs.

Reference settings (``models/config/ccic.yaml``, seq-cifar10, buffer 500): Adam lr 1e-4 (this
learner's default; issue 23: the DietCL config ran it at 1e-3), knn_k 2, memory_penalty 0.7,
mixmatch α 0.75; parser defaults α = 0.5, k_aug 3, T = 0.5, mixup α 0.75.
Left out: the labelled-only mixup (α = 1) before the triplet term during the first 90 % of each
task's epochs (the budgeted stream has no epochs), and the reference's running "virtual batches".

Budget, per SGD step of B = ``batch_size``: B/4 current + B/4 memory labelled rows, B/(2·k_aug)
unlabelled rows: forward-backward of the mixed labelled and augmented unlabelled rows (~B rows),
of the labelled rows' features (B/2) and, from the second step, of the negative-only rows (~B/2);
the pseudo-label forwards at 1/3. ``step_cost`` gives the exact passes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _distill, _stores, _vit
from cljax.learners.registry import register
from cljax.ops import augment
from cljax.ops import buffers
from cljax.ops import feature_aug
from cljax.ops import sharding
from cljax.ops import ssl
from cljax.ops.buffers import append as append_store
from cljax.ops.herding import normalise
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, apply_updates


PSEUDO = ("reference", "softmax")


def pseudo_labels(logits: jax.Array, k_aug: int, temperature: float, seen: jax.Array,
                  rule: str = "reference") -> jax.Array:
  """CCIC's pseudo-labels [k_aug · n, K] for the logits [k_aug · n, K] of k_aug views of n rows
  (view-major: row v·n + i is view v of row i), no gradient; each row gets its own image's.

  ``reference`` (mammoth ``models/ccic.py`` lines 138-141): the mean over views of the raw
  logits of all K classes, raised to 1/T and renormalised per row (the sharpening of MixMatch
  applied to logits, as the reference does). ``softmax``: the mean over views of the softmax
  over the ``seen`` [K] classes, sharpened (``cljax.ops.ssl.sharpen``).
  """
  n_k = logits.shape[-1]
  if rule == "reference":
    mean = logits.reshape(k_aug, -1, n_k).mean(0)
    sharp = jnp.power(mean, 1.0 / temperature)
    out = sharp / jnp.sum(sharp, axis=-1, keepdims=True)
  else:
    probs = jax.nn.softmax(mask_logits(logits, seen)).reshape(k_aug, -1, n_k)
    out = ssl.sharpen(probs.mean(0), temperature)
  return jax.lax.stop_gradient(jnp.tile(out, (k_aug, 1)))


def consistency_loss(pseudo: jax.Array, logits: jax.Array, weight: jax.Array, seen: jax.Array,
                     rule: str = "reference") -> jax.Array:
  """CCIC's L_U: pseudo [N, K] against the logits [N, K] of the interpolated rows, weighted mean
  over rows (weight [N]) of the mean squared error over the K classes, / K.

  ``reference`` (mammoth ``models/ccic.py`` line 182: ``F.mse_loss(pseudo, outputs) / K``):
  against the raw logits of all K classes; ``softmax``: against the softmax over ``seen``.
  """
  n_k = logits.shape[-1]
  out = logits if rule == "reference" else jax.nn.softmax(mask_logits(logits, seen))
  sq = jnp.mean((pseudo - out) ** 2, -1)
  return jnp.sum(sq * weight) / jnp.maximum(jnp.sum(weight), 1.0) / n_k


class State(NamedTuple):
  """CCIC's state.

  params, opt: the network's parameters and its Adam state (carried over steps).
  seen: [K] bool, classes with a labelled row so far.
  step_cls: [K] bool, classes labelled in this step (L_neg pushes the others' memory rows).
  cur_l, cur_u: ``append`` stores of this step's labelled / unlabelled rows, emptied at its end.
  mem: ``reservoir`` memory of labelled rows (capacity ``memory_size``).
  emb: [memory_size, F] float32, the memory rows' normalised features at the last step's end.
  emb_y: [memory_size] int32, their labels (-1: empty slot).
  step: [] int32, time steps ended so far.
  """

  params: Any
  opt: Any
  seen: jax.Array
  step_cls: jax.Array
  cur_l: Any
  cur_u: Any
  mem: Any
  emb: jax.Array
  emb_y: jax.Array
  step: jax.Array


def sizes(batch_size: int, k_aug: int) -> tuple[int, int, int]:
  """Rows per step: (current labelled, memory, unlabelled before augmentation)."""
  return batch_size // 4, batch_size // 4, max(1, batch_size // (2 * k_aug))


def step_cost(batch_size: int, k_aug: int, negatives: bool) -> float:
  """Passes one CCIC step spends (module docstring)."""
  nl, nm, nu = sizes(batch_size, k_aug)
  rows = (nl + nm) + k_aug * nu + (nl + nm) + ((nu + nm) if negatives else 0)
  return rows / batch_size + _distill.FORWARD_COST * k_aug * nu / batch_size


def knn_scores(feats: jax.Array, emb: jax.Array, y: jax.Array, valid: jax.Array, k: int,
               num_classes: int) -> jax.Array:
  """CCIC's prediction [B, K]: votes of the k nearest memory rows (squared distance between
  normalised features) minus 1e-5 x the distance to each class's nearest row; classes without
  memory rows masked. feats [B, F], emb [M, F] (normalised), y [M], valid [M] bool."""
  d2 = ssl.pairwise_sq_dist(jnp.concatenate([normalise(feats), emb]))[:feats.shape[0],
                                                                       feats.shape[0]:]
  d2 = jnp.where(valid[None, :], d2, jnp.inf)
  _, idx = jax.lax.top_k(-d2, k)
  finite = jnp.isfinite(jnp.take_along_axis(d2, idx, 1))
  votes = jnp.sum(jax.nn.one_hot(y[idx], num_classes) * finite[..., None], axis=1)
  member = jax.nn.one_hot(y, num_classes, dtype=bool) & valid[:, None]  # [M, K]
  nearest = jnp.min(jnp.where(member[None], d2[:, :, None], jnp.inf), axis=1)
  has = member.any(0)
  return mask_logits(votes - 1e-5 * jnp.where(has[None], nearest, 0.0), has)


@jax.jit
def update(state: State, batch: dict, key: jax.Array) -> tuple:
  """Stores the step's labelled and unlabelled rows; labelled rows enter the memory."""
  del key
  _, lab = contract.masks(batch)
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  seen, cur_l, cur_u = _stores.store_split(state.seen, state.cur_l, state.cur_u, batch)
  mem = buffers.get("reservoir").insert(state.mem, jnp.asarray(batch["x"], jnp.float32), y, lab)
  return state._replace(seen=seen, step_cls=_stores.labelled_classes(state.step_cls, batch),
                        cur_l=cur_l, cur_u=cur_u, mem=mem), contract.info()


@jax.jit
def finish(state: State, emb: jax.Array) -> State:
  """The memory's features emb [memory_size, F] (normalised) and labels kept for kNN; the step's
  stores emptied and the step counted."""
  filled = jnp.arange(state.emb_y.shape[0]) < state.mem.count
  return state._replace(emb=normalise(emb), emb_y=jnp.where(filled, state.mem.y, -1),
                        step=state.step + 1, step_cls=jnp.zeros_like(state.step_cls),
                        cur_l=append_store.clear(state.cur_l),
                        cur_u=append_store.clear(state.cur_u))


@register("ccic", inputs=("model", "model_kwargs", "batch_size", "init_params",
                          "max_step_size"))
def ccic(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
         batch_size: int = 32, optimizer: str = "adam", lr: float = 1e-4,
         accumulate: int = 1, memory_size: int = 500, alpha: float = 0.5,
         mixmatch_alpha: float = 0.75, memory_penalty: float = 0.7, knn_k: int = 2,
         k_aug: int = 3, sharp_temp: float = 0.5, mixup_alpha: float = 0.75,
         margin: float = 1.0, pseudo: str = "reference", epochs_per_step: float = 1.0,
         max_step_size: int = 4096, chunk: int = 8,
         init_params: Optional[dict] = None) -> Learner:
  """Builds CCIC (see the module docstring; defaults from the reference's ccic.yaml).

  Args:
    num_classes: K.
    model, model_kwargs, init_params: a ``cljax.models`` network with ``features`` (a ViT in
      the DietCL config) and its starting parameters.
    batch_size: B (rows per pass; see ``sizes``).
    optimizer, lr: ``cljax.optim.build`` (the reference's Adam; its state carries over steps;
      ``sgd`` runs with momentum 0.9, and no weight decay is applied).
    accumulate: micro-batches per optimizer step (``cljax.optim.accumulate_gradients``).
    memory_size: reservoir of labelled rows.
    alpha, mixmatch_alpha, memory_penalty: weights of L_neg, L_U and the memory part of L_X.
    knn_k: neighbours of the prediction vote.
    k_aug, sharp_temp, mixup_alpha: augmentations per unlabelled row, sharpening T, Beta(α, α).
    margin: of both triplet terms.
    pseudo: L_U's rule, ``"reference"`` (mammoth's: averaged raw logits, sharpened, regressed by
      raw logits / K) or ``"softmax"`` (MixMatch's, the pre-issue-23 rule); module docstring.
    epochs_per_step: passes without a budget, in epochs over the step's rows.
    max_step_size, chunk: step-store capacity; steps per jitted call (a ``lax.scan``).
  """
  _distill.check_sizes(batch_size=batch_size, memory_size=memory_size, knn_k=knn_k,
                       k_aug=k_aug, max_step_size=max_step_size, chunk=chunk)
  if batch_size < 4:
    raise ValueError(f"batch_size must be >= 4, got {batch_size}")
  if pseudo not in PSEUDO:
    raise ValueError(f"unknown pseudo {pseudo!r}; valid: {list(PSEUDO)}")
  net = _vit.vit_net("ccic", model, num_classes, model_kwargs)
  tx = optim.build(optimizer, lr, accumulate=accumulate)
  store, memory = buffers.get("append"), buffers.get("reservoir")
  nl, nm, nu = sizes(batch_size, k_aug)
  triplet_k = max(1, batch_size // 10)
  features_of = _distill.RowMap(net.features, batch_size)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_l, k_u, k_m = jax.random.split(key, 4)
    params = net.init(k_net, x.shape[1:], init_params)
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    d = int(jax.eval_shape(net.features, params, jnp.zeros((1, *x.shape[1:]))).shape[1])
    return State(params=params, opt=tx.init(params), seen=jnp.zeros((num_classes,), bool),
                 step_cls=jnp.zeros((num_classes,), bool),
                 cur_l=store.init(k_l, max_step_size, ex, num_classes),
                 cur_u=store.init(k_u, max_step_size, ex, num_classes),
                 mem=memory.init(k_m, memory_size, ex, num_classes),
                 emb=jnp.zeros((memory_size, d), jnp.float32),
                 emb_y=jnp.full((memory_size,), -1, jnp.int32), step=jnp.zeros((), jnp.int32))

  def loss_fn(params, state: State, key, negatives: bool):
    """L_triplet + L_X + α_mm · L_U (+ α · L_neg when ``negatives``), module docstring."""
    ks = jax.random.split(key, 8)
    cur = store.sample(state.cur_l, ks[0], nl)
    mem = memory.sample(state.mem, ks[1], nm)
    unl = store.sample(state.cur_u, ks[2], nu)
    xs = jnp.concatenate([cur.x, mem.x])
    ys = jnp.concatenate([cur.y, mem.y])
    wsup = jnp.concatenate([cur.weight, mem.weight])
    xu = jnp.tile(unl.x, (k_aug,) + (1,) * (unl.x.ndim - 1))  # k_aug copies, then augmented
    xu = augment.augment_batch(ks[3], xu, "crop", padding=2)
    wu = jnp.tile(unl.weight, (k_aug,))
    seen = state.seen
    # Pseudo-labels from the k_aug weak views (no gradient): pseudo_labels.
    targets = pseudo_labels(net.apply(params, xu), k_aug, sharp_temp, seen, pseudo)
    # MixMatch partners: the shuffled labelled and augmented unlabelled rows.
    pool = jnp.concatenate([xs, xu])
    perm = jax.random.permutation(ks[4], pool.shape[0])
    lam = jax.random.beta(ks[5], mixup_alpha, mixup_alpha, (pool.shape[0],))
    lam = jnp.maximum(lam, 1.0 - lam)[:, None, None, None]
    mixed = feature_aug.mix(jnp.concatenate([xs, xu]), pool[perm], lam)
    mixed, ys, wsup, wu, targets = sharding.data_rows((mixed, ys, wsup, wu, targets))
    raw = net.apply(params, mixed)
    logits = mask_logits(raw, seen)
    n_s = nl + nm
    l_x = (cross_entropy(logits[:nl], ys[:nl], wsup[:nl])
           + memory_penalty * cross_entropy(logits[nl:n_s], ys[nl:], wsup[nl:]))
    l_u = consistency_loss(targets, raw[n_s:], wu, seen, pseudo)
    l_t = ssl.batch_hard_triplet(net.features(params, xs), ys, wsup, triplet_k, margin)
    loss = l_t + l_x + mixmatch_alpha * l_u
    if negatives:  # this step's unlabelled rows vs memory rows of earlier steps' classes
      past = memory.sample(state.mem, ks[6], nm)
      wp = past.weight * ~state.step_cls[past.y]
      xn = jnp.concatenate([unl.x, past.x])
      group = jnp.concatenate([jnp.zeros((nu,), jnp.int32), jnp.ones((nm,), jnp.int32)])
      wn = jnp.concatenate([unl.weight, wp])
      loss = loss + alpha * ssl.negative_only_triplet(net.features(params, xn), group, wn,
                                                      triplet_k, margin)
    return loss

  def make_step(negatives: bool):
    """The Loop step: carry (params, opt), data the state."""
    def step(carry, state: State, key, i, stop):
      del i, stop
      params, opt = carry
      loss, g = jax.value_and_grad(loss_fn)(params, state, key, negatives)
      params, opt = apply_updates(tx, params, opt, g)
      return (params, opt), loss[None]
    return step

  loops = {b: Loop(make_step(b), chunk=chunk, unroll=False, accumulate=accumulate)
           for b in (False, True)}

  @jax.jit
  def own_logits(params, seen, x):
    return mask_logits(net.apply(params, jnp.asarray(x, jnp.float32)), seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """SGD steps within ``budget`` (``step_cost`` each), then the memory's features for kNN.
    With ``early_stop`` (its ``every`` in passes, converted to SGD steps), fewer steps when the
    held-out score of the network's own head stops improving (the kNN memory is built after, on
    the kept model)."""
    negatives = int(state.step) > 0
    cost = step_cost(batch_size, k_aug, negatives)
    n_mem = int(state.mem.count)
    rows = int(state.cur_l.count) + int(state.cur_u.count)
    if budget is None:
      steps = contract.default_passes(epochs_per_step, rows, batch_size)
    else:
      reserve = _distill.forward_passes(n_mem, batch_size)
      steps = int(math.floor((budget - reserve) / cost + 1e-9))
    steps = max(steps, 0) if n_mem else 0
    if early_stop is not None:
      early_stop = dataclasses.replace(early_stop,
                                       every=max(1, math.ceil(early_stop.every / cost)))
    (params, opt), sums, stopped = loops[negatives].stopping(
        (state.params, state.opt), state, key, steps, early_stop,
        lambda carry, x: own_logits(carry[0], state.seen, x), progress=progress)
    planned, steps = steps, (steps if stopped is None else stopped.passes)
    state = state._replace(params=params, opt=opt)
    emb, fwd = features_of(params, state.mem.x, n_mem)
    state = finish(state, emb)
    extra = early_stop_lib.extra(stopped, planned, cost)  # in passes, as every learner's
    return state, contract.info(steps * cost + fwd,
                                jnp.float32(jnp.nan) if sums is None else sums[0] / steps,
                                sgd_steps=jnp.float32(steps), **extra)

  @jax.jit
  def predict(state: State, x):
    x = jnp.asarray(x, jnp.float32)
    valid = state.emb_y >= 0
    knn = knn_scores(net.features(state.params, x), state.emb, jnp.maximum(state.emb_y, 0),
                     valid, knn_k, num_classes)
    return jnp.where(jnp.any(valid), knn, own_logits(state.params, state.seen, x))

  return Learner("ccic", init, update, end_of_step, predict, early_stopping=True)
