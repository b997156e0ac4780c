"""Mixup / CutMix with label smoothing, as timm's ``Mixup`` applies it per batch (DietCL's recipe).

DietCL's reference code (wx-zhang/continual-learning-on-a-diet ``trainer/base.py`` lines 58-71
and 128-163, ``config/base.yaml`` lines 41-48) passes every labelled cross-entropy batch, current
and buffer, through ``timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
switch_prob=0.5, mode="batch", label_smoothing=0.1, num_classes=<classes seen>)`` and trains on
the soft targets with a soft-target cross-entropy. timm's rule (``timm/data/mixup.py``:
``_params_per_batch``, ``_mix_batch``, ``rand_bbox``, ``cutmix_bbox_and_lam``,
``mixup_target``), which this module follows:

* with probability ``prob`` the batch is mixed: CutMix with probability ``switch_prob`` (λ ~
  Beta(cutmix_alpha, cutmix_alpha)), else Mixup (λ ~ Beta(mixup_alpha, mixup_alpha)); one λ for
  the whole batch, the partner of row i is row n-1-i (``x.flip(0)``);
* Mixup: ``x ← λ x + (1-λ) flip(x)``;
* CutMix: a box of ``int(H·sqrt(1-λ))`` by ``int(W·sqrt(1-λ))`` cells centred on a uniform cell
  ``(cy, cx)``, corners ``clip(c ∓ cut // 2, 0, size)``, is copied from the partner, and λ is
  corrected to ``1 - box area / (H·W)`` (``correct_lam=True``);
* targets ``λ·s(y) + (1-λ)·s(flip(y))`` with the smoothed one-hot ``s`` (off value
  ``smoothing / C``, on value ``1 - smoothing + smoothing / C`` over the C classes seen);
* timm refuses odd batches; the reference drops the last row of an odd batch
  (``trainer/base.py`` lines 136-138): here that row keeps its place and gets weight 0.

Images are channels-last, x [B, H, W, C]. Classes are a fixed K with a boolean ``classes`` [K]
mask of the C classes seen: targets are 0 outside it (the reference's head only has those C
outputs). Everything is jittable with static shapes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from cljax.ops.losses import mask_logits


class Mixed(NamedTuple):
  """A mixed batch: x [B, H, W, C], targets [B, K] (rows sum to 1 over the classes), weight [B]
  (the input weight, 0 on the dropped last row of an odd batch), lam [] (after the CutMix
  correction), cutmix [] bool, box [4] int32 (top, bottom, left, right; empty for Mixup)."""

  x: jax.Array
  targets: jax.Array
  weight: jax.Array
  lam: jax.Array
  cutmix: jax.Array
  box: jax.Array


def smooth_one_hot(y: jax.Array, classes: jax.Array, smoothing: float) -> jax.Array:
  """[B, K] timm ``one_hot(y, C, on_value=1 - s + s/C, off_value=s/C)`` over the C classes of
  ``classes`` [K] bool; 0 on the other columns. y [B] int."""
  k = classes.shape[0]
  c = jnp.maximum(jnp.sum(classes), 1).astype(jnp.float32)
  off = smoothing / c
  hot = jax.nn.one_hot(y, k, dtype=jnp.float32)
  return jnp.where(classes[None, :], off + (1.0 - smoothing) * hot, 0.0)


def beta(key: jax.Array, alpha: float) -> jax.Array:
  """[] float32 λ ~ Beta(alpha, alpha) from two log-gammas (finite for small alpha)."""
  log_g = jax.random.loggamma(key, jnp.full((2,), alpha, jnp.float32))
  return jnp.exp(log_g[0] - jax.nn.logsumexp(log_g))


def cutmix_box(key: jax.Array, h: int, w: int, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
  """timm ``rand_bbox`` + ``cutmix_bbox_and_lam`` (margin 0, correct_lam): (box [4] int32 =
  (top, bottom, left, right), corrected λ [] float32)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(h * ratio).astype(jnp.int32)  # int() of a non-negative float
  cut_w = jnp.floor(w * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, h)
  cx = jax.random.randint(kx, (), 0, w)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
  return jnp.stack([yl, yh, xl, xh]).astype(jnp.int32), 1.0 - area / float(h * w)


def mixup_cutmix(key: jax.Array, x: jax.Array, y: jax.Array, weight: jax.Array,
                 classes: jax.Array, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1,
                 rows=None) -> Mixed:
  """timm's batch-mode Mixup/CutMix of x [B, H, W, C], labels y [B] (module docstring).

  ``weight`` [B] is passed through (0 on the last row when the batch is odd); ``classes`` [K]
  bool are the classes seen, over which the labels are smoothed. ``rows`` (optional, [] int, may
  be traced): only the first ``rows`` rows form the batch (they are mixed among themselves);
  the others get weight 0 and stay as they are. Default: all B.
  """
  x, y, weight = jnp.asarray(x), jnp.asarray(y), jnp.asarray(weight, jnp.float32)
  b, h, w = x.shape[0], x.shape[1], x.shape[2]
  rows = b if rows is None else rows
  n = rows - rows % 2  # rows that take part; an odd batch's last row is dropped (weight 0)
  pos = jnp.arange(b)
  partner = jnp.where(pos < n, n - 1 - pos, pos)
  weight = jnp.where(pos < n, weight, 0.0)
  k_on, k_sw, k_mix, k_cut, k_box = jax.random.split(key, 5)
  on = jax.random.uniform(k_on) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cut = jax.random.uniform(k_sw) < switch_prob
  else:
    use_cut = jnp.asarray(cutmix_alpha > 0)
  lam_mix = beta(k_mix, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
  lam_cut = beta(k_cut, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)
  use_cut = on & use_cut
  lam = jnp.where(on, jnp.where(use_cut, lam_cut, lam_mix), 1.0)
  box, lam_box = cutmix_box(k_box, h, w, lam)
  lam = jnp.where(use_cut, lam_box, lam)
  box = jnp.where(use_cut, box, jnp.zeros((4,), jnp.int32))
  xp = x[partner]
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])  # [H, W]
  cut = jnp.where(inside[None, :, :, None], xp, x)
  mixed = lam.astype(x.dtype) * x + (1.0 - lam).astype(x.dtype) * xp
  x_out = jnp.where(use_cut, cut, mixed)
  t = smooth_one_hot(y, classes, smoothing)
  targets = lam * t + (1.0 - lam) * t[partner]
  return Mixed(x_out, targets, weight, lam, use_cut, box)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, weight: jax.Array,
                       allowed: jax.Array, target_mask: Optional[jax.Array] = None) -> jax.Array:
  """Weighted mean of ``-Σ_c m_c t_c log softmax(z)_c`` (the reference's
  ``SoftTargetCrossEntropy``, ``trainer/base.py`` lines 19-39).

  The softmax runs over the classes of ``allowed`` [K] bool only, and target columns outside it
  are dropped (the reference slices logits and targets together, ``logits[:, -new:]``,
  ``targets[:, -new:]``); ``target_mask`` [K] bool (default: all) drops further target columns
  while keeping their logits in the softmax (the reference's mask on time-ordered streams,
  ``trainer/base.py`` lines 152-159). logits [B, K], targets [B, K], weight [B]; float32.
  """
  logp = jax.nn.log_softmax(mask_logits(logits.astype(jnp.float32), allowed))
  m = allowed if target_mask is None else allowed & target_mask
  per_row = -jnp.sum(jnp.where(m[None, :], targets * logp, 0.0), axis=1)
  return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)
