"""Benchmark: training throughput of the DietCL step (``cljax/learners/dietcl.py``) on this machine.

Builds ``dietcl`` with a ViT (default ViT-tiny: width 192, depth 12, 3 heads, MAE decoder 128 x 2)
on real 28x28 MNIST digits (mnist5k, patch 7 -> 16 patches), fills one time step with
``--step_rows`` rows at ``--label_rate`` labels, then times ``end_of_step`` for a budget of
``--passes`` passes of ``--batch_size`` examples, in the joint phase (threshold = passes: MAE on the
unlabeled third + CE on the labeled and buffer thirds) and in the buffer-only phase (threshold 0).
The first call of each phase compiles and is timed separately; ``--repeats`` timed calls follow.

Training examples/s = passes * batch_size / seconds (a joint pass reads batch_size examples, of
which a third go through the MAE encoder at 25 % of the patches plus the decoder).

Usage::

    .venv/bin/python experiments/bench/dietcl.py --out=/tmp/dietcl_bench.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import cljax.learners as learners
from cljax import data

_OUT = flags.DEFINE_string("out", None, "JSON file for the results.")
_VIT = flags.DEFINE_string("vit", "tiny", "ViT config (micro, tiny, small, base).")
_BS = flags.DEFINE_integer("batch_size", 64, "Examples per pass.")
_PASSES = flags.DEFINE_integer("passes", 16, "Passes per timed end_of_step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed end_of_step calls per phase.")
_ROWS = flags.DEFINE_integer("step_rows", 640, "Rows in the time step.")
_RATE = flags.DEFINE_float("label_rate", 0.1, "Share of labeled rows.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Steps per jitted call.")
_UNROLL = flags.DEFINE_integer("unroll", 1, "lax.scan unroll inside a chunk.")


def _fill(learner, ds, rows, rate, bs, seed):
  x, y = ds.train.batch(np.arange(len(ds.train))), ds.train.y
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(y), rows, replace=False)
  lab = rng.random(rows) < rate
  state = learner.init(jax.random.key(0), {"x": x[:bs], "y": y[:bs]})
  for s in range(0, rows, bs):
    b = idx[s:s + bs]
    pad = bs - len(b)
    bi = np.r_[b, np.zeros(pad, int)]
    state, _ = learner.update(state, {"x": x[bi], "y": y[bi],
                                      "valid": np.r_[np.ones(len(b), bool), np.zeros(pad, bool)],
                                      "labeled": np.r_[lab[s:s + bs], np.zeros(pad, bool)]},
                              jax.random.key(s))
  return state


def _phase(ds, threshold):
  kw = dict(num_classes=10, vit=_VIT.value, batch_size=_BS.value, max_step_size=_ROWS.value,
            memory_size=max(_ROWS.value, 256), threshold=threshold, chunk=_CHUNK.value,
            unroll=_UNROLL.value)
  learner = learners.get("dietcl", **kw)
  state = _fill(learner, ds, _ROWS.value, _RATE.value, _BS.value, 0)
  p = _PASSES.value
  t0 = time.perf_counter()
  out, m = learner.end_of_step(state, jax.random.key(1), jnp.int32(p))
  jax.block_until_ready(out["params"])
  first = time.perf_counter() - t0
  times = []
  for r in range(_REPEATS.value):
    state = _fill(learner, ds, _ROWS.value, _RATE.value, _BS.value, r + 1)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    out, m = learner.end_of_step(state, jax.random.key(2 + r), jnp.int32(p))
    jax.block_until_ready(out["params"])
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(out["params"]))
  return {"threshold": threshold, "passes": p, "first_call_s": first, "times_s": times,
          "median_s": med, "examples_per_s": p * _BS.value / med,
          "ms_per_pass": 1000 * med / p, "params": n_params,
          "passes_reported": float(m["passes"])}


def main(argv):
  del argv
  ds = data.load("mnist5k")
  res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                     "jax": jax.__version__, "device": str(jax.devices()[0]),
                     "loadavg_start": os.getloadavg()},
         "config": {"vit": _VIT.value, "image": [28, 28, 1], "patch": 7,
                    "batch_size": _BS.value, "passes": _PASSES.value, "chunk": _CHUNK.value,
                    "unroll": _UNROLL.value, "step_rows": _ROWS.value,
                    "label_rate": _RATE.value}}
  res["joint"] = _phase(ds, threshold=_PASSES.value)
  res["buffer_only"] = _phase(ds, threshold=0)
  res["machine"]["loadavg_end"] = os.getloadavg()
  for k in ("joint", "buffer_only"):
    r = res[k]
    print(f"{k:12s} {r['examples_per_s']:8.1f} ex/s  {r['ms_per_pass']:7.1f} ms/pass  "
          f"first call {r['first_call_s']:.1f} s  params {r['params']:,}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  app.run(main)
