"""Augmentations of feature maps and images: random resized crop, horizontal flip, manifold mixup.

REMIND crops and mixes feature maps (ALGORITHMS.md §2); DietCL's reference crops and flips its
images with torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
(wx-zhang/continual-learning-on-a-diet ``dataset/utils.py`` line 16 for labelled images, scale
(0.08, 1); ``dataset/imagenet.py`` lines 36-43 for the MAE inputs, scale (0.2, 1)), which is
:func:`augment_images`. Maps and images are channels-last, [N, H, W, C] float. Every function is
pure and jittable, with output shapes that depend only on input shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _centre_crop_size(h: int, w: int, ratio: tuple[float, float]) -> tuple[int, int]:
  """torchvision's fallback crop size (static: depends only on the map size)."""
  in_ratio = w / h
  if in_ratio < min(ratio):
    cw = w
    ch = int(round(cw / min(ratio)))
  elif in_ratio > max(ratio):
    ch = h
    cw = int(round(ch * max(ratio)))
  else:
    cw, ch = w, h
  return ch, cw


def crop_params(key: jax.Array,
                h: int,
                w: int,
                scale: tuple[float, float] = (2 / 7, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3),
                tries: int = 10) -> jax.Array:
  """A random crop box as torchvision's ``RandomResizedCrop.get_params`` draws it.

  Up to ``tries`` attempts: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), crop width
  round(sqrt(area * aspect)) and height round(sqrt(area / aspect)) (round half to even, like
  Python's round); the first attempt with 0 < size <= map size wins, its top-left corner uniform.
  If none fits, a centre crop (the whole map when its aspect ratio lies within ``ratio``). All
  attempts are drawn at once so the shape is static.

  Returns:
    [4] int32 (top, left, height, width) in map cells.
  """
  # One draw for everything: each separate random call adds a threefry instance to compile.
  u = jax.random.uniform(key, (2 * tries + 2,))
  area = (scale[0] + (scale[1] - scale[0]) * u[:tries]) * (h * w)
  log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[tries:2 * tries]
  aspect = jnp.exp(log_r)
  cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(ok)
  ch_r, cw_r = ch[first], cw[first]
  # Uniform corner in [0, size - crop]; floor(u * n) < n since u < 1.
  top = jnp.minimum(jnp.floor(u[2 * tries] * (h - ch_r + 1)).astype(jnp.int32), h - ch_r)
  left = jnp.minimum(jnp.floor(u[2 * tries + 1] * (w - cw_r + 1)).astype(jnp.int32), w - cw_r)
  fch, fcw = _centre_crop_size(h, w, ratio)
  fallback = jnp.array([(h - fch) // 2, (w - fcw) // 2, fch, fcw], jnp.int32)
  return jnp.where(jnp.any(ok), jnp.stack([top, left, ch_r, cw_r]), fallback).astype(jnp.int32)


def _interp_matrix(start: jax.Array, size: jax.Array, in_size: int, out_size: int) -> jax.Array:
  """[out_size, in_size] weights resampling cells [start, start + size) to out_size cells.

  Bilinear with PyTorch's ``align_corners=False`` rule: source coordinate
  (o + 0.5) * size / out_size - 0.5, clamped at 0, neighbours clamped to the crop's last cell.
  """
  o = jnp.arange(out_size, dtype=jnp.float32)
  src = jnp.maximum((o + 0.5) * (size.astype(jnp.float32) / out_size) - 0.5, 0.0)
  lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), size - 1)
  hi = jnp.minimum(lo + 1, size - 1)
  frac = src - lo.astype(jnp.float32)
  eye = jnp.arange(in_size)
  w_lo = (eye[None, :] == (start + lo)[:, None]).astype(jnp.float32) * (1.0 - frac)[:, None]
  w_hi = (eye[None, :] == (start + hi)[:, None]).astype(jnp.float32) * frac[:, None]
  return w_lo + w_hi


def resize_crop(x: jax.Array, box: jax.Array) -> jax.Array:
  """Crops box (top, left, height, width) [4] int32 out of x [H, W, C] and resizes it back to
  [H, W, C] bilinearly (PyTorch ``interpolate(mode="bilinear", align_corners=False)``).

  The resampling is two small interpolation matrices (rows, then columns), so the output shape is
  static whatever the box; a box covering the whole map returns x exactly.
  """
  h, w, _ = x.shape
  ry = _interp_matrix(box[0], box[2], h, h)  # [H, H]
  rx = _interp_matrix(box[1], box[3], w, w)  # [W, W]
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,hwc->owc", ry, x.astype(jnp.float32), precision=hp)
  return jnp.einsum("pw,owc->opc", rx, out, precision=hp).astype(x.dtype)


def random_resized_crop(key: jax.Array,
                        x: jax.Array,
                        scale: tuple[float, float] = (2 / 7, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        tries: int = 10) -> jax.Array:
  """An independent random resized crop of every map. x [N, H, W, C] -> [N, H, W, C].

  Defaults are REMIND's: scale (2/7, 1), ratio (3/4, 4/3), 10 tries then centre crop.
  """
  n, h, w, _ = x.shape
  boxes = jax.vmap(lambda k: crop_params(k, h, w, scale, ratio, tries))(jax.random.split(key, n))
  return jax.vmap(resize_crop)(x, boxes)


def mix(xa: jax.Array, xb: jax.Array, lam: jax.Array) -> jax.Array:
  """lam * xa + (1 - lam) * xb; lam = 1 returns xa exactly (for finite xb)."""
  return lam * xa + (1.0 - lam) * xb


def mixup(key: jax.Array, xa: jax.Array, xb: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """Manifold mixup of two equally shaped halves with ONE lam ~ Beta(alpha, alpha) for all rows.

  Returns:
    (mixed, lam): mixed has xa's shape; lam is a float32 scalar. alpha <= 0 gives lam = 1 (no mixing),
    as in the REMIND reference. The loss pairs row i with labels (ya[i], yb[i]) weighted lam, 1 - lam.
  """
  if alpha <= 0:
    lam = jnp.ones((), jnp.float32)
  else:
    # Beta(a, a) = Ga / (Ga + Gb), both gammas from one (vectorised) sampler: jax.random.beta runs
    # two samplers, and each rejection loop is costly to compile. Log space keeps tiny alphas
    # (gammas that underflow to 0) finite.
    log_g = jax.random.loggamma(key, jnp.full((2,), alpha, jnp.float32))
    lam = jnp.exp(log_g[0] - jax.nn.logsumexp(log_g))
  return mix(xa, xb, lam.astype(xa.dtype)), lam


def hflip(key: jax.Array, x: jax.Array, p: float = 0.5) -> jax.Array:
  """Each row of x [N, H, W, C] mirrored left-right with probability p (torchvision
  ``RandomHorizontalFlip``)."""
  flip = jax.random.bernoulli(key, p, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def augment_images(key: jax.Array, x: jax.Array, scale: tuple[float, float] = (0.08, 1.0),
                   flip: bool = True) -> jax.Array:
  """torchvision ``RandomResizedCrop(size, scale)`` back to the input size, then (``flip``) a
  ``RandomHorizontalFlip``, independently per row of x [N, H, W, C] -> [N, H, W, C].

  Ratio (3/4, 4/3), 10 tries then a centre crop, bilinear resampling (the reference's MAE inputs
  use bicubic; on 28-px images the difference is below the crop's own randomness).
  """
  k_crop, k_flip = jax.random.split(key)
  out = random_resized_crop(k_crop, x, scale=scale)
  return hflip(k_flip, out) if flip else out
