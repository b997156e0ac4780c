"""Product quantization of feature maps: REMIND's and SIESTA's compressed replay items.

A frozen network G maps an image to a feature map [H, W, D]; every D-vector is quantized with one
``cljax.ops.pq`` codebook [M, C, D / M], so an item is its codes [H, W, M] uint8 (M bytes per
position). These are the map-shaped wrappers of ``pq.encode`` / ``pq.decode`` and the buffer
capacity that a byte budget buys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops import pq


def encode(codebook: jax.Array, feats: jax.Array) -> jax.Array:
  """Codes [N, H, W, M] uint8 of maps [N, H, W, D]: the nearest centroid of each sub-vector."""
  n, h, w, d = feats.shape
  return pq.encode(codebook, feats.reshape(n * h * w, d), batch_size=None).reshape(
      n, h, w, codebook.shape[0])


def decode(codebook: jax.Array, codes: jax.Array) -> jax.Array:
  """Maps [N, H, W, D] float32 decoded from codes [N, H, W, M]."""
  m, _, ds = codebook.shape
  n, h, w, _ = codes.shape
  return pq.decode(codebook, codes.reshape(n * h * w, m)).reshape(n, h, w, m * ds)


def check_maps(feats: jax.Array, codebook_shape: tuple) -> jax.Array:
  """``feats`` as float32 after checking it is [B, H, W, D] with D the codebook's M * D / M."""
  m, _, ds = codebook_shape
  if feats.ndim != 4 or feats.shape[-1] != m * ds:
    raise ValueError(f"features must be [B, H, W, {m * ds}] for a codebook of shape "
                     f"{tuple(codebook_shape)}, got {feats.shape}")
  return feats.astype(jnp.float32)


def capacity_for(buffer_capacity: int, buffer_bytes: int, codebook_shape: tuple, h: int,
                 w: int) -> int:
  """Buffer slots: ``buffer_capacity``, or the items whose [h, w, M] codes fit in
  ``buffer_bytes`` once the float32 codebook is paid for (``pq.capacity_for_bytes``) when > 0."""
  if buffer_bytes <= 0:
    return int(buffer_capacity)
  m, c, ds = codebook_shape
  cap = pq.capacity_for_bytes(int(buffer_bytes), m, c, m * ds, vectors_per_item=h * w)
  if cap < 1:
    raise ValueError(f"buffer_bytes={buffer_bytes} does not even pay for the codebook "
                     f"({pq.memory_bytes(0, m, c, m * ds)['codebook']} B)")
  return cap
