"""Sharded replay buffers on fake CPU devices: per-device bytes and insert+sample time.

Usage (8 fake devices; they share the machine's cores, so times are not a speed-up measure):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=$PWD \
    python experiments/bench/sharded_buffers.py [--capacity 4096] [--reps 20]

Prints (1) the bytes one device holds of a buffer state placed by ``sharding.state_specs`` on
1, 2, 4 and 8 devices (from the arrays' addressable shards), and (2) the median time of one
jitted insert (B rows) + sample (B rows) on 4 devices against 1 device, as ratios from one run,
with the helpers (``cljax.ops.sharding``) and with XLA's own partitioning of the plain code.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cljax.ops import buffers, sharding
from cljax.train import mesh as mesh_lib

# (policy, item) pairs: ER's reservoir of CIFAR-sized float images, REMIND's uint8 PQ codes,
# DietCL's task-balanced memory of images.
CASES = (("reservoir", jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)),
         ("largest_class", jax.ShapeDtypeStruct((7, 7, 32), jnp.uint8)),
         ("task_balanced", jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)))
K = 100


def device_bytes(state) -> int:
  """Bytes of ``state`` held by the first device (its addressable shard of every leaf)."""
  dev = jax.devices()[0]
  return sum(s.data.nbytes for a in jax.tree.leaves(state) for s in a.addressable_shards
             if s.device == dev)


def place(n: int, state):
  return mesh_lib.place(mesh_lib.data_mesh(n), state, sharding.state_specs(state, n))


def timed(f, state, args, reps: int) -> float:
  """Median seconds of ``state, _ = f(state, *args, key)`` (state donated and carried)."""
  times = []
  for i in range(reps):
    t = time.perf_counter()
    state, out = f(state, *args, jax.random.key(1000 + i))
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--capacity", type=int, default=4096)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--reps", type=int, default=20)
  a = ap.parse_args()
  rng = np.random.default_rng(0)
  print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), capacity {a.capacity}, "
        f"batch {a.batch}")
  for name, item in CASES:
    p = buffers.get(name)
    state = p.init(jax.random.key(0), a.capacity, item, K)
    row = ", ".join(
        f"{n}: {device_bytes(place(n, state)) / 2**20:.2f} MiB"
        for n in (1, 2, 4, 8) if n <= jax.device_count())
    print(f"{name:14s} {item.dtype} {item.shape}: per-device bytes by shard count: {row}")

  x = rng.normal(size=(a.batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, K, a.batch).astype(np.int32)
  m = np.ones(a.batch, bool)
  mesh = mesh_lib.data_mesh(4)
  for name, item in CASES:
    p = buffers.get(name)
    xb = (x * 40).astype(np.uint8)[:, :7, :7, :1].repeat(32, -1) if item.dtype == jnp.uint8 else x

    def step(s, bx, by, bm, k):
      s = p.insert(s, bx, by, bm)
      return s, p.sample(s, k, a.batch)

    def prepared(placed):
      # Distinct buffers per leaf (init may share one zero scalar), so the state can be donated.
      state = jax.tree.map(lambda v: jnp.array(v, copy=True),
                           p.init(jax.random.key(0), a.capacity, item, K))
      f = jax.jit(step, donate_argnums=0)
      args = [xb, y, m]
      if placed:
        state = mesh_lib.place(mesh, state, sharding.state_specs(state, 4))
        args = [jax.device_put(v, NamedSharding(mesh, P("data"))) for v in args]
      # Fill the buffer first: the timed steps are steady-state (full buffer: evictions).
      for i in range(a.capacity // a.batch + 1):
        state, _ = f(state, *args, jax.random.key(i))
      return f, state, args

    f1, s1, args1 = prepared(False)
    t1 = timed(f1, s1, args1, a.reps)
    ts = {}
    for label, patch in (("helpers", None), ("xla", lambda arr: 1)):
      saved = sharding.row_shards
      if patch is not None:
        sharding.row_shards = patch  # the plain code: XLA's SPMD partitioner alone
      try:
        with jax.set_mesh(mesh):
          f4, s4, args4 = prepared(True)
          ts[label] = timed(f4, s4, args4, a.reps)
      finally:
        sharding.row_shards = saved
    print(f"{name:14s} insert+sample: 1 device {t1 * 1e3:.2f} ms; 4 devices helpers "
          f"{ts['helpers'] * 1e3:.2f} ms (x{ts['helpers'] / t1:.2f}), XLA alone "
          f"{ts['xla'] * 1e3:.2f} ms (x{ts['xla'] / t1:.2f})")


if __name__ == "__main__":
  main()
