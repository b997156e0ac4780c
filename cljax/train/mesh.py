"""One device mesh with a ``data`` axis, from one CPU to many GPUs.

Batches are sharded over ``data`` (when their size divides the device count, else replicated);
learner state is replicated. jit follows the input shardings, so learners need no mesh code:
XLA inserts the all-reduces that turn per-shard sums into global ones.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (all by default), axis ``data``."""
  devices = jax.devices()
  n = len(devices) if num_devices in (None, 0) else num_devices
  if n > len(devices):
    raise ValueError(f"asked for {n} devices but only {len(devices)} exist "
                     f"({devices[0].platform}); on CPU set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts")
  return Mesh(np.asarray(devices[:n]), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, batch: dict) -> dict:
  """Puts each array of the batch on the mesh, split over ``data`` along its leading axis."""
  n = mesh.devices.size

  def put(a):
    a = np.asarray(a)
    spec = P("data") if a.ndim >= 1 and a.shape[0] % n == 0 else P()
    return jax.device_put(a, NamedSharding(mesh, spec))

  return {k: put(v) for k, v in batch.items()}


def replicate(mesh: Mesh, tree):
  return jax.device_put(tree, replicated(mesh))
