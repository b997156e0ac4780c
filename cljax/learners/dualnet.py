"""DualNet (Pham, Liu, Hoi, NeurIPS 2021, "DualNet: Continual Learning, Fast and Slow";
phquang/DualNet), in DietCL's budgeted semi-supervised protocol.

* Slow learner: the ViT encoder (+ a projector), trained by Barlow Twins on two views of the
  step's images (and, from the second step, as many memory images) in the reference's look-ahead
  loop (phquang/DualNet ``model/semi_dualnet.py`` at e96ea75, ``observe`` lines 179-194):
  ``n_outer`` times, ``inner_steps`` Barlow Twins steps of SGD (lr 1e-3, momentum 0.9, weight
  decay 5e-4: ``bt_opt``, line 80; its momentum carries over the whole run), then
  ``θ ← θ_before + β (θ_after − θ_before)``; n_outer = inner_steps = 2 and β = 0.05 in
  ``scripts/semi.sh`` (:func:`lookahead`). Before issue 23: one Adam step per look-ahead
  (``n_outer=1, inner_steps=1, ssl_optimizer="adam"``).
* Fast learner: feature adaptation of the slow learner's per-layer features (``MaskNet18`` in
  ``model/common.py``: m_l = f_l(m_{l−1}) ⊙ h_l). For the ViT: m_1 = GELU(patches W_1 + b_1) ⊙ h_1,
  m_l = GELU(m_{l−1} W_l + b_l) ⊙ h_l for the later blocks (h_l: slow block l's output tokens),
  and a linear head on the mean token of m_L. The supervised step trains fast and slow weights
  together (the reference's one optimizer over all parameters), ``inner_steps`` times per
  labelled iteration (lines 196-216), with cross-entropy over the seen classes on every labelled
  row so far (the reference's current-batch and memory terms) plus the reference's
  ``memory_strength`` (10) x KL to the outputs stored with the memory rows of earlier steps
  (lines 161-166: at a task's end, softmax(logits / T) over that task's classes, T = 2;
  line 213: ``nn.KLDivLoss()`` of log_softmax(logits / T) over the same classes, mean over rows
  and classes; :func:`kl_to_stored`). The supervised optimizer stays Adam (the reference: plain
  SGD at lr 0.03), and its CE reads all seen classes (the reference masks to the task's).
* Sampling (``iteration_kinds``, DietCL's "variable sampling, threshold 0.5", after DualNet's
  semi-supervised driver ``semiSL/semi_main.py``, which drops a batch's labels when
  u ~ U(0, 1) > ρ): iteration i draws u_i from ``fold_in(key, i)``; u_i <= ``threshold`` makes it a
  labelled iteration (the SSL phase + the supervised steps), otherwise an unlabelled one (the SSL
  phase only). A step runs the longest prefix of iterations whose passes fit its budget.

Budget: an SSL step is one pass (``batch_size // 2`` images in two views), a supervised step one
pass (``batch_size`` rows through slow and fast learners): n_outer · inner_steps = 4 passes per
unlabelled iteration, + inner_steps = 6 per labelled one. At a step's end the fast learner's
logits on the step's new memory rows are stored (forward passes at 1/3). ``update`` stores rows
(0 passes). Prediction: the fast learner's logits over the seen classes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _distill, _ssl, _stores, _vit
from cljax.learners.registry import register
from cljax.models import vit as vit_lib
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train.loop import Loop, apply_updates


class Slow(NamedTuple):
  """The slow learner: the ViT's ``params`` and its Barlow Twins projector ``proj``."""

  params: Any
  proj: Any


class State(NamedTuple):
  """DualNet's state.

  slow: ``Slow``, the slow learner (trained by Barlow Twins and by the supervised step).
  opt_slow: the SSL optimizer's state (carried over steps, as the reference's ``bt_opt``).
  fast: the fast learner's weights, {"layers": [one {"kernel", "bias"} per slow block], "head":
    {"kernel": [W, K], "bias": [K]}} (a parameter tree, ``init_fast``).
  seen: [K] bool, classes with a labelled row so far.
  cur: ``append`` store of this step's valid rows (labels unused), emptied at the step's end.
  mem: ``append`` store of every labelled row so far (capacity ``memory_size``).
  step: [] int32, time steps ended so far.
  step_cls: [K] bool, classes labelled in this step (the stored outputs' classes).
  soft: [memory_size, K] float32, per memory row of an earlier step, softmax(fast logits / T)
    over its step's classes at that step's end (0 elsewhere).
  soft_mask: [memory_size, K] bool, those classes (all False: no stored output yet).
  soft_n: [] int32, memory rows with stored outputs (the rows of ended steps).
  """

  slow: Slow
  opt_slow: Any
  fast: Any
  seen: jax.Array
  cur: Any
  mem: Any
  step: jax.Array
  step_cls: jax.Array
  soft: jax.Array
  soft_mask: jax.Array
  soft_n: jax.Array


class StepData(NamedTuple):
  """What the loop's step reads besides its carry.

  cur, mem, seen, soft, soft_mask, soft_n: the state's. kind_key: the key of the iterations'
  labelled draws (``labelled_draws``). has_labels: [] bool, the memory holds rows. replay: []
  bool, from the second step: memory images in the SSL batches.
  """

  cur: Any
  mem: Any
  seen: jax.Array
  soft: jax.Array
  soft_mask: jax.Array
  soft_n: jax.Array
  kind_key: jax.Array
  has_labels: jax.Array
  replay: jax.Array


def labelled_draws(key: jax.Array, n: int, threshold: float) -> jax.Array:
  """[n] bool: iteration i is labelled when uniform(fold_in(key, i)) <= threshold."""
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(n))
  return u <= threshold


def iteration_kinds(key: jax.Array, budget: int, threshold: float, has_labels: bool,
                    ssl_passes: int = 1, sup_passes: int = 1) -> np.ndarray:
  """The iterations a step's ``budget`` affords: [n] bool, True = labelled (``ssl_passes`` +
  ``sup_passes`` passes), False = unlabelled (``ssl_passes``); the longest prefix of the draws
  whose passes sum to <= budget."""
  if budget <= 0:
    return np.zeros((0,), bool)
  kinds = np.asarray(labelled_draws(key, int(budget), threshold)) & bool(has_labels)
  cost = np.cumsum(ssl_passes + sup_passes * kinds.astype(int))
  return kinds[:int(np.searchsorted(cost, budget, side="right"))]


def lookahead(params, opt, tx, grad_fn, keys: jax.Array, beta: float) -> tuple:
  """The reference's slow-learner loop (``semi_dualnet.py`` lines 179-194): for each of
  n_outer = keys.shape[0] rounds, ``inner_steps`` = keys.shape[1] optimizer steps
  (``grad_fn(params, key) -> (loss, grads)``, one key each), then
  ``params ← before + beta · (after − before)``; the optimizer state is not reset. Returns
  (params, opt, losses [n_outer, inner_steps])."""
  def inner(carry, key):
    p, o = carry
    loss, g = grad_fn(p, key)
    p, o = apply_updates(tx, p, o, g)
    return (p, o), loss

  def outer(carry, ks):
    before, o = carry
    (after, o), losses = jax.lax.scan(inner, (before, o), ks)
    return (jax.tree.map(lambda a, b: a + beta * (b - a), before, after), o), losses

  (params, opt), losses = jax.lax.scan(outer, (params, opt), keys)
  return params, opt, losses


def kl_to_stored(logits: jax.Array, soft: jax.Array, mask: jax.Array, weight: jax.Array,
                 temperature: float) -> jax.Array:
  """The reference's KL to stored outputs (``semi_dualnet.py`` line 213,
  ``nn.KLDivLoss()(log_softmax(pred / T), target)`` with pred the logits of the row's task's
  classes): Σ t (log t − log_softmax(logits / T)) over each row's classes ``mask`` [B, K],
  divided by the number of (row, class) terms (KLDivLoss's default ``mean``), rows weighted by
  ``weight`` [B] (0: padding or no stored output). logits, soft: [B, K]. 0 without rows."""
  logp = jax.nn.log_softmax(jnp.where(mask, logits / temperature, -jnp.inf), axis=-1)
  t = jnp.where(mask, soft, 0.0)
  terms = jnp.where(mask & (t > 0), t * (jnp.log(jnp.where(t > 0, t, 1.0)) - logp), 0.0)
  per_row = jnp.sum(terms, -1) * weight
  n_terms = jnp.sum(jnp.sum(mask, -1) * weight)
  return jnp.sum(per_row) / jnp.maximum(n_terms, 1.0)


def stored_outputs(logits: jax.Array, mask: jax.Array, temperature: float) -> jax.Array:
  """softmax(logits / T) over the classes ``mask`` [K] (0 elsewhere), logits [N, K]: the outputs
  the reference stores with a task's memory rows at its end (``semi_dualnet.py`` line 166)."""
  return jnp.where(mask, jax.nn.softmax(jnp.where(mask, logits / temperature, -jnp.inf), -1),
                   0.0)


def patch_size(params: dict, channels: int) -> int:
  """A cljax ViT's patch side, from its patch-embedding kernel [p·p·C, D] (static)."""
  return int(round(math.sqrt(params["patch_embed"]["kernel"].shape[0] / channels)))


def init_fast(key: jax.Array, patch_dim: int, width: int, depth: int, num_classes: int) -> dict:
  """Fast-learner weights: one adaptation layer per slow block (the first reads the patches)
  and a linear head; Glorot-uniform kernels, zero biases."""
  keys = jax.random.split(key, depth + 1)
  glorot = jax.nn.initializers.glorot_uniform()
  dims = [patch_dim] + [width] * depth
  layers = [{"kernel": glorot(keys[i], (dims[i], width)), "bias": jnp.zeros((width,))}
            for i in range(depth)]
  return {"layers": layers, "head": {"kernel": jnp.zeros((width, num_classes)),
                                     "bias": jnp.zeros((num_classes,))}}


def fast_logits(net: Net, slow_params: dict, fast: dict, x: jax.Array) -> jax.Array:
  """The fast learner's logits [B, K] on x [B, H, W, C] (module docstring): its adaptation
  layers over the patches, gated by the slow ViT's block outputs, then its head."""
  _, blocks = net.call(slow_params, x, "encode_prefixed")
  m = vit_lib.patchify(x, patch_size(slow_params, x.shape[-1]))
  for layer, h in zip(fast["layers"], blocks):
    m = jax.nn.gelu(m @ layer["kernel"] + layer["bias"], approximate=False) * h
  return m.mean(1) @ fast["head"]["kernel"] + fast["head"]["bias"]


@jax.jit
def update(state: State, batch: dict, key: jax.Array) -> tuple:
  """Stores the batch (``_stores.store_all_update``) and marks its labelled classes."""
  new, info = _stores.store_all_update(state, batch, key)
  return new._replace(step_cls=_stores.labelled_classes(state.step_cls, batch)), info


@functools.partial(jax.jit, static_argnames=("temperature",))
def finish(state: State, logits: jax.Array, keep: jax.Array, temperature: float) -> State:
  """The fast learner's outputs on the step's new memory rows (logits [memory_size, K], valid
  from ``soft_n`` to the memory's count) stored over the step's classes when ``keep`` [] bool;
  the step store emptied, the step counted."""
  rows = jnp.arange(state.soft.shape[0])
  new = (rows >= state.soft_n) & (rows < state.mem.count) & keep
  soft = jnp.where(new[:, None], stored_outputs(logits, state.step_cls, temperature), state.soft)
  soft_mask = jnp.where(new[:, None], state.step_cls[None, :], state.soft_mask)
  return state._replace(cur=append_store.clear(state.cur), step=state.step + 1, soft=soft,
                        soft_mask=soft_mask, soft_n=state.mem.count,
                        step_cls=jnp.zeros_like(state.step_cls))


@register("dualnet", inputs=("model", "model_kwargs", "batch_size", "init_params",
                             "max_step_size"))
def dualnet(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
            batch_size: int = 64, optimizer: str = "adam", lr: float = 1e-3,
            slow_lr: float = 1e-3, beta: float = 0.05,
            n_outer: int = 2, inner_steps: int = 2, ssl_optimizer: str = "sgd",
            ssl_momentum: float = 0.9, ssl_weight_decay: float = 5e-4,
            memory_strength: float = 10.0, temperature: float = 2.0,
            threshold: float = 0.5, proj_dim: int = 2048, proj_hidden: int = 2048,
            lamb: float = 2e-3, scale_loss: float = 1.0,
            crop_scale: Sequence[float] = (0.2, 1.0), memory_size: int = 10000,
            epochs_per_step: float = 1.0, max_step_size: int = 4096, chunk: int = 8,
            init_params: Optional[dict] = None) -> Learner:
  """Builds DualNet (see the module docstring).

  Args:
    num_classes: K (unseen classes masked).
    model, model_kwargs, init_params: the slow learner's ViT and its starting parameters.
    batch_size: rows per pass.
    optimizer, lr: ``cljax.optim.build`` of the supervised step (fast and slow weights; the
      reference's Adam; ``sgd`` with momentum 0.9, no weight decay); slow_lr: of the SSL steps.
      No ``accumulate``: an iteration is already several optimizer steps on one batch
      (look-aheads and inner steps).
    beta: the slow learner's look-ahead step (reference semi-supervised script: 0.05).
    n_outer, inner_steps: look-ahead rounds per iteration and SSL steps per round; inner_steps
      is also the supervised steps per labelled iteration (reference: 2 and 2).
    ssl_optimizer, ssl_momentum, ssl_weight_decay: the SSL optimizer (reference ``bt_opt``:
      SGD, 0.9, 5e-4; "adam" ignores the momentum).
    memory_strength, temperature: weight and T of the KL to stored outputs (reference: 10, 2;
      0 drops the term, the pre-issue-23 behaviour).
    threshold: the sampling threshold (DietCL: 0.5); 1 = every iteration labelled.
    proj_dim, proj_hidden: the slow learner's Barlow Twins projector.
    lamb, scale_loss: Barlow Twins' off-diagonal weight and scale (the reference's own loss:
      off-diagonal x 2e-3, unscaled).
    crop_scale: area range of the views' random resized crops.
    memory_size: labelled rows kept (all, in DietCL's setting).
    epochs_per_step: passes without a budget, in epochs over the step's rows.
    max_step_size, chunk: step-store capacity; steps per jitted call (a ``lax.scan``).
  """
  _distill.check_sizes(batch_size=batch_size, memory_size=memory_size,
                       max_step_size=max_step_size, chunk=chunk)
  if batch_size < 4:
    raise ValueError(f"batch_size must be >= 4 (two views of >= 2 images), got {batch_size}")
  if not 0.0 <= threshold <= 1.0 or not 0.0 < beta <= 1.0:
    raise ValueError(f"threshold must lie in [0, 1] and beta in (0, 1], got {threshold}, {beta}")
  _distill.check_sizes(n_outer=n_outer, inner_steps=inner_steps)
  if temperature <= 0 or memory_strength < 0:
    raise ValueError(f"temperature must be > 0 and memory_strength >= 0, got {temperature}, "
                     f"{memory_strength}")
  net = _vit.vit_net("dualnet", model, num_classes, model_kwargs)
  proj = _ssl.mlp_head(proj_dim, (proj_hidden, proj_hidden))
  tx = optim.build(optimizer, lr)
  tx_slow = optim.build(ssl_optimizer, slow_lr, momentum=ssl_momentum,
                        weight_decay=ssl_weight_decay)
  ssl_passes, sup_passes = n_outer * inner_steps, inner_steps
  logits_of = _distill.RowMap(lambda p, x: fast_logits(net, p[0], p[1], x), batch_size)
  store = buffers.get("append")
  n_img = batch_size // 2
  scale = tuple(float(s) for s in crop_scale)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_proj, k_fast, k_cur, k_mem = jax.random.split(key, 5)
    params = net.init(k_net, x.shape[1:], init_params)
    d = _ssl.features_dim(net, params, x.shape[1:])
    p = patch_size(params, x.shape[-1])
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    slow = Slow(params, _ssl.init_head(proj, k_proj, d))
    return State(slow=slow, opt_slow=tx_slow.init(slow),
                 fast=init_fast(k_fast, p * p * x.shape[-1], d, len(params["blocks"]),
                                num_classes),
                 seen=jnp.zeros((num_classes,), bool),
                 cur=store.init(k_cur, max_step_size, ex, num_classes),
                 mem=store.init(k_mem, memory_size, ex, num_classes),
                 step=jnp.zeros((), jnp.int32), step_cls=jnp.zeros((num_classes,), bool),
                 soft=jnp.zeros((memory_size, num_classes), jnp.float32),
                 soft_mask=jnp.zeros((memory_size, num_classes), bool),
                 soft_n=jnp.zeros((), jnp.int32))

  def ssl_loss(slow: Slow, x, w, key):
    encode = lambda v: net.features(slow.params, v)  # noqa: E731
    z1, z2, _ = _ssl.view_embeddings(encode, lambda f: proj.apply(slow.proj, f), x, key, scale)
    return _ssl.barlow(z1, z2, lamb, scale_loss, w)

  def ssl_grad(data: StepData):
    """``(slow, key) -> (loss, grads)`` of one SSL step on a fresh batch of images."""
    def grad_fn(slow: Slow, key):
      k_cur, k_mem, k_views = jax.random.split(key, 3)
      # SSL batch: the step's images, half of them memory images once the memory holds
      # earlier steps' rows (the reference concatenates replayed images from the second task).
      a = store.sample(data.cur, k_cur, n_img)
      b = store.sample(data.mem, k_mem, n_img)
      use_mem = (jnp.arange(n_img) >= n_img // 2) & data.replay & (b.weight > 0)
      x = jnp.where(use_mem.reshape(-1, 1, 1, 1), b.x, a.x)
      w = jnp.where(use_mem, b.weight, a.weight)
      x, w = sharding.data_rows((x, w))
      return jax.value_and_grad(ssl_loss)(slow, x, w, k_views)
    return grad_fn

  def sup_loss(pf, data: StepData, key):
    """CE over the seen classes on memory rows + memory_strength · KL to their stored outputs."""
    idx, w = _distill.draw_rows(key, data.mem.count, batch_size)  # uniform over the memory
    xl, yl, wl, soft, smask = sharding.data_rows((sharding.take_rows(data.mem.x, idx),
                                                  data.mem.y[idx], w, data.soft[idx],
                                                  data.soft_mask[idx]))
    logits = fast_logits(net, pf[0], pf[1], xl)
    loss = cross_entropy(mask_logits(logits, data.seen), yl, wl)
    if memory_strength:
      has = sharding.data_rows(idx < data.soft_n) & jnp.any(smask, -1)
      loss = loss + memory_strength * kl_to_stored(logits, soft, smask, wl * has, temperature)
    return loss

  def step(carry, data: StepData, key, i, stop):
    """The look-ahead SSL phase, then ``inner_steps`` supervised steps when iteration i is
    labelled; carry (slow, fast, opt_slow, opt)."""
    del stop
    slow, fast, opt_slow, opt = carry
    k_ssl, k_lab = jax.random.split(key)
    keys = jax.random.split(k_ssl, n_outer * inner_steps).reshape(n_outer, inner_steps)
    slow, opt_slow, losses = lookahead(slow, opt_slow, tx_slow, ssl_grad(data), keys, beta)

    def supervised(args):
      slow, fast, opt = args

      def one(c, k):
        slow, fast, opt = c
        loss, gf = jax.value_and_grad(sup_loss)((slow.params, fast), data, k)
        (sp, fast), opt = apply_updates(tx, (slow.params, fast), opt, gf)
        return (slow._replace(params=sp), fast, opt), loss

      (slow, fast, opt), ls = jax.lax.scan(one, (slow, fast, opt),
                                           jax.random.split(k_lab, inner_steps))
      return slow, fast, opt, ls.mean()

    labelled = (jax.random.uniform(jax.random.fold_in(data.kind_key, i)) <= threshold) & \
        data.has_labels  # the draw iteration_kinds makes on the host
    slow, fast, opt, loss_sup = jax.lax.cond(
        labelled, supervised, lambda a: (*a, jnp.float32(0.0)), (slow, fast, opt))
    return (slow, fast, opt_slow, opt), jnp.stack([losses.mean(), loss_sup, labelled])

  loop = Loop(step, chunk=chunk, unroll=False)
  opt_init = jax.jit(lambda slow, fast: tx.init((slow.params, fast)))

  @jax.jit
  def predict(state: State, x):
    x = jnp.asarray(x, jnp.float32)
    return mask_logits(fast_logits(net, state.slow.params, state.fast, x), state.seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """Variable sampling of SSL-only and SSL + supervised iterations within ``budget``. With
    ``early_stop`` (its ``every`` in passes, converted to iterations at their mean cost), fewer
    iterations when the held-out score stops improving (the best slow and fast learners kept;
    the stored outputs are those of the kept model)."""
    k_kind, k_loop = jax.random.split(key)
    if budget is None:
      budget = contract.default_passes(epochs_per_step, int(state.cur.count), batch_size)
    has_cur = int(state.cur.count) > 0
    n_new = int(state.mem.count) - int(state.soft_n)
    fwd = _distill.forward_passes(n_new, batch_size) if memory_strength and n_new > 0 else 0.0
    if fwd > budget:  # cannot afford the stored outputs: those rows get none (no KL on them)
      fwd = 0.0
    left = int(math.floor(budget - fwd + 1e-9))
    kinds = iteration_kinds(k_kind, left if has_cur else 0, threshold,
                            int(state.mem.count) > 0, ssl_passes, sup_passes)
    n = len(kinds)
    data = StepData(cur=state.cur, mem=state.mem, seen=state.seen, soft=state.soft,
                    soft_mask=state.soft_mask, soft_n=state.soft_n, kind_key=k_kind,
                    has_labels=state.mem.count > 0, replay=state.step > 0)
    carry = (state.slow, state.fast, state.opt_slow, opt_init(state.slow, state.fast))
    planned = n * ssl_passes + int(kinds.sum()) * sup_passes
    if early_stop is not None and n:
      early_stop = dataclasses.replace(early_stop, every=max(1, math.ceil(early_stop.every * n /
                                                                           planned)))
    (slow, fast, opt_slow, _), sums, stopped = loop.stopping(
        carry, data, k_loop, n, early_stop,
        lambda c, x: predict(state._replace(slow=c[0], fast=c[1]), x), progress=progress)
    if stopped is not None:
      n, kinds = stopped.passes, kinds[:stopped.passes]
    state = state._replace(slow=slow, fast=fast, opt_slow=opt_slow)
    logits = jnp.zeros(state.soft.shape, jnp.float32)
    if fwd:  # the outputs stored with the step's new memory rows (the reference's mem_feat)
      logits, _ = logits_of.rows((slow.params, fast), state.mem.x, int(state.soft_n),
                                 int(state.mem.count))
    state = finish(state, logits, jnp.asarray(fwd > 0), float(temperature))
    n_lab = int(kinds.sum())
    nan = jnp.float32(jnp.nan)
    spent = n * ssl_passes + n_lab * sup_passes
    extra = {}
    if stopped is not None:  # in passes: the iterations' own costs
      best = stopped.best_pass
      extra = {"passes_saved": jnp.float32(planned - spent),
               "best_pass": jnp.float32(best * ssl_passes + int(kinds[:best].sum()) * sup_passes),
               "best_score": jnp.float32(stopped.best_score)}
    return state, contract.info(
        spent + fwd, nan if sums is None else sums[0] / n,
        supervised_loss=nan if not n_lab else sums[1] / n_lab,
        iterations=jnp.float32(n), labelled_iterations=jnp.float32(n_lab), **extra)

  return Learner("dualnet", init, update, end_of_step, predict, early_stopping=True)
