"""Image augmentation kernels (pure, jittable): random crops with zero padding, flips."""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTS = ("none", "crop", "crop_flip")


def augment_batch(key: jax.Array, x: jax.Array, augment: str = "crop",
                  padding: int = 4) -> jax.Array:
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
