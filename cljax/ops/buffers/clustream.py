"""``clustream``: per-class CluStream micro-clusters (Aggarwal, Han, Wang and Yu, VLDB 2003).

One of the stream-clustering buffers ExStream's paper compares against (Hayes, Cahill and Kanan,
ICRA 2019): each class k runs its own CluStream with c = capacity // num_classes micro-clusters.
A micro-cluster keeps the linear sum LS [d], the per-dimension squared sum SS [d] and the count N
of its points, and the sum and squared sum of their arrival times (LST, SST; time = the class's
own example count, from 0). The online rule, as MOA's implementation writes it (Waikato/moa
``moa/clusterers/clustream/Clustream.java``, ``trainOnInstanceImpl``, and
``ClustreamKernel.java``):

1. the first c examples of a class each open a micro-cluster (MOA buffers them as its initial
   kernels);
2. afterwards, the closest micro-cluster (Euclidean distance to its centre LS/N, first index on
   ties) absorbs x if the distance is below its radius: ``t`` (``radius_factor``, MOA's default
   2) times its deviation, the mean over dimensions of sqrt(SS/N - (LS/N)^2); a micro-cluster of
   one point has as radius the distance from its centre to the nearest other centre;
3. otherwise x opens a new micro-cluster: in the slot of the first micro-cluster whose relevance
   stamp is older than ``now - horizon`` (MOA's default horizon 1000), else the two closest
   micro-clusters (i < j, first minimum in row-major order) merge into slot i and x takes slot j.
   The relevance stamp is the mean arrival time, or for N >= 2m (m = c, as MOA sets it)
   ``mean + std * sqrt(2) * erfinv(2 * m / (2N) - 1)``, the time of the m/(2N) quantile.

Differences from MOA, both deliberate: a micro-cluster made of an initial point keeps that
point's own arrival time (MOA stamps all initial kernels with the time of the (c+1)-th point),
and erfinv is exact (MOA uses a 7-term series). Timestamps are float32: exact up to 2^24 examples
of a class, and SST loses digits long before that, so the std of arrival times is coarse past
~10^5 examples of one class (only the forgetting step reads it).

``contents``: centres LS/N with weight N. Memory: 2d + 3 numbers per micro-cluster against d + 1
for ExStream's centroids. Sequential within a class, parallel across classes
(:func:`~cljax.ops.buffers._per_class.class_sequential_apply`). Items are 1-D [d], float.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, Policy, Sample, clean_labels, sample_contents
from cljax.ops.buffers._per_class import (block_contents, class_sequential_apply, feature_spec,
                                          per_class_capacity)

NAME = "clustream"


class CluStreamState(NamedTuple):
  """Per-class CluStream micro-clusters: K classes, c per class, d features.

  Attributes:
    ls: [K, c, d] linear sums of the points of each micro-cluster.
    ss: [K, c, d] per-dimension squared sums.
    n: [K, c] float32 points per micro-cluster (0 on empty slots).
    lst: [K, c] float32 sums of the points' arrival times; sst: [K, c] their squares.
    counts: [K] int32 filled slots per class, in [0, c].
    time: [K] int32 examples of each class seen so far (the next arrival time).
    radius_factor: [] float32 MOA's ``t``; horizon: [] float32 MOA's ``h`` (in class examples).
  """

  ls: jax.Array
  ss: jax.Array
  n: jax.Array
  lst: jax.Array
  sst: jax.Array
  counts: jax.Array
  time: jax.Array
  radius_factor: jax.Array
  horizon: jax.Array


def init(key, capacity: int, example, num_classes: int, *, radius_factor: float = 2.0,
         horizon: float = 1000.0) -> CluStreamState:
  """Empty micro-clusters: K classes of c = capacity // num_classes (>= 2) slots; ``key`` unused.

  ``radius_factor`` (MOA's t, default 2) scales the absorbing radius; ``horizon`` (MOA's h,
  default 1000 examples of the class) is how old a micro-cluster's relevance stamp may get
  before a new point replaces it instead of a merge.
  """
  del key  # deterministic
  c = per_class_capacity(NAME, capacity, num_classes, minimum=2)
  d, dtype = feature_spec(NAME, example, float_only=True)
  k = num_classes
  z = jnp.zeros((k, c), jnp.float32)
  return CluStreamState(jnp.zeros((k, c, d), dtype), jnp.zeros((k, c, d), dtype), z, z, z,
                        jnp.zeros((k,), jnp.int32), jnp.zeros((k,), jnp.int32),
                        jnp.float32(radius_factor), jnp.float32(horizon))


def _centres(ls, n):
  return ls / jnp.maximum(n, 1.0)[:, None]


def _dist(a, b):
  return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))


def relevance_stamp(lst: jax.Array, sst: jax.Array, n: jax.Array, m: int) -> jax.Array:
  """[c] CluStream relevance stamps: the mean arrival time, or for n >= 2m the time of the
  m / (2n) quantile of normally distributed arrival times (``ClustreamKernel.getRelevanceStamp``)."""
  nn = jnp.maximum(n, 1.0)
  mu = lst / nn
  sigma = jnp.sqrt(jnp.maximum(sst / nn - mu * mu, 0.0))
  z = m / (2.0 * nn)
  quantile = jnp.sqrt(2.0) * jax.scipy.special.erfinv(jnp.clip(2.0 * z - 1.0, -1.0, 1.0))
  return jnp.where(n < 2 * m, mu, mu + sigma * quantile)


def _step(block, row):
  """One example into one class's micro-clusters (the module docstring's rule); ``row`` [2d] is
  x and x * x side by side."""
  ls, ss, n, lst, sst, count, now, t_fac, horizon = block
  c, d = n.shape[0], ls.shape[-1]
  x, sq = row[:d], row[d:]
  tf = now.astype(jnp.float32)
  # An integer square (no float product for LLVM to fuse into sst + ...), exact while it fits.
  tf2 = jnp.where(now < 46341, jnp.square(now).astype(jnp.float32), tf * tf)
  full = count >= c
  cen = _centres(ls, n)
  d_x = _dist(cen, x[None, :])
  near = jnp.argmin(d_x)
  pair = _dist(cen[:, None, :], cen[None, :, :])  # [c, c]
  others = jnp.where(jnp.arange(c) == near, jnp.inf, pair[near])
  var = jnp.maximum(ss[near] / jnp.maximum(n[near], 1.0) - cen[near] ** 2, 0.0)
  radius = jnp.where(n[near] == 1, jnp.min(others), t_fac * jnp.mean(jnp.sqrt(var)))
  absorb = full & (d_x[near] < radius)
  stamp = relevance_stamp(lst, sst, n, c)
  old = stamp < tf - horizon
  forget = full & ~absorb & jnp.any(old)
  victim = jnp.argmax(old)
  merge = full & ~absorb & ~jnp.any(old)
  upper = jnp.triu(jnp.ones((c, c), bool), k=1)
  flat = jnp.argmin(jnp.where(upper, pair, jnp.inf).reshape(-1))
  i, j = flat // c, flat % c

  def put(a, slot, v, do):
    return jnp.where(do, a.at[slot].set(v), a)

  one = jnp.ones((), jnp.float32)
  # Absorb: add x to the nearest micro-cluster.
  ls = put(ls, near, ls[near] + x, absorb)
  ss = put(ss, near, ss[near] + sq, absorb)
  n = put(n, near, n[near] + one, absorb)
  lst = put(lst, near, lst[near] + tf, absorb)
  sst = put(sst, near, sst[near] + tf2, absorb)
  # Merge j into i (before j is overwritten by the new point).
  ls = put(ls, i, ls[i] + ls[j], merge)
  ss = put(ss, i, ss[i] + ss[j], merge)
  n = put(n, i, n[i] + n[j], merge)
  lst = put(lst, i, lst[i] + lst[j], merge)
  sst = put(sst, i, sst[i] + sst[j], merge)
  # A new micro-cluster of x: slot `count` (not full), the forgotten one, or j after a merge.
  slot = jnp.where(full, jnp.where(forget, victim, j), count)
  new = ~absorb
  ls = put(ls, slot, x, new)
  ss = put(ss, slot, sq, new)
  n = put(n, slot, one, new)
  lst = put(lst, slot, tf, new)
  sst = put(sst, slot, tf2, new)
  return (ls, ss, n, lst, sst, jnp.minimum(count + 1, c), now + 1, t_fac, horizon)


def insert(state: CluStreamState, x: jax.Array, y: jax.Array, mask: jax.Array,
           max_width: int | None = None) -> CluStreamState:
  """Offers the unmasked rows of x [B, d], y [B] in order; ``max_width``: see
  :func:`~cljax.ops.buffers._per_class.class_sequential_apply`."""
  y, mask = clean_labels(y, mask)
  k = state.n.shape[0]
  consts = (jnp.broadcast_to(state.radius_factor, (k,)), jnp.broadcast_to(state.horizon, (k,)))
  blocks = (*state[:7], *consts)
  # x * x is computed here, outside the per-class loop: inside it LLVM contracts ss + x * x into
  # a fused multiply-add in some vmapped widths and not in others, and the state would then
  # depend (by a rounding) on how the stream is cut into batches.
  x = x.astype(state.ls.dtype)
  rows = jnp.concatenate([x, x * x], axis=-1)
  out = class_sequential_apply(blocks, _step, rows, y, mask, max_width)
  return CluStreamState(*out[:7], state.radius_factor, state.horizon)


def contents(state: CluStreamState) -> Contents:
  """K*c slots (slot k*c + i is micro-cluster i of class k): centre LS/N, weight N."""
  c = state.n.shape[1]
  filled = jnp.arange(c)[None, :] < state.counts[:, None]
  cen = state.ls / jnp.maximum(state.n, 1.0)[..., None]
  return block_contents(cen.astype(state.ls.dtype), filled, state.n)


def sample(state: CluStreamState, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n micro-cluster centres among the filled slots, with their weights."""
  return sample_contents(contents(state), key, n, distinct)


POLICY = Policy(NAME, init, insert, sample, contents)
