"""Sharded replay buffers (cljax/ops/sharding.py helpers, used by the slot policies): on 4 fake
devices, with the item arrays placed by ``sharding.state_specs``, every slot policy keeps and
draws exactly the items of the 1-device run, stays sharded and never gathers its items.

The reference is the same policy run with no mesh (the plain, unsharded code, itself tested
against sequential references in each policy's test file).
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

CHILD = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from sklearn.datasets import load_digits
    from cljax.ops import buffers, sharding
    from cljax.train import mesh as mesh_lib

    POLICIES = ["append", "reservoir", "class_balanced", "greedy", "largest_class",
                "task_balanced", "ranked"]
    K, CAP, B, BIG, N = 10, 40, 8, 48, 8  # BIG > CAP / 4 rows: the ring path of the helpers
    xs, ys = load_digits(return_X_y=True)
    xs = (xs / 16.0).astype(np.float32).reshape(-1, 8, 8)[:200]
    ys = ys.astype(np.int32)[:200]
    cuts = [(s, s + B) for s in range(0, 96, B)] + [(96, 96 + BIG)] + [(144, 152), (152, 160)]
    mesh = mesh_lib.data_mesh(4)

    def collective_rows(txt):
      # (op, shape) of every all-gather / all-reduce / all-to-all result in the compiled HLO.
      out = []
      for m in re.finditer(r"= ([^=]*?) (all-gather|all-reduce|all-to-all)\\(", txt):
        out += [(m.group(2), [int(d) for d in s.split(",") if d])
                for s in re.findall(r"\\w+\\[([\\d,]*)\\]", m.group(1))]
      return out

    def run(name, placed):
      p = buffers.get(name)
      insert = jax.jit(lambda *a: p.insert(*a))
      draw = jax.jit(lambda s, k: (p.sample(s, k, N), p.sample(s, k, N, True)))
      state = p.init(jax.random.key(3), CAP, jax.ShapeDtypeStruct((8, 8), jnp.float32), K)
      if placed:
        state = mesh_lib.place(mesh, state, sharding.state_specs(state, 4))
      states, draws, hlo = [], [], []
      for i, (s, e) in enumerate(cuts):
        x, y, m = xs[s:e], ys[s:e], (ys[s:e] != 7) | (np.arange(e - s) % 3 > 0)
        if placed:  # the runner's layout: a batch split over data
          x, y, m = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y, m))
          if i in (0, len(cuts) - 4):  # the batch insert and the store-copy insert
            hlo.append(insert.lower(state, x, y, m).compile().as_text())
        state = insert(state, x, y, m)
        if placed:
          specs = sharding.state_specs(state, 4)
          assert all(a.sharding.spec == sp for a, sp in zip(state, specs)), (name, state)
        states.append(jax.device_get(state))
        draws.append(jax.device_get(draw(state, jax.random.key(i))))
      if placed:
        hlo.append(draw.lower(state, jax.random.key(0)).compile().as_text())
        assert insert._cache_size() == 2 and draw._cache_size() == 1, name  # two batch shapes
        per = CAP // 4
        rows = [(op, s) for t in hlo for op, s in collective_rows(t)]
        big = [(op, s) for op, s in rows if len(s) >= 2 and s[0] > per]
        assert not big, (name, big)  # no collective moves more than a shard's worth of items
        assert state.x.addressable_shards[0].data.shape == (per, 8, 8)
      return states, draws

    def same(a, b):
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))

    for name in POLICIES:
      ref = run(name, False)
      with jax.set_mesh(mesh):
        got = run(name, True)
      same(ref, got)
      assert int(ref[0][-1].count) > 0
      print(name, "ok")

    # The helpers alone, against numpy, bit for bit in every item dtype (-0.0 and NaN included:
    # the sample's psum runs on the bits).
    rng = np.random.default_rng(0)
    take = jax.jit(sharding.take_rows)
    permute = jax.jit(sharding.permute_rows)
    scatter = jax.jit(sharding.scatter_rows)
    for dt in (np.float32, jnp.bfloat16, np.uint8, np.int32, np.bool_):
      a = (rng.normal(size=(16, 3)) * 50).astype(dt)
      ex = (rng.normal(size=(4, 3)) * 50).astype(dt)
      if dt == np.float32:
        a[0, 0], a[1, 1] = -0.0, np.nan
      idx, perm = np.array([0, 1, 15, 7, 7, 3]), rng.permutation(20)[:16]
      want = a.copy()
      want[[3, 9]] = ex[[0, 2]]
      with jax.set_mesh(mesh):
        placed = jax.device_put(a, NamedSharding(mesh, P("data")))
        got = (take(placed, idx), permute(placed, ex, perm),
               scatter(placed, np.array([3, 16, 9]), ex[:3]))  # slot 16: out of range, dropped
      assert all(g.sharding.spec == P("data") for g in got[1:]), dt
      for g, w in zip(got, (a[idx], np.concatenate([a, ex])[perm], want)):
        assert np.asarray(g).tobytes() == w.tobytes(), dt
    print("OK")
""")


@pytest.mark.slow  # a 4-device child process compiling 7 policies and the helpers (~50-80 s)
def test_sharded_policies_keep_and_draw_the_same_items_as_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
