"""One device mesh with a ``data`` axis, from one CPU to many GPUs.

Batches are sharded over ``data`` (when their size divides the device count, else replicated);
learner state is replicated except replay buffers' items, split over ``data`` (``place_state``).
jit follows the input shardings, so learners need no mesh code: XLA inserts the all-reduces that
turn per-shard sums into global ones.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cljax.ops import sharding


def data_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (all by default), axis ``data``."""
  devices = jax.devices()
  n = len(devices) if num_devices in (None, 0) else num_devices
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"a run over {jax.process_count()} processes uses all their "
                     f"{len(devices)} devices; leave num_devices at 0 (asked for {n})")
  if n > len(devices):
    raise ValueError(f"asked for {n} devices but only {len(devices)} exist "
                     f"({devices[0].platform}); on CPU set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts")
  return Mesh(np.asarray(devices[:n]), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, batch: dict, local: tuple = ()) -> dict:
  """Puts each array of the batch on the mesh, split over ``data`` along its leading axis (when
  its size divides the device count, else replicated).

  ``local``: names of arrays that hold only this process's rows of the batch (a multi-process
  run, ``cljax.app.distributed.local_rows``); the global batch size is then ``len(batch["y"])``.
  """
  n = mesh.devices.size
  size = len(batch["y"]) if local else None

  def put(k, a):
    a = np.asarray(a)
    if k in local:
      return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), a,
                                                    (size,) + a.shape[1:])
    spec = P("data") if a.ndim >= 1 and a.shape[0] % n == 0 else P()
    return _put(mesh, a, spec)

  return {k: put(k, v) for k, v in batch.items()}


def replicate(mesh: Mesh, tree):
  return place(mesh, tree)


def place_state(mesh: Mesh, state):
  """A learner state (fresh from ``init`` or restored from a checkpoint written on any device
  count) placed on ``mesh``: replay buffers' item arrays split over ``data`` where their capacity
  allows (``cljax.ops.sharding.state_specs``), everything else replicated."""
  return place(mesh, state, sharding.state_specs(state, mesh.devices.size))


def place(mesh: Mesh, tree, specs=None):
  """Puts a pytree (host arrays or arrays on one device) on ``mesh``, leaf by leaf.

  ``specs``: a pytree of ``PartitionSpec`` with the structure of ``tree`` (None: every leaf
  replicated). When the mesh spans several processes, each process builds its own shards from
  its full copy of ``tree`` (all processes must pass equal values), so no array is ever sent
  between processes. Typed PRNG keys are placed by their key data.
  """
  leaves, treedef = jax.tree.flatten(tree)
  spec_leaves = ([P()] * len(leaves) if specs is None else
                 treedef.flatten_up_to(specs))
  return treedef.unflatten([_put(mesh, a, s) for a, s in zip(leaves, spec_leaves)])


def _put(mesh: Mesh, a, spec):
  where = NamedSharding(mesh, spec)
  if jax.process_count() == 1:
    return jax.device_put(a, where)
  if sharding.is_key(a):
    data = _put(mesh, jax.random.key_data(a), spec)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
  host = np.asarray(a)
  return jax.make_array_from_callback(host.shape, where, lambda index: host[index])
