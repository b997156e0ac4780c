"""Pieces shared by the learners that distil an old network or read features of stored rows
(LwF, iCaRL, L2P's query, CaSSLe's frozen encoder, DualNet, CCIC), or that only store a step's
rows until its end (``store_update``: also EWC and MAS). Private to cljax/learners.

Budget accounting. A pass is one forward-backward of ``batch_size`` rows. A forward pass alone
(a frozen teacher's logits, features for herding or class means, L2P's query) is charged
``FORWARD_COST`` = 1/3 pass per batch of ``batch_size`` rows computed: a backward costs about two
forwards, the same 3x-forward rule BUILD_NOTES.md uses for the model FLOPs of a training step.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax.ops import buffers
from cljax.ops.losses import seen_classes

FORWARD_COST = 1.0 / 3.0


def forward_passes(rows: int, batch_size: int) -> float:
  """Passes charged for a forward over ``rows`` rows in batches of ``batch_size`` (padding of the
  last batch included)."""
  return math.ceil(int(rows) / int(batch_size)) * FORWARD_COST


class RowMap:
  """``fn(params, x [b, ...]) -> [b, ...]`` over the first ``count`` rows of a store.

  ``__call__(params, x [cap, ...], count)`` runs ceil(count / batch_size) jitted calls of
  ``batch_size`` rows (fixed shapes: no recompile as count changes) and returns (outputs
  [cap, ...] with zeros past ``count``, the forward passes charged).
  """

  def __init__(self, fn: Callable, batch_size: int):
    self.fn, self.batch_size = fn, int(batch_size)
    self._chunk = jax.jit(self._chunk_fn)
    self._zeros = jax.jit(self._zeros_fn)

  def _chunk_fn(self, params, x, out, start):
    cap = x.shape[0]
    rows = start + jnp.arange(self.batch_size)
    vals = self.fn(params, x[jnp.minimum(rows, cap - 1)])
    return out.at[jnp.where(rows < cap, rows, cap)].set(vals.astype(out.dtype), mode="drop")

  def _zeros_fn(self, params, x):
    s = jax.eval_shape(self.fn, params, x[:self.batch_size])
    return jnp.zeros((x.shape[0], *s.shape[1:]), s.dtype)

  def __call__(self, params, x, count: int):
    return self.rows(params, x, 0, count)

  def rows(self, params, x, start: int, stop: int):
    """Outputs [cap, ...] of rows [start, stop) only (zeros elsewhere) and the forward passes
    charged for them."""
    out = self._zeros(params, x)
    for s in range(int(start), int(stop), self.batch_size):
      out = self._chunk(params, x, out, jnp.int32(s))
    # rows past ``stop`` computed in the last batch are dropped
    keep = (jnp.arange(x.shape[0]) >= start) & (jnp.arange(x.shape[0]) < stop)
    out = jnp.where(keep.reshape((-1,) + (1,) * (out.ndim - 1)), out, 0)
    return out, forward_passes(max(int(stop) - int(start), 0), self.batch_size)


def draw_rows(key: jax.Array, count: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """n row indices [n] int32 uniform with replacement from [0, count), and their weights [n]
  float32 (all 0 when count is 0), for learners that gather several arrays by the same rows."""
  idx = jax.random.randint(key, (n,), 0, jnp.maximum(count, 1))
  return idx.astype(jnp.int32), jnp.full((n,), count > 0, jnp.float32)


def check_sizes(**sizes) -> None:
  for k, v in sizes.items():
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")


def store_labelled(seen: jax.Array, store, batch: dict) -> tuple:
  """(seen, store) after the batch's labelled rows are appended to ``store`` (an ``append``
  buffer state) and their classes marked in ``seen`` [K] bool (batch: x [B, ...], y [B],
  optional valid / labeled [B])."""
  _, lab = contract.masks(batch)
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  return (seen_classes(seen, y, lab),
          buffers.get("append").insert(store, jnp.asarray(batch["x"], jnp.float32), y, lab))


@jax.jit
def store_update(state, batch: dict, key: jax.Array) -> tuple:
  """``update`` of the learners that train only at the step's end (LwF, iCaRL, EWC, MAS): stores
  the batch's labelled rows (``store_labelled``) in ``state.cur``, their classes in
  ``state.seen``; no training (0 passes). ``state``: a NamedTuple with fields ``seen`` [K] bool
  and ``cur`` (an ``append`` buffer state)."""
  del key
  seen, cur = store_labelled(state.seen, state.cur, batch)
  return state._replace(seen=seen, cur=cur), contract.info()


def train_passes(budget: Optional[int], fixed: float, rows: int, epochs: float,
                 batch_size: int) -> int:
  """SGD steps of a step: what ``budget`` leaves after the ``fixed`` forward passes (floored, >=
  0), or ``epochs`` over ``rows`` when there is no budget."""
  if budget is None:
    return contract.default_passes(epochs, rows, batch_size)
  return max(int(math.floor(budget - fixed + 1e-9)), 0)
