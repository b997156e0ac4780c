"""data_rows splits a learner's own sampled batches over the mesh (checked in a 4-device child)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_mesh_is_the_identity():
  x = jnp.arange(12.0).reshape(6, 2)
  assert sharding.data_size() == 1
  assert sharding.data_rows(x) is x
  jax.jit(lambda a: sharding.data_rows({"a": a}))(x)  # traces without a mesh


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
      return jax.device_get(state["params"]), float(info.passes)

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
