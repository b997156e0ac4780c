"""DualNet (Pham, Liu, Hoi, NeurIPS 2021, "DualNet: Continual Learning, Fast and Slow";
phquang/DualNet), in DietCL's budgeted semi-supervised protocol.

* Slow learner: the ViT encoder (+ a projector), trained by Barlow Twins on two views of the
  step's images (and, from the second step, as many memory images), each SSL step followed by the
  reference's look-ahead ``θ ← θ_before + β (θ_after − θ_before)`` (``model/semi_dualnet.py``,
  ``observe``: n_outer x inner_steps Barlow Twins steps, β = 0.05 in ``scripts/semi.sh``; here one
  inner step per look-ahead).
* Fast learner: feature adaptation of the slow learner's per-layer features (``MaskNet18`` in
  ``model/common.py``: m_l = f_l(m_{l−1}) ⊙ h_l). For the ViT: m_1 = GELU(patches W_1 + b_1) ⊙ h_1,
  m_l = GELU(m_{l−1} W_l + b_l) ⊙ h_l for the later blocks (h_l: slow block l's output tokens),
  and a linear head on the mean token of m_L. The supervised step trains fast and slow weights
  together (the reference's one optimizer over all parameters), with cross-entropy over the seen
  classes on every labelled row so far (the reference's current-batch and memory terms; its
  extra KL to stored logits is left out).
* Sampling (``iteration_kinds``, DietCL's "variable sampling, threshold 0.5", after DualNet's
  semi-supervised driver ``semiSL/semi_main.py``, which drops a batch's labels when
  u ~ U(0, 1) > ρ): iteration i draws u_i from ``fold_in(key, i)``; u_i <= ``threshold`` makes it a
  labelled iteration (SSL step + supervised step, 2 passes), otherwise an unlabelled one (SSL step
  only, 1 pass). A step runs the longest prefix of iterations whose passes fit its budget.

Budget: an SSL step is one pass (``batch_size // 2`` images in two views), a supervised step one
pass (``batch_size`` rows through slow and fast learners); ``update`` stores rows (0 passes).
Prediction: the fast learner's logits over the seen classes.
"""

from __future__ import annotations

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
  fast: the fast learner's weights, {"layers": [one {"kernel", "bias"} per slow block], "head":
    {"kernel": [W, K], "bias": [K]}} (a parameter tree, ``init_fast``).
  seen: [K] bool, classes with a labelled row so far.
  cur: ``append`` store of this step's valid rows (labels unused), emptied at the step's end.
  mem: ``append`` store of every labelled row so far (capacity ``memory_size``).
  step: [] int32, time steps ended so far.
  """

  slow: Slow
  fast: Any
  seen: jax.Array
  cur: Any
  mem: Any
  step: jax.Array


class StepData(NamedTuple):
  """What the loop's step reads besides its carry.

  cur, mem, seen: the state's. kind_key: the key of the iterations' labelled draws
  (``labelled_draws``). has_labels: [] bool, the memory holds rows. replay: [] bool, from the
  second step: memory images in the SSL batches.
  """

  cur: Any
  mem: Any
  seen: jax.Array
  kind_key: jax.Array
  has_labels: jax.Array
  replay: jax.Array


def labelled_draws(key: jax.Array, n: int, threshold: float) -> jax.Array:
  """[n] bool: iteration i is labelled when uniform(fold_in(key, i)) <= threshold."""
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(n))
  return u <= threshold


def iteration_kinds(key: jax.Array, budget: int, threshold: float, has_labels: bool
                    ) -> np.ndarray:
  """The iterations a step's ``budget`` affords: [n] bool, True = labelled (2 passes), False =
  unlabelled (1 pass); the longest prefix of the draws whose passes sum to <= budget."""
  if budget <= 0:
    return np.zeros((0,), bool)
  kinds = np.asarray(labelled_draws(key, int(budget), threshold)) & bool(has_labels)
  cost = np.cumsum(1 + kinds.astype(int))
  return kinds[:int(np.searchsorted(cost, budget, side="right"))]


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
def finish(state: State) -> State:
  return state._replace(cur=append_store.clear(state.cur), step=state.step + 1)


@register("dualnet", inputs=("model", "model_kwargs", "batch_size", "init_params",
                             "max_step_size"))
def dualnet(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
            batch_size: int = 64, lr: float = 1e-3, slow_lr: float = 1e-3, beta: float = 0.05,
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
    lr: Adam lr of the supervised step (fast and slow weights); slow_lr: of the SSL step.
    beta: the slow learner's look-ahead step (reference semi-supervised script: 0.05).
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
  net = _vit.vit_net("dualnet", model, num_classes, model_kwargs)
  proj = _ssl.mlp_head(proj_dim, (proj_hidden, proj_hidden))
  tx = optim.build("adam", lr)
  tx_slow = optim.build("adam", slow_lr)
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
    return State(slow=Slow(params, _ssl.init_head(proj, k_proj, d)),
                 fast=init_fast(k_fast, p * p * x.shape[-1], d, len(params["blocks"]),
                                num_classes),
                 seen=jnp.zeros((num_classes,), bool),
                 cur=store.init(k_cur, max_step_size, ex, num_classes),
                 mem=store.init(k_mem, memory_size, ex, num_classes),
                 step=jnp.zeros((), jnp.int32))

  def ssl_loss(slow: Slow, x, w, key):
    encode = lambda v: net.features(slow.params, v)  # noqa: E731
    z1, z2, _ = _ssl.view_embeddings(encode, lambda f: proj.apply(slow.proj, f), x, key, scale)
    return _ssl.barlow(z1, z2, lamb, scale_loss, w)

  def step(carry, data: StepData, key, i, stop):
    """An SSL step with look-ahead, then a supervised step when iteration i is labelled; carry
    (slow, fast, opt_slow, opt)."""
    del stop
    slow, fast, opt_slow, opt = carry
    k_cur, k_mem, k_views, k_lab = jax.random.split(key, 4)
    # SSL batch: the step's images, half of them memory images once the memory holds earlier
    # steps' rows (the reference concatenates replayed images from the second task on).
    a = store.sample(data.cur, k_cur, n_img)
    b = store.sample(data.mem, k_mem, n_img)
    use_mem = (jnp.arange(n_img) >= n_img // 2) & data.replay & (b.weight > 0)
    x = jnp.where(use_mem.reshape(-1, 1, 1, 1), b.x, a.x)
    w = jnp.where(use_mem, b.weight, a.weight)
    x, w = sharding.data_rows((x, w))
    loss_ssl, g = jax.value_and_grad(ssl_loss)(slow, x, w, k_views)
    after, opt_slow = apply_updates(tx_slow, slow, opt_slow, g)
    slow = jax.tree.map(lambda p0, p1: p0 + beta * (p1 - p0), slow, after)  # look-ahead

    def supervised(args):
      slow, fast, opt = args
      s = store.sample(data.mem, k_lab, batch_size)
      xl, yl, wl = sharding.data_rows((s.x, s.y, s.weight))
      loss_fn = lambda pf: cross_entropy(  # noqa: E731
          mask_logits(fast_logits(net, pf[0], pf[1], xl), data.seen), yl, wl)
      loss, gf = jax.value_and_grad(loss_fn)((slow.params, fast))
      (sp, fast), opt = apply_updates(tx, (slow.params, fast), opt, gf)
      return slow._replace(params=sp), fast, opt, loss

    labelled = (jax.random.uniform(jax.random.fold_in(data.kind_key, i)) <= threshold) & \
        data.has_labels  # the draw iteration_kinds makes on the host
    slow, fast, opt, loss_sup = jax.lax.cond(
        labelled, supervised, lambda a: (*a, jnp.float32(0.0)), (slow, fast, opt))
    return (slow, fast, opt_slow, opt), jnp.stack([loss_ssl, loss_sup, labelled])

  loop = Loop(step, chunk=chunk, unroll=False)
  opt_slow_init = jax.jit(tx_slow.init)
  opt_init = jax.jit(lambda slow, fast: tx.init((slow.params, fast)))

  def end_of_step(state: State, key, budget=None, progress=None):
    """Variable sampling of SSL-only and SSL + supervised iterations within ``budget``."""
    k_kind, k_loop = jax.random.split(key)
    if budget is None:
      budget = contract.default_passes(epochs_per_step, int(state.cur.count), batch_size)
    has_cur = int(state.cur.count) > 0
    kinds = iteration_kinds(k_kind, budget if has_cur else 0, threshold,
                            int(state.mem.count) > 0)
    n = len(kinds)
    data = StepData(cur=state.cur, mem=state.mem, seen=state.seen, kind_key=k_kind,
                    has_labels=state.mem.count > 0, replay=state.step > 0)
    carry = (state.slow, state.fast, opt_slow_init(state.slow),
             opt_init(state.slow, state.fast))
    (slow, fast, _, _), sums = loop(carry, data, k_loop, n, progress=progress)
    state = finish(state._replace(slow=slow, fast=fast))
    n_lab = int(kinds.sum())
    nan = jnp.float32(jnp.nan)
    return state, contract.info(
        n + n_lab, nan if sums is None else sums[0] / n,
        supervised_loss=nan if not n_lab else sums[1] / n_lab,
        iterations=jnp.float32(n), labelled_iterations=jnp.float32(n_lab))

  @jax.jit
  def predict(state: State, x):
    x = jnp.asarray(x, jnp.float32)
    return mask_logits(fast_logits(net, state.slow.params, state.fast, x), state.seen)

  return Learner("dualnet", init, _stores.store_all_update, end_of_step, predict)
