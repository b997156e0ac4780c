"""Base initialisation: supervised training of a model on a base set, saved with orbax.

REMIND, Deep SLDA and ExStream start from a network trained on the first classes of the stream
(ImageNet: 100 classes); incremental fine-tuning warm-starts from one. ``train_classifier`` does
that training (batch norm in train mode with its running statistics kept, sgd/adam, a step lr
schedule ``lr_schedule``, random-crop/flip augmentation ``augment_batch``); the experiment
(``cljax.train.experiment.base_model``) saves it with ``save_params`` and hands learners the
parameters (``init_params``), a frozen feature extractor (``backbone``) or the whole base model
and base set (``base``, REMIND). ``experiments/pretrain.py`` runs only this part.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from cljax import models
from cljax.learners import _common

AUGMENTS = ("none", "crop", "crop_flip")


def lr_schedule(lr: float, total_steps: int, milestones: Sequence[float] = (),
                factor: float = 0.1) -> optax.Schedule:
  """Step schedule: ``lr``, multiplied by ``factor`` at each milestone.

  Args:
    lr: initial learning rate.
    total_steps: SGD steps of the whole training.
    milestones: fractions of training in (0, 1), increasing (e.g. (0.375, 0.75): REMIND's base
      init, 40 epochs with x0.1 every 15); step round(f * total_steps) is the first at the lower
      rate. Empty: constant.
    factor: multiplier at each milestone.
  """
  ms = [float(m) for m in milestones]
  if any(not 0.0 < m < 1.0 for m in ms) or ms != sorted(ms):
    raise ValueError(f"lr_milestones must be increasing fractions of training in (0, 1), got {ms}")
  bounds: dict = {}
  for m in ms:  # milestones rounding to the same step multiply there
    b = max(1, round(m * total_steps))
    bounds[b] = bounds.get(b, 1.0) * float(factor)
  return optax.piecewise_constant_schedule(float(lr), bounds)


def augment_batch(key: jax.Array, x: jax.Array, augment: str = "crop", padding: int = 4) -> jax.Array:
  """Random crop with zero padding (and, with "crop_flip", a horizontal flip with p = 1/2).

  x: [B, H, W, C] images; returns [B, H, W, C]. Each row gets its own offset in
  [0, 2 * padding]^2 (torchvision ``RandomCrop(size, padding)``). Zero padding is the background
  of [0, 1]-scaled digits; the flip is off for "crop" because mirrored digits are other shapes.
  """
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTS)}")
  if augment == "none":
    return x
  b, h, w, c = x.shape
  k_off, k_flip = jax.random.split(key)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  off = jax.random.randint(k_off, (b, 2), 0, 2 * padding + 1)
  out = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(xp, off)
  if augment == "crop_flip":
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    out = jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
  return out


def train_classifier(model: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                     key: jax.Array, epochs: float = 5.0, batch_size: int = 64,
                     lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9,
                     weight_decay: float = 0.0, lr_milestones: Sequence[float] = (),
                     lr_factor: float = 0.1, augment: str = "none", crop_padding: int = 4,
                     model_kwargs: Optional[dict] = None,
                     log: Optional[Callable[[str], None]] = None) -> _common.PureModel:
  """Trains ``model`` on x [N, ...] float32, y [N] int for ``epochs`` shuffled epochs.

  Batch-norm models (``__call__`` takes ``use_running_average``, e.g. resnet18) train with batch
  statistics and keep the running averages; the returned ``PureModel`` holds them in ``params``
  (a pure dict of the whole model state, what ``save_params`` / ``load_params`` store) and its
  ``apply`` runs in eval mode. ``optimizer`` is one of ``_common.OPTIMIZERS`` (sgd: momentum,
  weight decay added to the gradient, torch-style); the learning rate follows ``lr_schedule``
  (milestones as fractions of all steps); ``augment`` (``AUGMENTS``) is applied on device per
  mini-batch with keys drawn from ``key``, so a run is reproducible. The step is one jitted
  call per mini-batch (a host loop: XLA:CPU convolutions are slow inside while loops, see
  BUILD_NOTES.md); a partial last mini-batch of an epoch is dropped.
  """
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(f"train_classifier: {len(x)} inputs and {len(y)} labels")
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTS)}")
  if augment != "none" and np.ndim(x) != 4:
    raise ValueError(f"augment={augment!r} needs images [N, H, W, C], got shape {np.shape(x)}")
  k_init, k_shuf = jax.random.split(key)
  k_aug = jax.random.fold_in(k_shuf, 1)
  module = models.create(model, x.shape[1:], num_classes, k_init, **(model_kwargs or {}))
  bs = min(batch_size, len(x))
  steps_per_epoch = len(x) // bs
  total = max(1, math.ceil(epochs * steps_per_epoch))
  tx = _common.optimizer(optimizer, lr_schedule(lr, total, lr_milestones, lr_factor),
                         momentum=momentum, weight_decay=weight_decay)
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  train_kw = {"use_running_average": False} if _common.takes_mode(type(module).__call__) else {}

  @jax.jit
  def step(params, rest, opt, xb, yb, k):
    xb = augment_batch(k, xb, augment, crop_padding)

    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      loss = _common.cross_entropy(m(xb, **train_kw), yb, jnp.ones(yb.shape[0]))
      return loss, nnx.state(m, nnx.Not(nnx.Param))  # batch-norm running averages moved

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(grads, opt, params)
    return jax.tree.map(lambda p, u: p + u, params, upd), rest, opt, loss

  opt = tx.init(params)
  rng = np.random.default_rng(int(jax.random.randint(k_shuf, (), 0, 2**31 - 1)))
  t0, done, loss = time.perf_counter(), 0, jnp.zeros(())
  while done < total:
    perm = rng.permutation(len(x))
    for s in range(steps_per_epoch):
      if done >= total:
        break
      idx = perm[s * bs:(s + 1) * bs]
      params, rest, opt, loss = step(params, rest, opt, x[idx], y[idx].astype(np.int32),
                                     jax.random.fold_in(k_aug, done))
      done += 1
    if log:
      el = time.perf_counter() - t0
      log(f"[base_init] {done}/{total} steps | loss {float(loss):.4f} | "
          f"{done * bs / el:,.0f} ex/s | ETA {el / done * (total - done):.0f}s")
  nnx.update(module, params, rest)
  return _common.pure_model_of(module)


def save_params(path: str, params) -> None:
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ck:
    ck.save(path, params)


def load_params(path: str, like) -> dict:
  """Restores parameters saved by ``save_params`` into the structure of ``like``."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no base-init checkpoint at {path}")
  with ocp.StandardCheckpointer() as ck:
    return ck.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def accuracy(pm: _common.PureModel, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  f = jax.jit(pm.apply)
  pred = np.concatenate([np.asarray(f(pm.params, x[s:s + batch_size])).argmax(1)
                         for s in range(0, len(x), batch_size)])
  return float((pred == y).mean())
