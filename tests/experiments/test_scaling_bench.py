"""experiments/bench/scaling.py: its state comparison, its input errors, and (slow) the whole
benchmark at the tiny size on 2 fake CPU devices, where every state must equal the 1-device one.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.bench import scaling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(**over):
  """(host_state, trained_paths) of a small state: parameters and optimizer moments, a replay
  buffer (a cljax.ops.buffers policy state, found by its type), a key."""
  from cljax.ops import buffers  # pylint: disable=import-outside-toplevel
  buf = buffers.get("reservoir").init(jax.random.key(0), 3, np.zeros((2,), np.float32), 5)
  buf = buf._replace(**{f: v for f, v in (("x", np.arange(6, dtype=np.float32).reshape(3, 2)),
                                          ("y", np.array([3, 1, 4], np.int32)))
                        if f in buf._fields})
  s = {"params": {"w": np.array([[1.0, 2.0]], np.float32)},
       "opt": {"mu": np.array([0.5], np.float32)},
       "buffer": buf, "key": jax.random.key(5)}
  for path, v in over.items():
    if path.startswith("buffer."):
      s["buffer"] = s["buffer"]._replace(**{path.split(".", 1)[1]: v})
      continue
    node = s
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return scaling.host_state(s), scaling.trained_paths(s)


def test_compare_tolerates_params_but_not_buffers():
  ref, trained = _state()
  assert trained == {"['params']['w']", "['opt']['mu']"}  # by the buffer contract, not by name
  x_path = [k for k in ref if k.startswith("['buffer']") and ref[k].shape == (3, 2)][0]
  y_path = [k for k in ref if k.startswith("['buffer']") and ref[k].dtype == np.int32
            and ref[k].shape == (3,)][0]

  def compare(**over):
    return scaling.compare(ref, _state(**over)[0], trained)

  assert compare() == {"params_max_abs": 0.0, "params_worst_leaf": None,
                       "exact_max_abs": 0.0, "exact_mismatches": []}
  # a gradient-written leaf off by float rounding: measured, not a mismatch
  got = compare(**{"params.w": np.array([[1.0, 2.0 + 3e-5]], np.float32)})
  assert got["exact_mismatches"] == [] and got["params_max_abs"] == pytest.approx(3e-5, rel=1e-2)
  assert got["params_worst_leaf"] == "['params']['w']"
  # one stored row's float pixel off by the same amount: a buffer mismatch, named by its path
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  x[2, 1] += 3e-5
  got = compare(**{f"buffer.{x_path.rsplit('.', 1)[1]}": x})
  assert got["exact_mismatches"] == [x_path] and got["params_max_abs"] == 0.0
  # another label, another key: mismatches too (keys are compared by their key data)
  assert compare(**{f"buffer.{y_path.rsplit('.', 1)[1]}": np.array([3, 1, 5], np.int32)})[
      "exact_mismatches"] == [y_path]
  assert compare(key=jax.random.key(6))["exact_mismatches"] == ["['key']"]


def test_perturb_params_moves_only_trained_leaves():
  s = {"params": {"w": np.ones((2, 3), np.float32)}, "count": np.int32(4),
       "opt": {"mu": np.zeros((3,), np.float32)}}
  out = scaling.perturb_params(s, jax.random.key(0))
  assert np.all(np.abs(np.asarray(out["params"]["w"]) - 1) == np.float32(scaling.ULP))
  assert int(out["count"]) == 4 and np.all(np.asarray(out["opt"]["mu"]) == 0)


def test_bad_devices_is_one_error_line(capsys):
  assert scaling.main(["--size=tiny", "--devices=3"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  assert scaling.main(["--size=tiny", "--learners=er,sgd"]) == 2
  assert "unknown learners ['sgd']" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_on_two_fake_devices_equals_one(tmp_path):
  out = tmp_path / "scaling.json"
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run([sys.executable, "experiments/bench/scaling.py", "--size=tiny",
                      "--devices=1,2", "--learners=er,dietcl", f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=900, check=False)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "not a speed-up measurement" in r.stdout
  res = json.loads(out.read_text())
  rows = {(x["learner"], x["devices"]): x for x in res["rows"]}
  # REMIND's states on several devices are pinned by tests/ops/test_sharding.py (its ResNet
  # programs would double this test's cold time).
  assert set(rows) == {(n, d) for n in ("er", "dietcl") for d in (1, 2)}
  for name in ("er", "dietcl"):
    two = rows[(name, 2)]
    assert two["check_ok"] and two["exact_mismatches"] == [] and two["exact_max_abs"] == 0.0
    assert two["params_max_abs"] <= res["atol"]
    for n in (1, 2):  # every compile happened in the warm-up step
      assert rows[(name, n)]["timed_compiles"] == 0
  # XLA's FLOPs of one compiled step against the analytic matmul count (bench/flops.py):
  # XLA adds the element-wise work (LayerNorm, softmax, GELU, AdamW, augmentation), never less.
  for phase in ("joint", "buffer_only"):
    f = res["dietcl_flops"][phase]
    assert 1.0 <= f["xla_over_analytic"] < 1.6, f
    assert 0 < f["mfu"] < 1
