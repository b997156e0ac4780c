"""REMIND (Hayes, Kafle, Shrestha, Acharya, Kanan, ECCV 2020; tyler-hayes/REMIND), ALGORITHMS.md §2.

Reference code (``image_classification_experiments/``): ``REMINDModel.py`` lines 92-258
(``fit_incremental_batch``: 2r replay draws, decode, random resized crop lines 159-164, mixup of
the two replay halves lines 166-186, one SGD step, the eviction of a random item of the largest
class lines 244-253, the per-class StepLR lines 57-65 and 256-258), lines 260-270 (``mixup_data``,
``mixup_criterion``), the SGD optimizer line 55 (momentum 0.9, weight decay 1e-5); the PQ on the
base-init features ``imagenet_base_initialization.py`` lines 59-100 (faiss ``ProductQuantizer``).

A frozen network G (ResNet-18 up to layer4.0) maps an image to a feature map [H, W, D] (7 x 7 x 512
at 224 px). Every D-vector is product-quantized with a fixed codebook; a class-balanced buffer keeps
the uint8 codes [H, W, M] of past examples. The plastic head F (layer4.1 + pool + fc) only ever sees
*decoded* features. One SGD step per incoming example (``new_per_step`` = 1):

1. encode the new feature map; draw 2r distinct replay items from the buffer (r = ``replay_size``);
2. decode all 1 + 2r maps; an independent random resized crop of each map;
3. manifold mixup of the two replay halves with one lam ~ Beta(alpha, alpha); the new example is
   not mixed; loss = mean over the r + 1 rows of lam * CE(y_a) + (1 - lam) * CE(y_b) (lam = 1 on
   the new row);
4. one SGD step on F (torch semantics: g += wd * p; m = momentum * m + g; p -= lr * m) with F's
   batch norm in train mode;
5. insert the new codes, evicting a random item of the largest class when full.

With ``new_per_step`` = b > 1 a step takes b new rows plus r mixed replay rows (b + r rows, 2r
replay items drawn), then inserts the b new items in order.

Learning rate (explicit per-class restart; the reference got it from an old PyTorch scheduler by
accident): an example of class y that is the n-th (0-based) example of y trained on is given
lr0 * gamma ** floor(n / lr_step), with lr0 = 0.1, gamma = 0.01 ** (1 / 13), lr_step = 100 (0.001
after 1,300 examples; it keeps decaying beyond, as in the reference). A step's lr is the mean of its
new rows' lrs (exactly the reference's rule when b = 1).

Batches: ``x`` is G's output [B, H, W, D] float32, or raw inputs when ``g_fn`` (x -> features,
traced inside jit) is given; ``y`` [B] int32; only rows with ``valid`` and ``labeled`` are trained
on and inserted (REMIND is supervised). ``update`` runs B / b steps in order (B must be a multiple
of b) as one chunk of the training ``cljax.train.loop.Loop``: unrolled, or in a lax.scan (``loop``;
on CPU, convolution gradients are far slower inside a loop body, so small B unrolls). A step
without any usable row leaves F, its optimizer state and the buffer unchanged. ``predict`` encodes
and decodes x, then runs F in eval mode.

Replay before the buffer is full enough: while 0 < count < 2r, the rows beyond ``count`` are drawn
with replacement (the buffer's ``sample(..., distinct=True)``) and all are used; while the buffer
is empty, replay rows get zero weight in the loss and in F's batch statistics (when F accepts a
``mask``, as ``cljax.models.resnet.ResNetHead`` does). The reference instead trains on uninitialised rows there.

``passes``: 1.0 per SGD step; a step is one forward-backward pass of F over b + r rows, REMIND's own
training batch. G's forward pass on the new examples is not counted (features are usually
pre-extracted; with ``g_fn`` it is one inference pass per incoming example).

The learner state is a :class:`State` (F's parameters and momentum, the code buffer, the per-class
counts, the codebook, the steps taken). ``end_of_step`` has nothing to do (REMIND learns one
example at a time).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models import resnet
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import feature_aug
from cljax.ops import pq
from cljax.ops import pq_maps
from cljax.train.loop import Loop
from cljax.train.loop import apply_updates

CODES = buffers.get("largest_class")  # REMIND's buffer policy


class State(NamedTuple):
  """REMIND's learner state. K classes, N buffer slots, G's maps [H, W, D], a codebook of M
  sub-vectors of C centroids each.

  params: F's ``cljax.models.pure.Net`` pure dict (weights and batch-norm running statistics).
  opt: F's SGD state (``cljax.optim.direction("sgd")``: the momentum, shaped like ``params``).
  buffer: the ``largest_class`` policy state (``cljax.ops.buffers``) over codes: items
    [N, H, W, M] uint8, labels [N] int32, count, per-class counts, its own key.
  class_seen: [K] int32 examples of each class trained on so far (the per-class lr schedule).
  codebook: [M, C, D / M] float32 PQ codebook (fixed).
  steps: [] int32 SGD steps taken.
  """

  params: Any
  opt: Any
  buffer: Any
  class_seen: jax.Array
  codebook: jax.Array
  steps: jax.Array


def per_class_lr(class_seen: jax.Array, labels: jax.Array, use: jax.Array, lr0: float, gamma: float,
                 lr_step: int) -> tuple[jax.Array, jax.Array]:
  """Per-row learning rates under REMIND's per-class step schedule, rows taken in order.

  Args:
    class_seen: [K] int32 examples of each class trained on so far.
    labels: [b] int32; use: [b] bool (rows that count).
    lr0, gamma, lr_step: lr of the n-th example of a class is lr0 * gamma ** floor(n / lr_step).

  Returns:
    (lr [b] float32 (rows with use False get the value they would have), class_seen after the rows).
  """
  k = class_seen.shape[0]
  onehot = jax.nn.one_hot(labels, k, dtype=jnp.int32) * use[:, None].astype(jnp.int32)  # [b, K]
  earlier = jnp.cumsum(onehot, axis=0) - onehot  # same-class rows before each row in this batch
  n = class_seen[labels] + jnp.take_along_axis(earlier, labels[:, None], axis=1)[:, 0]
  lr = lr0 * jnp.power(jnp.float32(gamma), jnp.floor(n / lr_step).astype(jnp.float32))
  return lr.astype(jnp.float32), class_seen + onehot.sum(0)


def uses_matmul_conv_grad(matmul_conv_grad: Optional[bool] = None) -> bool:
  """Whether scanned steps compute F's convolution kernel gradients as matmuls: the
  ``matmul_conv_grad`` argument of :func:`remind`, whose default None means on the CPU backend."""
  return jax.default_backend() == "cpu" if matmul_conv_grad is None else bool(matmul_conv_grad)


def features(x: jax.Array, g_fn: Optional[Callable], codebook_shape: tuple) -> jax.Array:
  """G's maps [B, H, W, D] float32 of inputs x (x itself without ``g_fn``); D must be the
  codebook's M * D / M."""
  return pq_maps.check_maps(g_fn(x) if g_fn is not None else x, codebook_shape)


class _Head:
  """F as pure functions: ``Net.of(F)``, plus a second graph of the same variables whose
  convolutions compute their kernel gradient as a matmul (``resnet.conv_matmul_kernel_grad``),
  for use inside loop bodies. Both read the same params dict."""

  def __init__(self, f_module: nnx.Module):
    self.net = Net.of(nnx.merge(*nnx.split(f_module), copy=True), "REMIND's F")
    self.net_mm = Net.of(resnet.use_matmul_kernel_grad(nnx.merge(*nnx.split(f_module),
                                                                 copy=True)),
                         "REMIND's F (matmul kernel gradients)")
    self.params = self.net.fixed_params


def _labels_ok(y) -> np.ndarray:
  y = np.asarray(y, np.int32)
  if y.size and y.min() < 0:
    raise ValueError("remind: the base set must be labelled (REMIND's buffer holds labelled "
                     "items); got labels < 0 (an unlabeled, e.g. mae, base initialisation)")
  return y


def from_base(base: Any, split: str = "layer4.0", num_subvectors: Optional[int] = None,
              num_centroids: int = 256, pq_iters: int = 25, seed: int = 0,
              codebook: Any = None, feature_batch: int = 256) -> dict:
  """REMIND's base initialisation from a base-trained ResNet-18, or from F alone.

  Args:
    base: has ``net`` (a ``cljax.models.pure.Net`` of a ``resnet.ResNet18``) and ``params``
      (incl. batch statistics), ``x`` [N, H, W, C] float32 base inputs and ``y`` [N] labels
      (``cljax.train.pretrain.BaseInit``).
    split: last block of G (``resnet.split_model``); "none" (or None): ``base.net`` is F itself
      (any model) and ``base.x`` are already G's maps [N, h, w, D], e.g. cached features of a
      frozen pretrained G (``experiments/configs/remind_pretrained.py``); G is then the identity
      (``g_fn`` None).
    num_subvectors: M; None: D // 16 (16-dim sub-vectors, REMIND's 32 for D = 512), at least 1.
    num_centroids, pq_iters: C and Lloyd iterations of ``pq.train`` on all G features of the
      base set (one D-vector per spatial position).
    seed: PQ training key.
    codebook: use this [M, C, D / M] codebook instead of training one.
    feature_batch: images per jitted G call.

  Returns:
    dict(f_module=F (copies of the base variables), g_fn=G in eval mode (pure, parameters closed
    over; None with split "none"), codebook, base_features [N, h, w, D] float32, base_labels [N]
    int32).
  """
  module = base.net.module(base.params, np.shape(base.x)[1:])
  x = np.asarray(base.x, np.float32)
  y = _labels_ok(base.y)
  if len(x) == 0:
    raise ValueError("remind: the base set is empty; REMIND trains its codebook on G's base "
                     "features (set base_init.classes > 0 or base_init.dataset)")
  if split in (None, "none"):
    # The base network is F itself, trained on G's outputs: the inputs are already G's maps
    # (e.g. a cljax.data.features cache of a frozen pretrained G), so G is the identity and the
    # codebook is trained on the base inputs themselves (notes/pretrained.md).
    if x.ndim != 4:
      raise ValueError(f"remind with split='none': base inputs must be G's maps [N, H, W, D], "
                       f"got {x.shape}; use a features data set of a spatial layer")
    f, g_fn, feats = module, None, x
  else:
    if not isinstance(module, resnet.ResNet18):
      raise ValueError(f"remind: the base model must be a resnet18 (split G/F at {split!r}), "
                       f"got {type(module).__name__}; or set split='none' when the inputs are "
                       f"already G's maps")
    g, f = resnet.split_model(module, split)
    g_net = Net.of(g, "REMIND's G")
    g_params = g_net.fixed_params
    g_fn = lambda x: g_net.apply(g_params, x)  # eval mode; parameters closed over (frozen)
    g_j = jax.jit(g_fn)
    feats = np.concatenate([np.asarray(g_j(x[i:i + feature_batch]))
                            for i in range(0, len(x), feature_batch)])
  d = feats.shape[-1]
  if codebook is None:
    m = num_subvectors or max(1, d // 16)
    codebook = pq.train(jax.random.key(seed), jnp.asarray(feats.reshape(-1, d)), int(m),
                        int(num_centroids), iters=int(pq_iters))
  return dict(f_module=f, g_fn=g_fn, codebook=codebook, base_features=feats, base_labels=y)


def init_state(key: jax.Array, example_batch, *, features: Callable, net: Net, params: dict,
               tx, num_classes: int, codebook: jax.Array, capacity: Callable) -> State:
  """A fresh :class:`State` for inputs like ``example_batch["x"]`` (F's ``params`` and the
  ``codebook`` copied; ``capacity(h, w)`` gives the buffer's slots for [h, w] maps)."""
  feats = jax.eval_shape(features, jnp.asarray(example_batch["x"]))
  _, h, w, _ = feats.shape
  out = jax.eval_shape(net.apply, params, feats)
  if out.shape[-1] != num_classes:
    raise ValueError(f"F outputs {out.shape[-1]} classes, num_classes is {num_classes}")
  k_buf, _ = jax.random.split(key)
  # Copies (jnp.array), never aliases: update donates the state, which must not delete the
  # caller's module variables or the codebook the factory closes over.
  params = jax.tree.map(jnp.array, params)
  return State(
      params=params,
      opt=tx.init(params),
      buffer=CODES.init(k_buf, capacity(h, w),
                        jax.ShapeDtypeStruct((h, w, codebook.shape[0]), jnp.uint8), num_classes),
      class_seen=jnp.zeros((num_classes,), jnp.int32),
      codebook=jnp.array(codebook),
      steps=jnp.zeros((), jnp.int32))


def sgd_step(small: tuple, buffer, codebook: jax.Array, new_codes: jax.Array, y: jax.Array,
             use: jax.Array, key: jax.Array, *, net: Net, tx, replay_size: int,
             mixup_alpha: float, crop: Optional[tuple], lr0: float, lr_gamma: float,
             lr_step: int) -> tuple:
  """One REMIND SGD step on b new rows plus r mixed replay rows (module docstring, steps 1-4).

  Args:
    small: (params, opt, class_seen) of the :class:`State`, what the step changes.
    buffer: the code buffer (2r distinct items drawn from it); codebook: [M, C, D / M].
    new_codes: [b, H, W, M] uint8 codes of the new rows; y: [b] int32; use: [b] bool.
    key: this step's key (sample, crop and mixup keys split from it).
    net: F's pure functions (plain, or with matmul kernel gradients); tx: the SGD direction.
    replay_size: r; mixup_alpha: Beta(alpha, alpha); crop: (scale, ratio) of the random
      resized crop, None for none; lr0, lr_gamma, lr_step: the per-class schedule.

  Returns:
    ((params, opt, class_seen), loss [] float32).
  """
  params, opt, class_seen = small
  b, r = new_codes.shape[0], replay_size
  k_sample, k_crop, k_mix = jax.random.split(key, 3)
  if r > 0:
    replay = CODES.sample(buffer, k_sample, 2 * r, distinct=True)
    codes = jnp.concatenate([new_codes, replay.x])
  else:
    codes = new_codes
  x = pq_maps.decode(codebook, codes)  # [b + 2r, H, W, D]
  if crop is not None:
    x = feature_aug.random_resized_crop(k_crop, x, *crop)
  use_f = use.astype(jnp.float32)
  if r > 0:
    mixed, lam = feature_aug.mixup(k_mix, x[b:b + r], x[b + r:], mixup_alpha)
    x = jnp.concatenate([x[:b], mixed])
    ya = jnp.concatenate([y, replay.y[:r]])
    yb = jnp.concatenate([y, replay.y[r:]])
    lam_rows = jnp.concatenate([jnp.ones((b,), jnp.float32), jnp.full((r,), lam)])
    # replay rows count once the buffer holds anything (sample's weight is 0 while empty)
    weight = jnp.concatenate([use_f, replay.weight[:r]])
  else:
    ya = yb = y
    lam_rows = jnp.ones((b,), jnp.float32)
    weight = use_f
  lr_rows, class_seen = per_class_lr(class_seen, y, use, lr0, lr_gamma, lr_step)
  lr = jnp.sum(lr_rows * use_f) / jnp.maximum(jnp.sum(use_f), 1.0)

  def loss_fn(p):
    logits, moved = net.apply_train(p, x, weight > 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    ce_a = -jnp.take_along_axis(logp, jnp.clip(ya, 0)[:, None], axis=1)[:, 0]
    ce_b = -jnp.take_along_axis(logp, jnp.clip(yb, 0)[:, None], axis=1)[:, 0]
    rows = lam_rows * ce_a + (1.0 - lam_rows) * ce_b
    return jnp.sum(weight * rows) / jnp.maximum(jnp.sum(weight), 1.0), moved

  (loss, moved), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  new, opt = apply_updates(tx, params, opt, grads, lr)
  return (net.with_stats(new, moved, x.shape[1:]), opt, class_seen), loss


def loop_step(state: State, data: tuple, key: jax.Array, i: jax.Array, stop: jax.Array, *,
              sgd: Callable, masked: bool) -> tuple:
  """One step of ``update`` as a ``cljax.train.loop.Loop`` step: encode the step's new rows,
  train F on them with replay (``sgd``: :func:`sgd_step`, settings bound), insert them.

  ``data`` is (codebook, rows) with this step's rows (maps [b, H, W, D], y [b], use [b], key):
  each step's key is one of ``update``'s split keys, so the Loop's own ``key`` is not used. A step
  without a usable row leaves F, its optimizer state and the counts as they were: ``masked``
  computes it and keeps the old values (unrolled steps; a cond would put F's convolutions back
  under control flow), else a ``lax.cond`` skips it (scanned steps; the cond carries only F's
  variables: the buffer is read inside and updated outside, so a skipped step never copies it).

  Returns:
    (state, [loss, taken] float32): the loss 0 and taken 0 for a skipped step.
  """
  del key, i, stop
  codebook, (x, y, use, k) = data
  new_codes = pq_maps.encode(codebook, x)
  small = (state.params, state.opt, state.class_seen)
  taken = jnp.any(use)
  if masked:
    new_small, loss = sgd(small, state.buffer, codebook, new_codes, y, use, k)
    small = jax.tree.map(lambda a, c: jnp.where(taken, a, c), new_small, small)
    loss = jnp.where(taken, loss, 0.0)
  else:
    small, loss = jax.lax.cond(
        taken, lambda s: sgd(s, state.buffer, codebook, new_codes, y, use, k),
        lambda s: (s, jnp.zeros((), jnp.float32)), small)
  params, opt, class_seen = small
  state = state._replace(params=params, opt=opt, class_seen=class_seen,
                         buffer=CODES.insert(state.buffer, new_codes, y, use),
                         steps=state.steps + taken.astype(jnp.int32))
  return state, jnp.stack([loss, taken.astype(jnp.float32)])


def update(state: State, batch, key: jax.Array, *, features: Callable, new_per_step: int,
           loop_for: Callable[[int], Loop]) -> tuple:
  """REMIND's ``update``: the batch's B / b steps in order, in one ``Loop`` chunk of B / b steps
  (``loop_for(steps)``: unrolled or scanned, built once per step count)."""
  feats = features(batch["x"])
  b = new_per_step
  if feats.shape[0] % b:
    raise ValueError(f"batch size {feats.shape[0]} is not a multiple of new_per_step={b}")
  _, use = contract.masks(batch)
  steps = feats.shape[0] // b
  rows = (feats.reshape(steps, b, *feats.shape[1:]), batch["y"].astype(jnp.int32).reshape(steps, b),
          use.reshape(steps, b), jax.random.split(key, steps))
  state, sums = loop_for(steps)(state, state.codebook, key, steps, per_step=lambda start: rows)
  loss_sum, passes = sums[0], sums[1]
  loss = jnp.where(passes > 0, loss_sum / jnp.maximum(passes, 1.0), jnp.nan)
  return state, contract.info(passes, loss, buffer_count=state.buffer.count)


def predict(state: State, x: jax.Array, *, features: Callable, net: Net) -> jax.Array:
  """Logits [B, K]: F in eval mode on the encoded-then-decoded maps of x."""
  recon = pq_maps.decode(state.codebook, pq_maps.encode(state.codebook, features(x)))
  return net.apply(state.params, recon)


@register("remind", inputs=("base",))
def remind(*, num_classes: int,
           codebook: Any = None,
           f_module: Optional[nnx.Module] = None,
           buffer_capacity: int = 10_000,
           replay_size: int = 50,
           mixup_alpha: float = 0.1,
           lr0: float = 0.1,
           lr_gamma: float = 0.01 ** (1 / 13),
           lr_step: int = 100,
           optimizer: str = "sgd",
           momentum: float = 0.9,
           weight_decay: float = 1e-5,
           new_per_step: int = 1,
           random_crop: bool = True,
           crop_scale: tuple = (2 / 7, 1.0),
           crop_ratio: tuple = (3 / 4, 4 / 3),
           g_fn: Optional[Callable] = None,
           base_features: Any = None,
           base_labels: Any = None,
           loop: str = "auto",
           max_unrolled_steps: int = 8,
           matmul_conv_grad: Optional[bool] = None,
           base: Any = None,
           split: str = "layer4.0",
           num_subvectors: Optional[int] = None,
           num_centroids: int = 256,
           pq_iters: int = 25,
           seed: int = 0,
           buffer_bytes: int = 0,
           prefill_buffer: bool = True) -> Learner:
  """Builds the REMIND learner (see module docstring).

  Args:
    num_classes: K, F's output size.
    codebook: [M, C, D / M] PQ codebook (``cljax.ops.pq.train`` on base-init features); fixed.
    f_module: F, an NNX module whose ``__call__(x, use_running_average=..., [mask=...])`` maps
      [N, H, W, D] to logits [N, K] (e.g. ``resnet.split_model(model, "layer4.0")[1]``). Its
      current variables are the start (copied; the module is never modified).
    buffer_capacity: items the buffer holds (REMIND ImageNet: 959,665; see
      ``pq.capacity_for_bytes``).
    replay_size: r, mixed replay rows per step (2r items drawn); 0 gives plain fine-tuning of F
      on the (quantized, cropped) new examples: the no-replay baseline.
    mixup_alpha: Beta(alpha, alpha) for mixup; <= 0 disables mixing (lam = 1).
    lr0, lr_gamma, lr_step: per-class step schedule (module docstring).
    optimizer, momentum, weight_decay: the direction of F's steps (``cljax.optim.direction``;
      the reference's SGD, torch semantics: decay added to the gradient before momentum), times
      REMIND's per-class lr schedule.
    new_per_step: b, new examples per SGD step.
    random_crop, crop_scale, crop_ratio: random resized crop of every decoded map.
    g_fn: optional jittable x -> features [B, H, W, D] applied to ``batch["x"]`` and to ``predict``'s
      input (e.g. G's pure function in eval mode).
    base_features, base_labels: optional base-init set ([N, H, W, D] features, [N] labels) inserted
      into the buffer by ``init`` (see ``fill_buffer``; ``init`` then loops over chunks on the
      host, so it is not traceable).
    loop: how ``update`` runs its B / b steps. "unroll": a Python loop (steps masked instead of
      skipped, so no control flow surrounds F); "scan": one lax.scan with a lax.cond per step
      (compiles once whatever B). "auto": "unroll" on CPU when B / b <= ``max_unrolled_steps``,
      else "scan". Why: XLA:CPU runs convolution gradients far slower inside a loop or cond body
      than at top level (measured here at 7x7x512: ~100x for the kernel gradient). Both loops give
      the same result up to float rounding.
    max_unrolled_steps: the "auto" threshold (compile time grows with the unrolled steps).
    matmul_conv_grad: inside the scan, compute F's convolution kernel gradients as matmuls
      (``resnet.conv_matmul_kernel_grad``: same values up to rounding, ~10x faster there on CPU,
      ~2x slower at top level). Default: on for the CPU backend. Unrolled steps use plain
      convolutions.
    base: a base initialisation (``cljax.train.pretrain.BaseInit``: a base-trained resnet18
      and its base set; the experiment runner passes it). REMIND's base init is then done here
      (``from_base``): G/F split at ``split``, G (eval mode) becomes ``g_fn`` so batches carry
      raw images, F the trained head, a codebook of ``num_subvectors`` x ``num_centroids``
      trained by ``pq_iters`` k-means iterations (key ``seed``) on G's base features unless
      ``codebook`` is given, and the base set becomes ``base_features``/``base_labels``.
      ``f_module``, ``g_fn`` and ``base_features`` must then be left unset.
    buffer_bytes: if > 0, the buffer capacity is the items whose codes fit in this many bytes
      once the float32 codebook is paid for (``pq.capacity_for_bytes``, set in ``init`` when the
      feature-map size is known); overrides ``buffer_capacity``.
    prefill_buffer: insert ``base_features`` in ``init`` (REMIND). False leaves them out (e.g.
      when the stream itself starts with the base set, which would otherwise be stored twice).
  """
  if loop not in ("auto", "unroll", "scan"):
    raise ValueError(f"loop must be 'auto', 'unroll' or 'scan', got {loop!r}")
  if base is not None:
    if f_module is not None or g_fn is not None or base_features is not None:
      raise ValueError("remind: give either base (G, F and the base set come from it) or "
                       "f_module, g_fn and base_features, not both")
    built = from_base(base, split, num_subvectors, num_centroids, pq_iters, seed, codebook)
    f_module, g_fn, codebook = built["f_module"], built["g_fn"], built["codebook"]
    base_features, base_labels = built["base_features"], built["base_labels"]
  if codebook is None:
    raise ValueError("remind needs a codebook [M, C, D / M] (cljax.ops.pq.train on G's base "
                     "features), or base=... to build one")
  if f_module is None:
    raise ValueError("remind needs F: f_module (e.g. resnet.split_model(model, 'layer4.0')[1]), "
                     "or base=... to split one")
  if int(replay_size) < 0 or int(new_per_step) < 1:
    raise ValueError(f"need replay_size >= 0 and new_per_step >= 1, got {replay_size}, "
                     f"{new_per_step}")
  head = _Head(f_module)
  tx = optim.direction(optimizer, momentum=momentum, weight_decay=weight_decay)
  codebook = jnp.asarray(codebook, jnp.float32)
  feats_of = functools.partial(features, g_fn=g_fn, codebook_shape=codebook.shape)
  sgd = functools.partial(
      sgd_step, tx=tx, replay_size=int(replay_size), mixup_alpha=mixup_alpha,
      crop=(tuple(crop_scale), tuple(crop_ratio)) if random_crop else None, lr0=lr0,
      lr_gamma=lr_gamma, lr_step=lr_step)
  on_cpu = jax.default_backend() == "cpu"

  @functools.lru_cache(maxsize=None)
  def loop_for(steps: int) -> Loop:
    # All of a batch's steps in one chunk. Unrolled steps use plain convolutions; scanned ones
    # the matmul kernel gradients where they are faster (docstring of `loop`).
    unrolled = loop == "unroll" or (loop == "auto" and on_cpu and steps <= max_unrolled_steps)
    net = head.net_mm if not unrolled and uses_matmul_conv_grad(matmul_conv_grad) else head.net
    return Loop(functools.partial(loop_step, sgd=functools.partial(sgd, net=net),
                                  masked=unrolled), chunk=steps, unroll=unrolled)

  def init(key, example_batch):
    state = init_state(key, example_batch, features=feats_of, net=head.net, params=head.params,
                       tx=tx, num_classes=num_classes, codebook=codebook,
                       capacity=functools.partial(pq_maps.capacity_for, buffer_capacity,
                                                  buffer_bytes, codebook.shape))
    if base_features is not None and prefill_buffer:
      state = fill_buffer(state, base_features, base_labels)
    return state

  # One SGD step per example whatever the budget: not budgeted.
  return Learner(
      name="remind", init=init,
      update=jax.jit(functools.partial(update, features=feats_of, new_per_step=int(new_per_step),
                                       loop_for=loop_for), donate_argnums=0),
      end_of_step=contract.identity_end_of_step,
      predict=jax.jit(functools.partial(predict, features=feats_of, net=head.net)),
      budgeted=False)


@functools.partial(jax.jit, donate_argnums=0)
def _fill_chunk(state: State, feats, labels, mask) -> State:
  codes = pq_maps.encode(state.codebook, feats)
  return state._replace(buffer=CODES.insert(state.buffer, codes, labels, mask))


def fill_buffer(state: State, features, labels, chunk: int = 512) -> State:
  """REMIND's base initialization of the buffer: encodes and inserts every base-init example.

  Args:
    state: a remind learner state (its codebook is used; its buffer's own key draws evictions,
      if N exceeds the capacity).
    features: [N, H, W, D] G features (numpy or jax), labels: [N] int.
    chunk: examples encoded per jitted call (the last chunk is padded and masked, so one compile).

  Returns:
    The state with the items inserted in order (the input state's buffer is donated).
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels, np.int32)
  n = features.shape[0]
  for start in range(0, n, chunk):
    f = features[start:start + chunk]
    y = labels[start:start + chunk]
    mask = np.ones((chunk,), bool)
    if f.shape[0] < chunk:
      pad = chunk - f.shape[0]
      mask[f.shape[0]:] = False
      f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), np.float32)])
      y = np.concatenate([y, np.zeros((pad,), np.int32)])
    state = _fill_chunk(state, jnp.asarray(f), jnp.asarray(y), jnp.asarray(mask))
  return state
