"""Data parallelism inside a learner's own training loop.

The runner shards incoming batches over the mesh's ``data`` axis and replicates the learner state
(``cljax/train/mesh.py``). Learners that train at the end of a step (ER, offline, GDumb, EWC, MAS,
DietCL, joint) draw their mini-batches *inside* jit from replicated buffers, so nothing tells XLA
to split that work: every device would compute the whole batch. ``data_rows`` marks a sampled batch
as split by rows over ``data``; XLA then runs each device's rows and all-reduces the gradients (the
parameter-server role is a collective over the mesh).

It reads the mesh the runner installs with ``jax.set_mesh`` at trace time, so learner code stays
mesh-free and single-device use (no mesh, or one device) is unchanged.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P


def data_size() -> int:
  """Devices on the ``data`` axis of the mesh set by ``jax.set_mesh`` (1 when none is set)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names:
    return 1
  return int(mesh.shape["data"])


def data_rows(tree):
  """Constrains every array of ``tree`` [B, ...] to be split over ``data`` along axis 0.

  Arrays whose leading size does not divide the device count (and scalars) are left as they are,
  so any batch size works; use batch sizes that divide the device count to get the split.
  """
  n = data_size()
  if n <= 1:
    return tree

  def constrain(a):
    if getattr(a, "ndim", 0) >= 1 and a.shape[0] % n == 0:
      return jax.lax.with_sharding_constraint(a, P("data"))
    return a

  return jax.tree.map(constrain, tree)
