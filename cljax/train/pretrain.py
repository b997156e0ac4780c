"""Training a network before the stream starts: supervised or masked-autoencoder (a building block).

REMIND, Deep SLDA and ExStream start from a network trained on the first classes of the stream
(ImageNet: 100 classes); incremental fine-tuning warm-starts from one; DietCL starts from an
MAE-pretrained ViT. This module holds that training and what learners receive from it:

* ``train_classifier``: supervised training (batch norm in train mode with its running statistics
  kept, sgd/adam/adamw, a step lr schedule, random-crop/flip augmentation
  ``cljax.ops.augment.augment_batch``);
* ``train_mae``: masked-autoencoder pre-training of a ViT on unlabeled images (He et al. 2022);
* ``BaseInit``: a trained network and its base set, which learners receive as inputs (its params
  ``init_params``, its frozen features ``backbone``, or all of it ``base``: REMIND). The
  application layer (``cljax.app.base_init``) builds one from the settings, trains or loads it.

Both trainers run through the one training loop (``cljax.train.loop.Loop``) with the mini-batch
order drawn on the host from ``key`` (shuffled epochs), so a run is reproducible.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cljax import optim
from cljax.models import vit as vit_lib
from cljax.models.pure import Net
from cljax.ops.augment import AUGMENTS, augment_batch
from cljax.ops.losses import cross_entropy
from cljax.progress import Progress
from cljax.train.loop import Loop, apply_updates, classifier_step

KINDS = ("supervised", "mae")


class Model(NamedTuple):
  """A trained network: its ``cljax.models`` name and options, the ``Net`` and its params."""

  name: str
  kwargs: dict
  net: Net
  params: dict


def epoch_order(key: jax.Array, n: int, batch_size: int, steps: int, chunk: int,
                drop_last: bool) -> np.ndarray:
  """Row indices [ceil(steps / chunk) * chunk, batch_size] int32 of ``steps`` mini-batches drawn
  as shuffled epochs over n rows (``drop_last``: an epoch's partial last batch is skipped), padded
  with row 0 to a whole number of chunks (those steps are masked by the loop)."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
  per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
  rows = []
  while len(rows) < steps:
    perm = rng.permutation(n)
    if not drop_last:
      perm = np.resize(perm, per_epoch * batch_size)
    rows.extend(perm[:per_epoch * batch_size].reshape(per_epoch, batch_size))
  rows = np.asarray(rows[:steps], np.int32)
  pad = (-steps) % chunk
  return np.concatenate([rows, np.zeros((pad, batch_size), np.int32)])


def train_classifier(model: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                     key: jax.Array, epochs: float = 5.0, batch_size: int = 64,
                     lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9,
                     weight_decay: float = 0.0, lr_milestones: Sequence[float] = (),
                     lr_factor: float = 0.1, augment: str = "none", crop_padding: int = 4,
                     model_kwargs: Optional[dict] = None, chunk: int = 1,
                     log: Optional[Callable[[str], None]] = None) -> Model:
  """Trains ``model`` on x [N, ...] float32, y [N] int for ``epochs`` shuffled epochs.

  Batch-norm models train with batch statistics and keep the running averages in the returned
  params (a pure dict of the whole model state, what ``save_params`` stores); ``Net.apply`` then
  runs in eval mode. ``optimizer``: ``cljax.optim.OPTIMIZERS``; the lr follows
  ``optim.step_schedule`` (milestones as fractions of all steps); ``augment`` (``AUGMENTS``) is
  applied on device per mini-batch. An epoch's partial last mini-batch is dropped. ``chunk``:
  optimizer steps per jitted call (unrolled; 1 keeps ResNet compiles short on CPU).
  """
  x, y = np.asarray(x), np.asarray(y, np.int32)
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(f"train_classifier: {len(x)} inputs and {len(y)} labels")
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTS)}")
  if augment != "none" and x.ndim != 4:
    raise ValueError(f"augment={augment!r} needs images [N, H, W, C], got shape {x.shape}")
  k_init, k_order, k_steps = jax.random.split(key, 3)
  kw = dict(model_kwargs or {})
  net = Net.named(model, num_classes, **kw)
  params = net.init(k_init, x.shape[1:])
  bs = min(batch_size, len(x))
  total = max(1, math.ceil(epochs * (len(x) // bs)))
  tx = optim.build(optimizer, optim.step_schedule(lr, total, lr_milestones, lr_factor),
                   momentum=momentum, weight_decay=weight_decay)
  order = epoch_order(k_order, len(x), bs, total, chunk, drop_last=True)

  def step(carry, data, key, i, stop):
    del i, stop
    p, opt = carry
    _, (xb, yb) = data
    xb = augment_batch(key, xb, augment, crop_padding)
    w = jnp.ones((xb.shape[0],), jnp.float32)
    p, opt, loss = classifier_step(net, tx, p, opt, xb, w,
                                   lambda _, logits: cross_entropy(logits, yb, w))
    return (p, opt), loss[None]

  def rows(start):
    idx = order[start:start + chunk]
    return x[idx], y[idx]

  prog = Progress(log, "[base_init]", bs) if log else None
  (params, _), _ = Loop(step, chunk=chunk)((params, tx.init(params)), (), k_steps, total,
                                          per_step=rows, progress=prog)
  return Model(model, kw, net, params)


def train_mae(model: str, x: np.ndarray, num_classes: int, *, key: jax.Array,
              epochs: float = 10.0, batch_size: int = 256, lr: float = 1e-3,
              mask_ratio: float = 0.75, model_kwargs: Optional[dict] = None,
              log: Optional[Callable[[str], None]] = None, weight_decay: float = 0.05,
              warmup_fraction: float = 0.05, norm_pix: bool = True, chunk: int = 8) -> Model:
  """MAE pre-training of ViT ``model`` on images x [N, H, W, C] float32 (labels never read).

  Args:
    model: a ``cljax.models`` ViT (``vit_micro``, ``vit_tiny``, ``vit_small``, ``vit_base``).
    num_classes: K of the head built with the model (untrained here; learners train it).
    key: initialization, shuffling order and masks.
    epochs: passes over x (fractions allowed); steps = ceil(epochs · N / batch_size), >= 1.
    batch_size: images per step (capped at N).
    lr: peak learning rate (not scaled by batch size); linear warmup over ``warmup_fraction`` of
      the steps, then cosine decay to 0 (MAE's schedule).
    mask_ratio, norm_pix: MAE masking ratio (0.75) and per-patch normalised pixel targets.
    model_kwargs: options of the model (``patch``, config overrides such as ``depth``).
    log: progress lines (loss, examples/s, ETA), about 20 per run.
    weight_decay: AdamW (betas 0.9, 0.95) decoupled decay on matrices only.
    chunk: optimizer steps per jitted call (a ``lax.scan``; the ViT has no convolutions).

  Returns:
    ``Model`` whose params (the decoder included) fit every learner of the same model as
    ``init_params``.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"train_mae needs images [N, H, W, C] with N >= 1; got shape {x.shape}")
  if model not in tuple(f"vit_{c}" for c in vit_lib.CONFIGS):
    raise ValueError(f"train_mae: model {model!r} has no MAE decoder; valid: "
                     f"{[f'vit_{c}' for c in vit_lib.CONFIGS]}")
  k_init, k_order, k_steps = jax.random.split(key, 3)
  kw = dict(model_kwargs or {})
  net = Net.named(model, num_classes, **kw)
  params = net.init(k_init, x.shape[1:])
  bs = int(min(batch_size, len(x)))
  total = max(1, math.ceil(float(epochs) * len(x) / bs))
  tx = optim.build("adamw", optim.warmup_cosine(lr, total, warmup_fraction), betas=(0.9, 0.95),
                   weight_decay=weight_decay, decay_mask=optim.matrices)
  order = epoch_order(k_order, len(x), bs, total, chunk, drop_last=False)

  def step(carry, data, key, i, stop):
    del i, stop
    p, opt = carry
    images, ids = data
    loss, g = jax.value_and_grad(
        lambda q: net.call(q, images[ids], "mae_loss", key, mask_ratio, norm_pix))(p)
    p, opt = apply_updates(tx, p, opt, g)
    return (p, opt), loss[None]

  prog = Progress(log, f"[mae] {model}", bs) if log else None
  (params, _), _ = Loop(step, chunk=chunk, unroll=False)(
      (params, tx.init(params)), jnp.asarray(x), k_steps, total,
      per_step=lambda start: order[start:start + chunk], progress=prog)
  return Model(model, kw, net, params)


def mae_eval_loss(m: Model, x: np.ndarray, key: jax.Array, mask_ratio: float = 0.75,
                  batch_size: int = 256) -> float:
  """Mean MAE loss of ``m`` on x [N, H, W, C] (fixed masks from ``key``), for checks."""
  f = jax.jit(lambda p, xb, k: m.net.call(p, xb, "mae_loss", k, mask_ratio))
  return float(np.mean([float(f(m.params, jnp.asarray(x[s:s + batch_size]),
                                jax.random.fold_in(key, s)))
                        for s in range(0, len(x), batch_size)]))


def accuracy(m: Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  """Top-1 accuracy of ``m`` on x [N, ...], y [N] (eval mode)."""
  f = jax.jit(m.net.apply)
  pred = np.concatenate([np.asarray(f(m.params, x[s:s + batch_size])).argmax(1)
                         for s in range(0, len(x), batch_size)])
  return float((pred == np.asarray(y)).mean())


class BaseInit(NamedTuple):
  """A base-initialised network and the data it was trained on (what learners receive).

  model: the trained ``Model`` (params include batch statistics).
  x: [N, ...] float32 base-set inputs; y: [N] int32 labels (-1 where unlabeled: mae).
  classes: the base classes (sorted), empty for mae.
  kind: "supervised" or "mae"; path: where the checkpoint lies; test_accuracy: on the test
    examples of the base classes (None for mae).
  """

  model: Model
  x: np.ndarray
  y: np.ndarray
  classes: list
  kind: str
  path: str
  test_accuracy: Optional[float]

  @property
  def net(self) -> Net:
    return self.model.net

  @property
  def params(self) -> dict:
    return self.model.params

  def backbone(self) -> Callable[[jax.Array], jax.Array]:
    """Frozen features: a pure x -> [B, d] function (eval mode, params closed over)."""
    net, params = self.model.net, self.model.params
    return lambda x: net.features(params, x)
