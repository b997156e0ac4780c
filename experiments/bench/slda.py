r"""Benchmark of the Deep SLDA statistics kernels (cljax/ops/slda.py) on this machine.

    .venv/bin/python experiments/bench/slda.py --out=/tmp/slda_bench.json
    .venv/bin/python experiments/bench/slda.py --dim=64 --classes=50 --examples=5000 --out=small.json

Measures, on synthetic Gaussian features [N, d] with K classes in random order:

* the batched update (``learner.update`` of ``slda``, i.e. ``update_batch`` under jit, with and
  without ``donate=True``), over the whole stream;
* the per-example ``lax.scan`` form and a per-example NumPy loop written like the reference
  (Avalanche ``StreamingLDA.fit``, float32). These are slow, so they run on a prefix of the stream
  (``--slow_examples``) and their examples/s are extrapolated; the JSON says so;
* the head refresh (Cholesky and K-column solve) and prediction throughput (cached head);
* a plain ``jnp`` matmul with the same FLOPs as one batched update, timed the same way (one jitted
  call per batch), and the ratio update time / matmul time.

Compilation is excluded (one warm-up call first); every timing ends with ``block_until_ready``
and is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import cljax.learners
from cljax.ops import slda as ops

_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension d.")
_CLASSES = flags.DEFINE_integer("classes", 1000, "Number of classes K.")
_EXAMPLES = flags.DEFINE_integer("examples", 100_000, "Stream length N.")
_BATCH = flags.DEFINE_integer("batch", 256, "Batch size B.")
_SLOW = flags.DEFINE_integer("slow_examples", 4096,
                             "Examples timed for the per-example forms (then extrapolated).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions; the median is reported.")
_RULE = flags.DEFINE_enum("rule", "reference", list(ops.RULES), "Update rule.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _numpy_reference(x, y, k):
  """The reference per-example loop (Avalanche StreamingLDA.fit), float32 NumPy, Σ stored."""
  d = x.shape[1]
  mu = np.zeros((k, d), np.float32)
  c = np.zeros(k, np.float32)
  sigma = np.zeros((d, d), np.float32)
  n = 0
  for xi, yi in zip(x, y):
    z = xi - mu[yi]
    sigma = (n * sigma + (n / (n + 1)) * np.outer(z, z)) / (n + 1)
    mu[yi] += z / (c[yi] + 1)
    c[yi] += 1
    n += 1
  return sigma


def main(argv):
  del argv
  d, k, n, b, reps = _DIM.value, _CLASSES.value, _EXAMPLES.value, _BATCH.value, _REPEATS.value
  nb = n // b
  n = nb * b
  slow = max(b, (min(_SLOW.value, n) // b) * b)
  rng = np.random.default_rng(0)
  y = rng.integers(0, k, n).astype(np.int32)
  centres = rng.normal(size=(k, d)).astype(np.float32)
  x = centres[y] + rng.normal(size=(n, d)).astype(np.float32)
  mask = np.ones(b, bool)

  learner = cljax.learners.get("slda", num_classes=k, update_rule=_RULE.value, checked=False)
  batches = [{"x": jax.device_put(x[i * b:(i + 1) * b]), "y": jax.device_put(y[i * b:(i + 1) * b]),
              "valid": jax.device_put(mask), "labeled": jax.device_put(mask)} for i in range(nb)]
  state0 = learner.init(None, batches[0])
  jax.block_until_ready(learner.update(state0, batches[0], None))  # compile

  def run_learner():
    s = state0
    for bt in batches:
      s, _ = learner.update(s, bt, None)
    return s

  t_batched = _median_time(run_learner, reps)
  final = run_learner()

  donating = cljax.learners.get("slda", num_classes=k, update_rule=_RULE.value, checked=False,
                               donate=True)

  def run_donated():
    s = jax.tree.map(jnp.copy, state0)
    for bt in batches:
      s, _ = donating.update(s, bt, None)
    return s

  jax.block_until_ready(run_donated())  # compile
  t_donated = _median_time(run_donated, reps)

  scan = jax.jit(lambda s, xb, yb: ops.update_scan(s, xb, yb, rule=_RULE.value))
  slow_batches = batches[:slow // b]
  jax.block_until_ready(scan(state0, slow_batches[0]["x"], slow_batches[0]["y"]))

  def run_scan():
    s = state0
    for bt in slow_batches:
      s = scan(s, bt["x"], bt["y"])
    return s

  t_scan = _median_time(run_scan, reps)
  # The scan form must agree with the batched one on the same prefix.
  s_b = state0
  for bt in slow_batches:
    s_b, _ = learner.update(s_b, bt, None)
  s_s = run_scan()
  scan_rel = float(jnp.abs(s_b.scatter - s_s.scatter).max() / jnp.abs(s_s.scatter).max())

  n_np = min(slow, 2048)
  t_numpy = _median_time(lambda: _numpy_reference(x[:n_np], y[:n_np], k), reps)

  refresh = jax.jit(lambda s: ops.refresh(s))
  jax.block_until_ready(refresh(final))
  t_refresh = _median_time(lambda: refresh(final), reps)
  fresh = refresh(final)
  jax.block_until_ready(learner.predict(fresh, batches[0]["x"]))

  def run_predict():
    return [learner.predict(fresh, bt["x"]) for bt in batches]

  t_predict = _median_time(run_predict, reps)

  # One update's matrix work is the scatter product Zᵀ(wZ): 2·B·d² FLOPs; the rest (sort,
  # segmented prefix sums, gathers) is O(B·d·log B) and is what the ratio below charges for.
  flops = 2 * b * d * d
  b_eq = b
  mm = jax.jit(lambda a, c: jnp.dot(a, c))
  lhs = jax.device_put(rng.normal(size=(d, b_eq)).astype(np.float32))
  rhs = [jax.device_put(x[i * b:i * b + b_eq] if i * b + b_eq <= n else x[:b_eq]) for i in range(nb)]
  jax.block_until_ready(mm(lhs, rhs[0]))
  t_matmul = _median_time(lambda: [mm(lhs, r) for r in rhs], reps)
  # The statistics kernels use Precision.HIGHEST (full float32 on GPUs, no TF32); time the
  # same-FLOPs matmul at that precision too, so the ratio can be read against either.
  mm_hi = jax.jit(lambda a, c: jnp.dot(a, c, precision=jax.lax.Precision.HIGHEST))
  jax.block_until_ready(mm_hi(lhs, rhs[0]))
  t_matmul_hi = _median_time(lambda: [mm_hi(lhs, r) for r in rhs], reps)

  res = {
      "config": {"dim": d, "classes": k, "examples": n, "batch": b, "rule": _RULE.value,
                 "repeats": reps, "platform": platform.platform(), "cpus": os.cpu_count(),
                 "jax": jax.__version__, "device": str(jax.devices()[0]),
                 "loadavg_at_start": os.getloadavg()},
      "batched_update": {"seconds": t_batched, "examples_per_s": n / t_batched,
                         "ms_per_batch": 1e3 * t_batched / nb},
      "batched_update_donated": {"seconds": t_donated, "examples_per_s": n / t_donated},
      "scan_per_example": {"timed_examples": len(slow_batches) * b, "seconds": t_scan,
                           "examples_per_s": len(slow_batches) * b / t_scan,
                           "extrapolated_seconds_full_stream": t_scan * n / (len(slow_batches) * b),
                           "max_rel_diff_scatter_vs_batched": scan_rel},
      "numpy_reference_loop": {"timed_examples": n_np, "seconds": t_numpy,
                               "examples_per_s": n_np / t_numpy,
                               "extrapolated_seconds_full_stream": t_numpy * n / n_np},
      "refresh_head": {"seconds": t_refresh},
      "predict_cached_head": {"seconds": t_predict, "examples_per_s": n / t_predict,
                              "batch": b},
      "matmul_same_flops": {"shape": f"[{d},{b_eq}]x[{b_eq},{d}]", "flops_per_batch": flops,
                            "seconds": t_matmul, "gflops_per_s": flops * nb / t_matmul / 1e9,
                            "precision": "default"},
      "matmul_same_flops_highest": {"seconds": t_matmul_hi,
                                    "gflops_per_s": flops * nb / t_matmul_hi / 1e9,
                                    "precision": "HIGHEST"},
  }
  res["ratios"] = {
      "batched_over_scan_speedup": res["batched_update"]["examples_per_s"]
                                   / res["scan_per_example"]["examples_per_s"],
      "batched_over_numpy_speedup": res["batched_update"]["examples_per_s"]
                                    / res["numpy_reference_loop"]["examples_per_s"],
      "update_time_over_matmul_time": t_batched / t_matmul,
      "donated_update_time_over_matmul_time": t_donated / t_matmul,
      "update_time_over_highest_matmul_time": t_batched / t_matmul_hi,
      "donated_update_time_over_highest_matmul_time": t_donated / t_matmul_hi,
  }

  rows = [
      ("batched update (learner.update)", res["batched_update"]["examples_per_s"], t_batched, ""),
      ("batched update, donate=True", res["batched_update_donated"]["examples_per_s"], t_donated,
       ""),
      ("per-example lax.scan", res["scan_per_example"]["examples_per_s"],
       res["scan_per_example"]["extrapolated_seconds_full_stream"],
       f"extrapolated from {len(slow_batches) * b}"),
      ("per-example NumPy (reference)", res["numpy_reference_loop"]["examples_per_s"],
       res["numpy_reference_loop"]["extrapolated_seconds_full_stream"],
       f"extrapolated from {n_np}"),
      ("predict (cached head)", res["predict_cached_head"]["examples_per_s"], t_predict, ""),
      (f"matmul same FLOPs {res['matmul_same_flops']['shape']}", n / t_matmul, t_matmul,
       f"{res['matmul_same_flops']['gflops_per_s']:.0f} GFLOP/s"),
      ("  same, precision=HIGHEST", n / t_matmul_hi, t_matmul_hi,
       f"{res['matmul_same_flops_highest']['gflops_per_s']:.0f} GFLOP/s"),
  ]
  print(f"SLDA benchmark: d={d} K={k} N={n} B={b} rule={_RULE.value} "
        f"(load avg {os.getloadavg()[0]:.1f} at end)")
  print(f"{'form':44s} {'examples/s':>12s} {'s / stream':>11s}  note")
  for name, eps, secs, note in rows:
    print(f"{name:44s} {eps:12,.0f} {secs:11.3f}  {note}")
  print(f"head refresh (Cholesky + {k}-column solve): {1e3 * t_refresh:.2f} ms")
  for key, val in res["ratios"].items():
    print(f"{key}: {val:.2f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
