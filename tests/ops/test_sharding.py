"""data_rows splits a learner's own sampled batches over the mesh (checked in a 4-device child);
state_specs shards the replay buffers of real learner states, and ER, REMIND and DietCL states
placed with it on 4 devices keep exactly the buffers of the 1-device run."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

import cljax.learners
from cljax.models import resnet
from cljax.ops import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_mesh_is_the_identity():
  x = jnp.arange(12.0).reshape(6, 2)
  assert sharding.data_size() == 1
  assert sharding.data_rows(x) is x
  jax.jit(lambda a: sharding.data_rows({"a": a}))(x)  # traces without a mesh


def _shapes(name, batch, **kw):
  """The state of learner ``name`` as ShapeDtypeStructs (nothing computed or compiled)."""
  learner = cljax.learners.get(name, **kw)
  return jax.eval_shape(lambda k: learner.init(k, batch), jax.random.key(0))


def _sharded_paths(specs):
  """Paths ('mem.x') of the leaves given P("data"); every other leaf must be P()."""
  out = set()
  for path, spec in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda s: isinstance(s, P))[0]:
    assert spec in (P(), P("data")), (path, spec)
    if spec == P("data"):
      out.add(".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path))
  return out


def _remind_f():
  """F of a narrow ResNet-18 (layer4.0 on), zero weights: only shapes matter here."""
  graph, abstract = nnx.split(nnx.eval_shape(lambda: resnet.ResNet18(
      6, width=1 / 16, stem="small", in_channels=1, rngs=nnx.Rngs(0))))
  model = nnx.merge(graph, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract))
  return resnet.split_model(model, "layer4.0")[1]


def test_state_specs_shard_exactly_the_buffer_items_of_real_learners():
  x, y = load_digits(return_X_y=True)
  x, y = (x[:24] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1), y[:24].astype(np.int32)
  batch = {"x": x, "y": y}
  states = {
      "er": _shapes("er", batch, num_classes=10, memory_size=64),
      "gdumb": _shapes("gdumb", batch, num_classes=10, memory_size=64),
      "dietcl": _shapes("dietcl", batch, num_classes=10, model="vit_micro", batch_size=24,
                        model_kwargs=dict(depth=1, dim=16, dec_dim=16), max_step_size=400,
                        memory_size=60),
      "remind": _shapes("remind", {"x": np.zeros((6, 2, 2, 32), np.float32), "y": y[:6] % 6},
                        num_classes=6, codebook=jnp.zeros((4, 16, 8)), f_module=_remind_f(),
                        buffer_capacity=24),
      "slda": _shapes("slda", {"x": x.reshape(24, -1), "y": y}, num_classes=10),
  }
  # The buffers each learner's docstring names: ER's reservoir, GDumb's greedy memory, DietCL's
  # two step stores and task-balanced memory, REMIND's code buffer; SLDA has none.
  expected = {"er": {"mem.x"}, "gdumb": {"mem.x"}, "dietcl": {"cur_l.x", "cur_u.x", "mem.x"},
              "remind": {"buffer.x"}, "slda": set()}
  for name, state in states.items():
    specs = sharding.state_specs(state, 4)
    assert jax.tree.structure(specs, is_leaf=lambda s: isinstance(s, P)) == \
        jax.tree.structure(state), name
    assert _sharded_paths(specs) == expected[name], name
    assert _sharded_paths(sharding.state_specs(state, 1)) == set(), name
  # A capacity that does not split evenly stays replicated (DietCL: 60 slots on 8 devices; the
  # 400-row stores split).
  assert _sharded_paths(sharding.state_specs(states["dietcl"], 8)) == {"cur_l.x", "cur_u.x"}


def test_helpers_are_the_plain_expressions_without_a_mesh():
  a = jnp.arange(24.0).reshape(6, 2, 2)
  rows = -jnp.ones((3, 2, 2))
  idx = jnp.array([5, 0, 6])  # 6 is out of range: dropped
  np.testing.assert_array_equal(sharding.scatter_rows(a, idx, rows),
                                a.at[idx].set(rows, mode="drop"))
  pick = jnp.array([4, 4, 1])
  np.testing.assert_array_equal(sharding.take_rows(a, pick), a[pick])
  perm = jnp.array([6, 0, 8, 1, 2, 3])
  np.testing.assert_array_equal(sharding.permute_rows(a, rows, perm),
                                jnp.concatenate([a, rows])[perm])
  assert sharding.row_shards(a) == 1 and sharding.replicate(a) is a and sharding.constrain(a) is a


CHILD = textwrap.dedent("""
    import glob, os
    import jax, jax.numpy as jnp, numpy as np
    from sklearn.datasets import load_digits
    import cljax.learners
    from cljax.ops import sharding
    from cljax.train import mesh as mesh_lib

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)[:, :, None, None].reshape(-1, 8, 8, 1)
    y = y.astype(np.int32)

    def run(mesh):
      er = cljax.learners.get("er", num_classes=10, model="mlp", lr=3e-3, memory_size=100,
                              batch_size=32, max_step_size=200, chunk=2)
      state = er.init(jax.random.key(0), {"x": x[:32], "y": y[:32]})
      batch = {"x": x[:32], "y": y[:32], "valid": np.ones(32, bool), "labeled": np.ones(32, bool)}
      if mesh is not None:
        state, batch = mesh_lib.replicate(mesh, state), mesh_lib.shard_batch(mesh, batch)
      state, _ = er.update(state, batch, jax.random.key(1))
      state, info = er.end_of_step(state, jax.random.key(2), 20)
      return jax.device_get(state.params), float(info.passes)

    p1, n1 = run(None)
    mesh = mesh_lib.data_mesh(4)
    with jax.set_mesh(mesh):
      assert sharding.data_size() == 4
      p4, n4 = run(mesh)
    assert n1 == n4 == 20, (n1, n4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), p1, p4)
    # The end-of-step training chunk (cljax.train.loop.Loop's jitted _run_chunk) compiled under
    # the mesh all-reduces its gradients: each device ran its rows of the sampled batch.
    chunks = [f for f in glob.glob(os.path.join(os.environ["DUMP"], "*_run_chunk*"))
              if f.endswith("after_optimizations.txt")]
    assert chunks, sorted(os.listdir(os.environ["DUMP"]))[:20]
    reduced = ["all-reduce" in open(f).read() for f in chunks]
    assert any(reduced) and not all(reduced), reduced  # the 4-device program splits, the 1 not
    print("OK")
""")


@pytest.mark.slow  # a 4-device child process compiling from scratch (~35 s)
def test_er_training_is_split_over_four_devices_and_matches_one(tmp_path):
  dump = str(tmp_path / "hlo")
  env = dict(os.environ, DUMP=dump, XLA_FLAGS=(
      f"--xla_force_host_platform_device_count=4 --xla_dump_to={dump} --xla_dump_hlo_as_text "
      "--xla_dump_hlo_module_re=.*run_chunk.*"))
  env.pop("CLJAX_JAX_CACHE", None)  # a cache hit would skip the compile, and so the HLO dump
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]



LEARNER_CHILD = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from sklearn.datasets import load_digits
    import cljax.learners
    from cljax.ops import sharding
    from cljax.train import mesh as mesh_lib

    NAME = sys.argv[1]
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1), y.astype(np.int32)
    x16 = np.kron(x[..., 0], np.ones((2, 2), np.float32))[..., None]  # 16x16 digits

    def batches(xs, ys, size, count, start=0):
      return [{"x": xs[start + size * i:start + size * (i + 1)],
               "y": ys[start + size * i:start + size * (i + 1)]} for i in range(count)]

    def er():  # two steps of 3 batches: the 40-slot reservoir overflows (96 offered)
      lrn = cljax.learners.get("er", num_classes=10, model="mlp", lr=3e-3, memory_size=40,
                               batch_size=16, chunk=2)
      return lrn, [batches(x, y, 16, 3), batches(x, y, 16, 3, 48)], 6, ("mem",), 2e-4

    def remind():  # REMIND on G's maps of 16x16 digits: uint8 codes, distinct replay draws
      from flax import nnx
      from cljax.models import resnet
      from cljax.models.pure import Net
      key = jax.random.key(0, impl="rbg")
      make = lambda k: resnet.ResNet18(6, width=1 / 16, stem="small", in_channels=1,
                                       rngs=nnx.Rngs(k))
      graph, _ = nnx.split(nnx.eval_shape(lambda: make(key)))
      g, f = resnet.split_model(nnx.merge(graph, jax.jit(lambda k: nnx.state(make(k)))(key)),
                                "layer4.0")
      g_net = Net.of(g)
      feats = np.asarray(jax.jit(lambda v: g_net.apply(g_net.fixed_params, v))(x16[:48]))
      sub = feats.reshape(-1, 4, 8).transpose(1, 0, 2)
      pick = np.random.default_rng(0).choice(sub.shape[1], 16, replace=False)
      lrn = cljax.learners.get("remind", num_classes=6, codebook=jnp.asarray(sub[:, pick]),
                               f_module=f, buffer_capacity=24, replay_size=4, loop="scan")
      return lrn, [batches(feats, y[:48] % 6, 8, 6)], None, ("buffer",), 2e-4

    def dietcl():  # two tasks; prepare copies the 96-row step store into the 40-slot memory
      lrn = cljax.learners.get(
          "dietcl", num_classes=10, model="vit_micro", batch_size=24, lr=5e-3,
          model_kwargs=dict(depth=1, dim=16, dec_dim=16), max_step_size=96, memory_size=40,
          w_r=1.0, layer_decay=1.0, chunk=2, flip=False)
      rgb = x16.repeat(3, -1)
      rng = np.random.default_rng(0)
      steps = []
      for cls in ([0, 1, 2], [3, 4, 5]):
        idx = np.flatnonzero(np.isin(y, cls))[:72]
        steps.append([b | {"labeled": rng.random(24) < 0.5}
                      for b in batches(rgb[idx], y[idx], 24, 3)])
      return lrn, steps, 4, ("cur_l", "cur_u", "mem"), 1e-3

    learner, steps, budget, stores, tol = {"er": er, "remind": remind, "dietcl": dietcl}[NAME]()

    def run(mesh, nudge=False):
      state = learner.init(jax.random.key(0), steps[0][0])
      if nudge:  # every parameter 1 ulp away: the run's own rounding-noise floor
        state = state._replace(params=jax.tree.map(
            lambda a: jnp.nextafter(a, jnp.inf) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            state.params))
      if mesh is not None:
        state = mesh_lib.place(mesh, state, sharding.state_specs(state, 4))
      for t, step in enumerate(steps):
        for i, batch in enumerate(step):
          if mesh is not None:
            batch = mesh_lib.shard_batch(mesh, batch)
          state, _ = learner.update(state, batch, jax.random.key(10 * t + i))
        state, _ = learner.end_of_step(state, jax.random.key(100 + t), budget)
        if mesh is not None:  # still placed as state_specs says: nothing recompiles
          specs = jax.tree.leaves(sharding.state_specs(state, 4))
          assert [a.sharding.spec for a in jax.tree.leaves(state)] == specs
          for k in stores:
            cap = getattr(state, k).x.shape[0]
            assert getattr(state, k).x.addressable_shards[0].data.shape[0] == cap // 4, k
      return jax.device_get(state)

    one = run(None)
    mesh = mesh_lib.data_mesh(4)
    with jax.set_mesh(mesh):
      four = run(mesh)
    memory = getattr(one, stores[-1])
    assert 0 < int(memory.count) < int(memory.seen)  # it overflowed: evictions were decided
    for k in stores:  # the same items kept, bit for bit
      for u, v in zip(getattr(one, k), getattr(four, k)):
        np.testing.assert_array_equal(u, v)
    # Parameters: gradients are summed in another order on 4 devices, and Adam turns rounding
    # differences of near-zero gradients into lr-sized steps, so the bound is the larger of
    # `tol` and 10x the divergence of a 1-device run started 1 ulp away (measured here).
    floor = run(None, nudge=True)
    def close(a, b, c):
      a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
      np.testing.assert_allclose(a, b, rtol=tol, atol=max(tol / 10, 10 * np.abs(a - c).max()))
    jax.tree.map(close, one.params, four.params, floor.params)
    print("OK")
""")


# ~25 s (er), ~20 s (remind), ~65 s (dietcl): a 4-device child process each.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["er", "remind", "dietcl"])
def test_learner_state_placed_by_state_specs_on_four_devices_keeps_the_one_device_buffers(name):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", LEARNER_CHILD, name], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
