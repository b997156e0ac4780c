"""Step stores of the semi-supervised learners (DietCL, the joint bound, CaSSLe, CCIC, DualNet):
a batch's rows split into ``append`` stores by label, and uniform draws from a store. Private to
cljax/learners.

Every function takes and returns the typed fields it touches (a ``[K]`` bool class mask, buffer
policy states), never a whole learner state: each learner keeps its own ``State``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax.learners import _distill
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.losses import seen_classes


def labelled_classes(classes: jax.Array, batch: dict) -> jax.Array:
  """``classes`` [K] bool with the classes of the batch's labelled rows marked (batch: y [B],
  optional valid / labeled [B])."""
  _, lab = contract.masks(batch)
  return seen_classes(classes, jnp.where(lab, batch["y"], 0).astype(jnp.int32), lab)


def store_split(seen: jax.Array, lab_store, unl_store, batch: dict) -> tuple:
  """(seen, lab_store, unl_store) after the batch's labelled rows are appended to ``lab_store``
  (their classes marked in ``seen`` [K] bool) and its valid unlabelled rows to ``unl_store``
  (label 0). Both stores: ``append`` buffer states. Batch: x [B, ...], y [B], optional valid /
  labeled [B]."""
  valid, lab = contract.masks(batch)
  seen, lab_store = _distill.store_labelled(seen, lab_store, batch)
  x = jnp.asarray(batch["x"], jnp.float32)
  unl_store = buffers.get("append").insert(unl_store, x, jnp.zeros(lab.shape, jnp.int32),
                                           valid & ~lab)
  return seen, lab_store, unl_store


def store_all(seen: jax.Array, cur, mem, batch: dict) -> tuple:
  """(seen, cur, mem) after every valid row of the batch is appended to the step store ``cur``
  (labels unused: self-supervised learning) and its labelled rows to the memory ``mem``, their
  classes marked in ``seen`` [K] bool. Both stores: ``append`` buffer states."""
  valid, _ = contract.masks(batch)
  seen, mem = _distill.store_labelled(seen, mem, batch)
  x = jnp.asarray(batch["x"], jnp.float32)
  return seen, buffers.get("append").insert(cur, x, jnp.zeros_like(batch["y"]), valid), mem


@jax.jit
def store_all_update(state, batch: dict, key: jax.Array) -> tuple:
  """``update`` of the self-supervised learners that train only at the step's end (CaSSLe,
  DualNet): ``store_all`` into the typed state's ``seen``, ``cur`` and ``mem``; 0 passes."""
  del key
  seen, cur, mem = store_all(state.seen, state.cur, state.mem, batch)
  return state._replace(seen=seen, cur=cur, mem=mem), contract.info()


def sample_rows(policy, store, key: jax.Array, n: int) -> tuple:
  """n rows of ``store`` (a state of buffer ``policy``) drawn uniformly with replacement: x [n,
  ...], y [n], weight [n] (all 0 when empty, so an empty source adds nothing to a loss), split
  over the devices of the run's mesh."""
  s = policy.sample(store, key, n)
  return sharding.data_rows((s.x, s.y, s.weight))
