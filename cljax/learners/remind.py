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
of b): unrolled, or in a lax.scan (``loop``; on CPU, convolution gradients are far slower inside a
loop body, so small B unrolls). A step without any usable row leaves F, its optimizer state and the
buffer unchanged. ``predict`` encodes and decodes x, then runs F in eval mode.

Replay before the buffer is full enough: while 0 < count < 2r, the rows beyond ``count`` are drawn
with replacement (the buffer's ``sample(..., distinct=True)``) and all are used; while the buffer
is empty, replay rows get zero weight in the loss and in F's batch statistics (when F accepts a
``mask``, as ``cljax.models.resnet.ResNetHead`` does). The reference instead trains on uninitialised rows there.

``passes``: 1.0 per SGD step; a step is one forward-backward pass of F over b + r rows, REMIND's own
training batch. G's forward pass on the new examples is not counted (features are usually
pre-extracted; with ``g_fn`` it is one inference pass per incoming example).

The learner state is a dict of arrays: F's ``params`` (a ``cljax.models.pure.Net`` pure dict,
batch-norm running statistics included) and its SGD state ``opt`` (momentum), the ``buffer``
(``cljax.ops.buffers`` policy ``largest_class`` over uint8 codes), ``class_seen`` [K] int32
(examples trained per class, for the lr), the ``codebook`` [M, C, D / M] and ``steps`` (SGD steps
taken). ``end_of_step`` has nothing to do (REMIND learns one example at a time).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

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
from cljax.train.loop import apply_updates

CODES = buffers.get("largest_class")  # REMIND's buffer policy


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
    momentum, weight_decay: SGD, torch semantics (decay added to the gradient before momentum).
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
  on_cpu = jax.default_backend() == "cpu"
  if matmul_conv_grad is None:
    matmul_conv_grad = on_cpu
  if f_module is None:
    raise ValueError("remind needs F: f_module (e.g. resnet.split_model(model, 'layer4.0')[1]), "
                     "or base=... to split one")
  head = _Head(f_module)
  tx = optim.direction("sgd", momentum=momentum, weight_decay=weight_decay)
  codebook = jnp.asarray(codebook, jnp.float32)
  m_sub, _, ds = codebook.shape
  r, b = int(replay_size), int(new_per_step)
  if r < 0 or b < 1:
    raise ValueError(f"need replay_size >= 0 and new_per_step >= 1, got {r}, {b}")
  hparams = dict(num_classes=num_classes, codebook_shape=tuple(codebook.shape),
                 buffer_capacity=buffer_capacity, replay_size=r, mixup_alpha=mixup_alpha, lr0=lr0,
                 lr_gamma=lr_gamma, lr_step=lr_step, momentum=momentum, weight_decay=weight_decay,
                 new_per_step=b, random_crop=random_crop, crop_scale=tuple(crop_scale),
                 crop_ratio=tuple(crop_ratio), g=g_fn is not None,
                 loop=loop, max_unrolled_steps=max_unrolled_steps,
                 matmul_conv_grad=bool(matmul_conv_grad), split=split if base is not None else None,
                 buffer_bytes=buffer_bytes, prefill_buffer=prefill_buffer,
                 base_examples=0 if base_features is None else len(base_features))

  def features(x):
    feats = g_fn(x) if g_fn is not None else x
    if feats.ndim != 4 or feats.shape[-1] != m_sub * ds:
      raise ValueError(f"features must be [B, H, W, {m_sub * ds}] for a codebook of shape "
                       f"{tuple(codebook.shape)}, got {feats.shape}")
    return feats.astype(jnp.float32)

  def quantize(cb, feats):
    n, h, w, d = feats.shape
    return pq.encode(cb, feats.reshape(n * h * w, d), batch_size=None).reshape(n, h, w, m_sub)

  def dequantize(cb, codes):
    n, h, w, _ = codes.shape
    return pq.decode(cb, codes.reshape(n * h * w, m_sub)).reshape(n, h, w, m_sub * ds)

  def capacity(h, w):
    if buffer_bytes <= 0:
      return int(buffer_capacity)
    cap = pq.capacity_for_bytes(int(buffer_bytes), m_sub, codebook.shape[1], m_sub * ds,
                                vectors_per_item=h * w)
    if cap < 1:
      raise ValueError(f"buffer_bytes={buffer_bytes} does not even pay for the codebook "
                       f"({pq.memory_bytes(0, m_sub, codebook.shape[1], m_sub * ds)['codebook']} B)")
    return cap

  def init(key, example_batch):
    feats = jax.eval_shape(features, jnp.asarray(example_batch["x"]))
    _, h, w, _ = feats.shape
    out = jax.eval_shape(head.net.apply, head.params, feats)
    if out.shape[-1] != num_classes:
      raise ValueError(f"F outputs {out.shape[-1]} classes, num_classes is {num_classes}")
    k_buf, k_fill = jax.random.split(key)
    # Copies (jnp.array), never aliases: update donates the state, which must not delete the
    # caller's module variables or the codebook this factory closes over.
    params = jax.tree.map(jnp.array, head.params)
    state = {
        "params": params,
        "opt": tx.init(params),
        "buffer": CODES.init(k_buf, capacity(h, w),
                             jax.ShapeDtypeStruct((h, w, m_sub), jnp.uint8), num_classes),
        "class_seen": jnp.zeros((num_classes,), jnp.int32),
        "codebook": jnp.array(codebook),
        "steps": jnp.zeros((), jnp.int32),
    }
    if base_features is not None and prefill_buffer:
      state = fill_buffer(state, base_features, base_labels)
    return state

  def sgd_step(small, buf, cb, new_codes, y, use, key, matmul_grad):
    params, opt, class_seen = small
    k_sample, k_crop, k_mix = jax.random.split(key, 3)
    if r > 0:
      replay = CODES.sample(buf, k_sample, 2 * r, distinct=True)
      codes = jnp.concatenate([new_codes, replay.x])
    else:
      codes = new_codes
    x = dequantize(cb, codes)  # [b + 2r, H, W, D]
    if random_crop:
      x = feature_aug.random_resized_crop(k_crop, x, tuple(crop_scale), tuple(crop_ratio))
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
    net = head.net_mm if matmul_grad else head.net

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

  def update(state, batch, key):
    feats = features(batch["x"])
    n_rows = feats.shape[0]
    if n_rows % b:
      raise ValueError(f"batch size {n_rows} is not a multiple of new_per_step={b}")
    _, use = contract.masks(batch)
    steps = n_rows // b
    xs = feats.reshape(steps, b, *feats.shape[1:])
    ys = batch["y"].astype(jnp.int32).reshape(steps, b)
    us = use.reshape(steps, b)
    keys = jax.random.split(key, steps)
    cb = state["codebook"]

    unrolled = loop == "unroll" or (loop == "auto" and on_cpu and steps <= max_unrolled_steps)

    def body(st, inp, unrolled):
      x, y, u, k = inp
      new_codes = quantize(cb, x)
      small = (st["params"], st["opt"], st["class_seen"])
      taken = jnp.any(u)
      if unrolled:
        # Masked, not skipped: a cond body would put F's convolutions back under control flow.
        new_small, loss = sgd_step(small, st["buffer"], cb, new_codes, y, u, k, False)
        small = jax.tree.map(lambda a, c: jnp.where(taken, a, c), new_small, small)
        loss = jnp.where(taken, loss, 0.0)
      else:
        # The cond carries only F's variables: the buffer is read inside and updated outside, so
        # a skipped step never copies it.
        small, loss = jax.lax.cond(
            taken,
            lambda s: sgd_step(s, st["buffer"], cb, new_codes, y, u, k, matmul_conv_grad),
            lambda s: (s, jnp.zeros((), jnp.float32)), small)
      buf = CODES.insert(st["buffer"], new_codes, y, u)
      st = dict(st, params=small[0], opt=small[1], class_seen=small[2], buffer=buf,
                steps=st["steps"] + taken.astype(jnp.int32))
      return st, (loss, taken)

    if unrolled:
      losses, taken = [], []
      for i in range(steps):
        state, (loss, tk) = body(state, (xs[i], ys[i], us[i], keys[i]), True)
        losses.append(loss)
        taken.append(tk)
      losses, taken = jnp.stack(losses), jnp.stack(taken)
    else:
      state, (losses, taken) = jax.lax.scan(lambda st, inp: body(st, inp, False), state,
                                            (xs, ys, us, keys))
    passes = jnp.sum(taken).astype(jnp.float32)
    loss = jnp.where(passes > 0, jnp.sum(losses) / jnp.maximum(passes, 1.0), jnp.nan)
    return state, contract.info(passes, loss, buffer_count=state["buffer"].count)

  def predict(state, x):
    feats = features(x)
    recon = dequantize(state["codebook"], quantize(state["codebook"], feats))
    return head.net.apply(state["params"], recon)

  # One SGD step per example whatever the budget: not budgeted.
  return Learner(name="remind", init=init, update=jax.jit(update, donate_argnums=0),
                 end_of_step=contract.identity_end_of_step, predict=jax.jit(predict),
                 hparams=hparams, budgeted=False)


@functools.partial(jax.jit, donate_argnums=0)
def _fill_chunk(state, feats, labels, mask):
  cb = state["codebook"]
  n, h, w, d = feats.shape
  m_sub = cb.shape[0]
  codes = pq.encode(cb, feats.reshape(n * h * w, d), batch_size=None).reshape(n, h, w, m_sub)
  return dict(state, buffer=CODES.insert(state["buffer"], codes, labels, mask))


def fill_buffer(state: dict, features, labels, chunk: int = 512) -> dict:
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
