"""Phase training of the MAE-ViT learners (DietCL, the joint bound): DietCL's reference lr
schedule, its regularisation recipe of labelled batches and MAE inputs, and one phase of training
with a fresh optimizer. Private to cljax/learners.

A phase (reference code ``trainer/diet.py``, ``trainer/lr_sched.py``): ``passes`` optimizer steps
of a loss through ``cljax.train.loop.Loop``, an optimizer created for the phase (so its state
never outlives ``end_of_step``), the lr a half cosine from the phase's peak down to a floor, times
per-parameter layer-wise factors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax import optim
from cljax.ops import feature_aug
from cljax.ops import mixup as mixup_lib
from cljax.train.loop import Loop, apply_updates

# The reference's min_lr, 5e-5 at its 1,024-example steps, per 256 examples (lr's unit here).
MIN_LR = 5e-5 * 256 / 1024


def reference_lr(i: jax.Array, stop: jax.Array, peak: jax.Array, min_lr: jax.Array) -> jax.Array:
  """The reference's half-cosine lr at step i of ``stop`` (``trainer/lr_sched.py`` lines 10-23,
  no warmup): ``floor + (peak - floor)·½(1 + cos(π i / stop))`` with ``floor = min_lr``, or
  ``peak / 2`` when the peak is below ``min_lr``."""
  floor = jnp.where(peak < min_lr, peak / 2, min_lr)
  return floor + (peak - floor) * optim.half_cosine(i, stop)


class Recipe(NamedTuple):
  """DietCL's reference regularisation of labelled batches and MAE inputs (``cljax.learners.
  dietcl``'s module docstring).

  mixup_alpha, cutmix_alpha, mixup_prob, switch_prob, smoothing: timm ``Mixup`` (both alphas 0:
  plain one-hot CE, no row dropped). augment: RandomResizedCrop + flip on; crop_scale /
  mae_crop_scale: their area ranges; flip: the horizontal flip (off for digits, whose mirror
  images are other shapes).
  """

  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  mixup_prob: float = 1.0
  switch_prob: float = 0.5
  smoothing: float = 0.1
  augment: bool = True
  crop_scale: tuple = (0.08, 1.0)
  mae_crop_scale: tuple = (0.2, 1.0)
  flip: bool = True

  @property
  def mixing(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  def images(self, key: jax.Array, x: jax.Array, mae: bool = False) -> jax.Array:
    """x [B, H, W, C] cropped and flipped (labelled scale, or the MAE scale)."""
    if not self.augment:
      return x
    if x.ndim != 4:
      raise ValueError(f"augment needs images [B, H, W, C], got shape {x.shape}")
    scale = self.mae_crop_scale if mae else self.crop_scale
    return feature_aug.augment_images(key, x, tuple(scale), self.flip)

  def batch(self, key: jax.Array, x, y, w, classes, rows=None) -> mixup_lib.Mixed:
    """One labelled CE batch, augmented then mixed: soft targets over ``classes`` [K] seen."""
    k_aug, k_mix = jax.random.split(key)
    x = self.images(k_aug, x)
    if not self.mixing:
      keep = w if rows is None else jnp.where(jnp.arange(w.shape[0]) < rows, w, 0.0)
      targets = jax.nn.one_hot(y, classes.shape[0], dtype=jnp.float32)
      one = jnp.ones((), jnp.float32)
      return mixup_lib.Mixed(x, targets, keep, one, jnp.zeros((), bool), jnp.zeros(4, jnp.int32))
    return mixup_lib.mixup_cutmix(k_mix, x, y, w, classes, mixup_alpha=self.mixup_alpha,
                                  cutmix_alpha=self.cutmix_alpha, prob=self.mixup_prob,
                                  switch_prob=self.switch_prob, smoothing=self.smoothing,
                                  rows=rows)


def phase_step(loss_fn, tx, accumulate: int = 1):
  """The ``Loop`` step of a phase: lr ``reference_lr(i, stop, lr_peak, min_lr)`` times the
  per-parameter ``scales``. With ``accumulate`` k (``tx`` built with it) the lr of an optimizer
  step is that of its first micro-batch, i rounded down to a multiple of k, as the reference sets
  it (``trainer/base.py`` lines 223-231: ``adjust_learning_rate`` when ``iteration %
  accumulation == 0``); unlike the reference, a last group of fewer than k micro-batches moves
  nothing (``optax.MultiSteps``).

  ``loss_fn(params, state, key) -> (loss, parts)`` (``state``: the learner's typed state). The
  loop's carry is (params, opt), its data (state, lr_peak, scales, min_lr); metrics are
  [loss, *parts].
  """
  def step(carry, data, key, i, stop):
    params, opt = carry
    state, lr_peak, scales, min_lr = data
    (loss, parts), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, key)
    lr_i = reference_lr(i - i % accumulate, stop, lr_peak, min_lr)
    params, opt = apply_updates(tx, params, opt, g, jax.tree.map(lambda s: lr_i * s, scales))
    return (params, opt), jnp.stack([loss, *parts])

  return step


def run_phase(loop: Loop, opt_init, params, state, key, passes: int, lr_peak: float, scales,
              min_lr: float = 0.0, progress=None, early_stop=None, logits_of=None):
  """One training phase of ``passes`` steps of ``loop`` (built on ``phase_step``) with a fresh
  optimizer (``opt_init``; re-created per stage, as DietCL's reference code), lr from
  ``lr_peak`` down to ``min_lr`` (``reference_lr``). With ``early_stop``
  (``cljax.train.early_stop``), ``logits_of(params, x)`` scores the model on held-out data and
  the phase may stop early, keeping its best parameters. Returns (params, metric sums
  [1 + parts] or None when no pass ran, ``Stopped`` or None)."""
  data = (state, jnp.float32(lr_peak), scales, jnp.float32(min_lr))
  (params, _), sums, stopped = loop.stopping(
      (params, opt_init(params)), data, key, passes, early_stop,
      lambda carry, x: logits_of(carry[0], x), progress=progress)
  return params, sums, stopped
