"""``hpstream``: per-class HPStream projected clusters (Aggarwal, Han, Wang and Yu, VLDB 2004,
"A Framework for Projected Clustering of High Dimensional Data Streams").

One of the stream-clustering buffers ExStream's paper compares against (Hayes, Cahill and Kanan,
ICRA 2019): each class k runs its own HPStream with c = capacity // num_classes clusters. A
cluster is a *fading* cluster structure: per-dimension weighted sums FC1 [d] and squared sums
FC2 [d] and the weight W, all multiplied by 2^(-λ δt) as time passes (λ = 1 / ``half_life``,
time = the class's own example count), plus the time of its last update and the number of points
it absorbed. Each point x of a class, once the class holds c clusters:

1. for every cluster, the l = ``projected_dims`` dimensions with the smallest spread
   sqrt(FC2/W - (FC1/W)^2) of the cluster with x added (faded to now) are its projected
   dimensions (ties to the lower dimension);
2. the Manhattan segmental distance, mean over those l dimensions of |x - FC1/W|, picks the
   closest cluster (first index on ties);
3. x joins it (fade, then add x with weight 1) if that distance is within the limiting radius,
   ``radius_factor`` times the cluster's radius: the root mean square of its spreads over its l
   dimensions (without x); a cluster of one point has, as in CluStream, the segmental distance
   from its centre to the nearest other centre over its dimensions;
4. otherwise x starts a new cluster in the slot of the least recently updated cluster (the
   lowest slot on ties): HPStream deletes that cluster.

The first c points of a class each start a cluster. Not taken over from the paper: its
normalisation of every dimension by the stream's standard deviation (buffers here hold
L2-normalised features, whose dimensions are on one scale already) and the offline macro-
clustering. The paper does not specify a singleton's limiting radius; the CluStream rule above
is this implementation's choice.

``contents``: centres FC1/W, weight = points absorbed (not faded). Memory: 2d + 3 numbers per
cluster. Sequential within a class, parallel across classes
(:func:`~cljax.ops.buffers._per_class.class_sequential_apply`). Items are 1-D [d], float.
Batched inserts take the same decisions as one-at-a-time inserts but, unlike the other
policies, agree with them only up to float32 rounding in the sums: XLA vectorises ``exp2`` (the
fading) and fuses multiply-adds differently in the step's vmapped widths.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, Policy, Sample, clean_labels, sample_contents
from cljax.ops.buffers._per_class import (block_contents, class_sequential_apply, feature_spec,
                                          per_class_capacity)

NAME = "hpstream"


class HPStreamState(NamedTuple):
  """Per-class HPStream clusters: K classes, c per class, d features.

  Attributes:
    fc1: [K, c, d] faded linear sums (as of each cluster's last update); fc2: [K, c, d] faded
      squared sums.
    w: [K, c] float32 faded weights; last: [K, c] float32 time of the last update.
    n: [K, c] float32 points absorbed (0 on empty slots).
    counts: [K] int32 filled slots per class, in [0, c].
    time: [K] int32 examples of each class seen so far (the next arrival time).
    dims: [] int32 projected dimensions l; decay: [] float32 λ = 1 / half_life;
    radius_factor: [] float32.
  """

  fc1: jax.Array
  fc2: jax.Array
  w: jax.Array
  last: jax.Array
  n: jax.Array
  counts: jax.Array
  time: jax.Array
  dims: jax.Array
  decay: jax.Array
  radius_factor: jax.Array


def init(key, capacity: int, example, num_classes: int, *, projected_dims: Optional[int] = None,
         half_life: float = 1000.0, radius_factor: float = 2.0) -> HPStreamState:
  """No clusters yet: K classes of c = capacity // num_classes (>= 2) slots; ``key`` unused.

  ``projected_dims`` l (default d // 2), ``half_life`` in examples of the class (weights halve
  over that many class examples without an update), ``radius_factor`` τ of the limiting radius.
  """
  del key  # deterministic
  c = per_class_capacity(NAME, capacity, num_classes, minimum=2)
  d, dtype = feature_spec(NAME, example, float_only=True)
  l = max(1, d // 2) if projected_dims is None else int(projected_dims)
  if not 1 <= l <= d:
    raise ValueError(f"hpstream: projected_dims must be in [1, {d}], got {projected_dims}")
  if half_life <= 0:
    raise ValueError(f"hpstream: half_life must be > 0, got {half_life}")
  k = num_classes
  z = jnp.zeros((k, c), jnp.float32)
  return HPStreamState(jnp.zeros((k, c, d), dtype), jnp.zeros((k, c, d), dtype), z, z, z,
                       jnp.zeros((k,), jnp.int32), jnp.zeros((k,), jnp.int32), jnp.int32(l),
                       jnp.float32(1.0 / half_life), jnp.float32(radius_factor))


def _spread(fc1, fc2, w):
  """Per-dimension spread sqrt(FC2/W - (FC1/W)^2) [..., d] (0 where W = 0)."""
  ww = jnp.maximum(w, 1e-30)[..., None]
  return jnp.sqrt(jnp.maximum(fc2 / ww - (fc1 / ww) ** 2, 0.0))


def _projected(spread, l):
  """[..., d] bool: the l dimensions of smallest spread (stable: lower dimension on ties)."""
  rank = jnp.argsort(jnp.argsort(spread, axis=-1, stable=True), axis=-1, stable=True)
  return rank < l


def _step(block, x):
  """One example x [d] into one class's clusters (the module docstring's rule)."""
  fc1, fc2, w, last, n, count, now, dims, decay, t_fac = block
  c = w.shape[0]
  x = x.astype(fc1.dtype)
  tf = now.astype(jnp.float32)
  full = count >= c
  fade = jnp.exp2(-decay * (tf - last))  # [c]
  f1 = fc1 * fade[:, None]
  f2 = fc2 * fade[:, None]
  fw = w * fade
  lf = dims.astype(jnp.float32)
  # 1. projected dimensions of each cluster with x added.
  proj = _projected(_spread(f1 + x, f2 + x * x, fw + 1.0), dims)  # [c, d]
  cen = fc1 / jnp.maximum(w, 1e-30)[:, None]
  # 2. Manhattan segmental distance over each cluster's own dimensions.
  seg = jnp.sum(jnp.where(proj, jnp.abs(x[None, :] - cen), 0.0), axis=-1) / lf
  near = jnp.argmin(seg)
  # 3. limiting radius of the closest cluster (without x), over its dimensions.
  spread = _spread(fc1[near], fc2[near], w[near])
  rms = jnp.sqrt(jnp.sum(jnp.where(proj[near], spread ** 2, 0.0)) / lf)
  to_others = jnp.sum(jnp.where(proj[near][None, :], jnp.abs(cen - cen[near][None, :]), 0.0),
                      axis=-1) / lf
  single = jnp.min(jnp.where(jnp.arange(c) == near, jnp.inf, to_others))
  limit = jnp.where(n[near] == 1, single, t_fac * rms)
  absorb = full & (seg[near] <= limit)
  # 4. otherwise x replaces the least recently updated cluster (or takes an empty slot).
  slot = jnp.where(absorb, near, jnp.where(full, jnp.argmin(last), count))

  def put(a, v):
    return a.at[slot].set(v)

  fc1 = put(fc1, jnp.where(absorb, f1[slot] + x, x))
  fc2 = put(fc2, jnp.where(absorb, f2[slot] + x * x, x * x))
  w = put(w, jnp.where(absorb, fw[slot] + 1.0, 1.0))
  n = put(n, jnp.where(absorb, n[slot] + 1.0, 1.0))
  last = put(last, tf)
  return fc1, fc2, w, last, n, jnp.minimum(count + 1, c), now + 1, dims, decay, t_fac


def insert(state: HPStreamState, x: jax.Array, y: jax.Array, mask: jax.Array,
           max_width: int | None = None) -> HPStreamState:
  """Offers the unmasked rows of x [B, d], y [B] in order; ``max_width``: see
  :func:`~cljax.ops.buffers._per_class.class_sequential_apply`."""
  y, mask = clean_labels(y, mask)
  k = state.n.shape[0]
  consts = tuple(jnp.broadcast_to(v, (k,)) for v in state[7:])
  out = class_sequential_apply((*state[:7], *consts), _step, x.astype(state.fc1.dtype), y, mask,
                               max_width)
  return HPStreamState(*out[:7], *state[7:])


def contents(state: HPStreamState) -> Contents:
  """K*c slots (slot k*c + i is cluster i of class k): centre FC1/W, weight = points absorbed."""
  c = state.n.shape[1]
  filled = jnp.arange(c)[None, :] < state.counts[:, None]
  cen = state.fc1 / jnp.maximum(state.w, 1e-30)[..., None]
  return block_contents(cen.astype(state.fc1.dtype), filled, state.n)


def sample(state: HPStreamState, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n cluster centres among the filled slots, with their weights."""
  return sample_contents(contents(state), key, n, distinct)


POLICY = Policy(NAME, init, insert, sample, contents)
