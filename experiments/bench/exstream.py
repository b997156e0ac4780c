"""Benchmark: ExStream buffer updates and learner steps.

Measures, at K=1000 classes, c=16 items per class, d=512 features (the defaults):

* examples/s of the jitted batch insert into full buffers (steady state: every insert merges) for
  each buffer kind, with a batch of incoming examples of uniformly random classes;
* examples/s of a plain per-example NumPy ExStream (recomputing the class's c x c distances, as the
  reference does) and of a NumPy variant with cached distances, and the jitted/NumPy ratios;
* a full learner step (reference MLP head) in ``full_epoch`` replay (one epoch over all K*c items
  per new example; slow, so only a few steps) and in ``sampled`` replay.

With ``--digits`` it instead runs a small accuracy study on real data: sklearn's digits (64-d pixels
/ 16), class-incremental in tasks of two classes, streamed 10 examples per update; final test
accuracy of every buffer kind and replay mode against fine-tuning.

Usage::

    .venv/bin/python experiments/bench/exstream.py --out=/tmp/exstream_bench.json
    .venv/bin/python experiments/bench/exstream.py --digits --out=/tmp/exstream_digits.json

Prints a table and writes the figures as JSON.
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

from cljax.ops import buffers
from cljax.ops.buffers import exstream as ex

_OUT = flags.DEFINE_string("out", None, "JSON file for the results.")
_K = flags.DEFINE_integer("num_classes", 1000, "K classes.")
_C = flags.DEFINE_integer("capacity", 16, "c items per class.")
_D = flags.DEFINE_integer("dim", 512, "d features.")
_BATCHES = flags.DEFINE_list("batch", ["1", "32", "256"], "Incoming batch sizes of the inserts.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per buffer measurement.")
_NUMPY_EXAMPLES = flags.DEFINE_integer("numpy_examples", 500, "Examples for the NumPy baselines.")
_FULL_EPOCH_STEPS = flags.DEFINE_integer("full_epoch_steps", 3, "Timed full_epoch learner updates.")
_SAMPLED_STEPS = flags.DEFINE_integer("sampled_steps", 30, "Timed sampled learner updates.")
_DIGITS = flags.DEFINE_bool("digits", False, "Run the digits accuracy study instead.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds (stream order and init) in the digits study.")

# The buffer kinds the ExStream paper compares (equal memory: c items per class, K*c in all).
KINDS = ("exstream", "kmeans", "queue", "reservoir")
# The digits study compares every buffer of ExStream's paper (CluStream and HPStream included).
STUDY_KINDS = KINDS + ("clustream", "hpstream")


def _learners():
  # Imported where used: the buffer benchmarks need only cljax.ops.
  import cljax.learners as learners  # pylint: disable=import-outside-toplevel
  return learners


@jax.jit
def _pair_dists(cents):
  """Squared distances [K, c, c] between the slots of each class of ``cents`` [K, c, d]."""

  def one(h):
    diff = h[:, None, :] - h[None, :, :]
    return jnp.sum(diff * diff, -1)

  return jax.lax.map(one, cents, batch_size=50)


def _full_exstream(key, k, c, d, normalize=False):
  """Full ExStream buffers (every class at capacity) with consistent cached distances."""
  cents = jax.random.normal(key, (k, c, d), jnp.float32)
  if normalize:
    cents = cents / jnp.linalg.norm(cents, axis=-1, keepdims=True)
  return ex.ExStreamState(cents, jnp.ones((k, c), jnp.float32), jnp.full((k,), c, jnp.int32),
                          _pair_dists(cents))


def _full_state(kind, key, k, c, d):
  if kind == "exstream":
    return _full_exstream(key, k, c, d)
  policy = buffers.get(kind)
  state = policy.init(key, k * c, jax.ShapeDtypeStruct((d,), jnp.float32), k)
  # Fill through the insert itself: c examples of every class.
  y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), c)
  x = jax.random.normal(key, (k * c, d), jnp.float32)
  return jax.jit(policy.insert)(state, x, y, jnp.ones((k * c,), bool))


def _time_calls(fn, args_fn, repeats):
  """Median seconds per call; ``args_fn()`` builds fresh arguments (donated buffers)."""
  times = []
  for _ in range(repeats):
    args = args_fn()
    jax.block_until_ready(args)
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench_buffers(k, c, d, batches, repeats):
  rows = []
  key = jax.random.key(0)
  for kind in KINDS:
    insert = jax.jit(buffers.get(kind).insert, donate_argnums=0)
    state = _full_state(kind, key, k, c, d)
    for b in batches:
      xk, yk = jax.random.split(jax.random.fold_in(key, b))
      x = jax.random.normal(xk, (b, d), jnp.float32)
      y = jax.random.randint(yk, (b,), 0, k, jnp.int32)
      m = jnp.ones((b,), bool)
      t = time.perf_counter()
      compiled = insert.lower(state, x, y, m).compile()
      compile_s = time.perf_counter() - t
      holder = [state]

      def call(s, x=x, y=y, m=m):
        out = compiled(s, x, y, m)
        holder[0] = out
        return out

      call(holder[0])  # warm-up
      sec = _time_calls(call, lambda: (holder[0],), repeats)
      state = holder[0]
      rows.append(dict(kind=kind, batch=b, sec_per_call=sec, examples_per_s=b / sec,
                       compile_s=compile_s))
      print(f"  {kind:10s} B={b:4d}: {b / sec:12.1f} ex/s  ({sec * 1e3:8.3f} ms/call, "
            f"compile {compile_s:.1f} s)", flush=True)
  return rows


def numpy_exstream_plain(cents, w, xs, ys):
  """Per-example ExStream in NumPy, recomputing the class's pair distances (the reference way)."""
  c = w.shape[1]
  for x, y in zip(xs, ys):
    h = cents[y]
    diff = h[:, None, :] - h[None, :, :]
    dist = np.einsum("ijk,ijk->ij", diff, diff)
    np.fill_diagonal(dist, np.inf)
    i, j = divmod(int(np.argmin(dist)), c)
    i, j = min(i, j), max(i, j)
    cents[y, j] = (h[i] * w[y, i] + h[j] * w[y, j]) / (w[y, i] + w[y, j])
    w[y, j] += w[y, i]
    cents[y, i], w[y, i] = x, 1
  return cents, w


def numpy_exstream_cached(cents, w, dists, xs, ys):
  """Per-example ExStream in NumPy with cached pair distances (two rows updated per insert)."""
  c = w.shape[1]
  upper = np.triu(np.ones((c, c), bool), 1)
  for x, y in zip(xs, ys):
    i, j = divmod(int(np.argmin(np.where(upper, dists[y], np.inf))), c)
    h = cents[y]
    h[j] = (h[i] * w[y, i] + h[j] * w[y, j]) / (w[y, i] + w[y, j])
    w[y, j] += w[y, i]
    h[i], w[y, i] = x, 1
    for s in (i, j):
      diff = h - h[s]
      row = np.einsum("ij,ij->i", diff, diff)
      dists[y, s, :] = row
      dists[y, :, s] = row
  return cents, w, dists


def bench_numpy(k, c, d, n):
  full = _full_exstream(jax.random.key(0), k, c, d)
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(n, d)).astype(np.float32)
  ys = rng.integers(0, k, n)
  out = {}
  cents, w = np.array(full.centroids), np.array(full.weights)
  t = time.perf_counter()
  numpy_exstream_plain(cents, w, xs, ys)
  out["numpy_plain_examples_per_s"] = n / (time.perf_counter() - t)
  cents, w, dists = np.array(full.centroids), np.array(full.weights), np.array(full.dists)
  t = time.perf_counter()
  numpy_exstream_cached(cents, w, dists, xs, ys)
  out["numpy_cached_examples_per_s"] = n / (time.perf_counter() - t)
  # Same stream through the jitted insert: the NumPy loop is a faithful baseline, not a strawman.
  ref = jax.jit(ex.insert)(full, jnp.asarray(xs), jnp.asarray(ys, jnp.int32), jnp.ones((n,), bool))
  out["numpy_matches_jax_max_abs_diff"] = float(np.abs(np.asarray(ref.centroids) - cents).max())
  print(f"  numpy plain : {out['numpy_plain_examples_per_s']:12.1f} ex/s")
  print(f"  numpy cached: {out['numpy_cached_examples_per_s']:12.1f} ex/s   "
        f"(max |numpy - jax| after {n} examples: {out['numpy_matches_jax_max_abs_diff']:.2e})")
  return out


def bench_learner(k, c, d, replay, batch, steps, donate):
  # The bare jitted update (checked=False), lowered and compiled ahead of the timed calls.
  learner = _learners().get("exstream", num_classes=k, capacity=c, replay=replay, donate=donate,
                            checked=False)
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, d), jnp.float32)
  y = jax.random.randint(key, (batch,), 0, k, jnp.int32)
  state = learner.init(key, {"x": x, "y": y})
  # Steady state: full buffers (of L2-normalised features, as the learner stores them).
  state = state._replace(buffer=_full_exstream(key, k, c, d, normalize=True))
  batch_d = {"x": x, "y": y, "valid": jnp.ones((batch,), bool),
             "labeled": jnp.ones((batch,), bool)}
  t = time.perf_counter()
  compiled = learner.update.lower(state, batch_d, key).compile()
  compile_s = time.perf_counter() - t
  state, info = compiled(state, batch_d, key)  # warm-up
  jax.block_until_ready(state)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, info = compiled(state, batch_d, jax.random.fold_in(key, i))
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  sec = statistics.median(times)
  passes = float(info.passes)
  row = dict(replay=replay, batch=batch, donate=donate, sec_per_update=sec,
             examples_per_s=batch / sec, passes_per_update=passes,
             ms_per_pass=sec / max(passes, 1) * 1e3, compile_s=compile_s, timed_updates=steps)
  print(f"  {replay:10s} B={batch:3d} donate={donate!s:5s}: {batch / sec:10.2f} ex/s  "
        f"({sec:8.3f} s/update, {passes:.0f} passes, {row['ms_per_pass']:.2f} ms/pass, "
        f"compile {compile_s:.1f} s)",
        flush=True)
  return row


def _digits_stream(seed):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(np.flatnonzero(ytr // 2 == t)) for t in range(5)])
  return xtr[order], ytr[order], xte, yte


def digits_study(seeds, batch=10):
  configs = [dict(replay="none", capacity=8)]
  for kind in STUDY_KINDS:
    for cap in (2, 8):
      configs.append(dict(buffer=kind, capacity=cap, replay="full_epoch"))
  configs += [dict(buffer="exstream", capacity=8, replay="sampled"),
              dict(buffer="exstream", capacity=8, replay="full_epoch", weighted_loss=True),
              dict(buffer="exstream", capacity=8, replay="full_epoch", head="linear")]
  rows = []
  for hp in configs:
    learner = _learners().get("exstream", num_classes=10, **hp)
    accs, passes, secs = [], [], []
    for seed in range(seeds):
      xs, ys, xte, yte = _digits_stream(seed)
      state = learner.init(jax.random.key(seed), {"x": xs[:batch], "y": ys[:batch]})
      n = len(ys) // batch * batch
      used, t = 0.0, time.perf_counter()
      for s in range(0, n, batch):
        b = {"x": xs[s:s + batch], "y": ys[s:s + batch], "valid": np.ones(batch, bool),
             "labeled": np.ones(batch, bool)}
        state, info = learner.update(state, b, jax.random.fold_in(jax.random.key(seed), s))
        used += float(info.passes)
      secs.append(time.perf_counter() - t)
      accs.append(float((np.asarray(learner.predict(state, xte)).argmax(-1) == yte).mean()))
      passes.append(used)
    row = dict(hp, head=hp.get("head", "mlp"), acc_mean=float(np.mean(accs)),
               acc_std=float(np.std(accs)), accs=accs, passes=float(np.mean(passes)),
               stream_s_first_seed_incl_compile=secs[0],
               stream_s_later_seeds=float(np.mean(secs[1:])) if seeds > 1 else None)
    rows.append(row)
    print(f"  {str(hp):90s} acc {row['acc_mean']:.3f} +- {row['acc_std']:.3f}  "
          f"passes {row['passes']:.0f}", flush=True)
  return rows


def main(argv):
  del argv
  if _DIGITS.value:
    print("digits, class-incremental (2 classes per task), 10 examples per update, MLP head:")
    rows = digits_study(_SEEDS.value)
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump(dict(study="digits", seeds=_SEEDS.value, rows=rows), f, indent=2)
      print(f"wrote {_OUT.value}")
    return
  k, c, d = _K.value, _C.value, _D.value
  load_start = os.getloadavg()
  batches = [int(b) for b in _BATCHES.value]
  print(f"ExStream benchmark: K={k} c={c} d={d}, {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s)")
  print("buffer inserts into full buffers (jitted, donated):")
  buffers = bench_buffers(k, c, d, batches, _REPEATS.value)
  print("per-example NumPy ExStream:")
  numpy_res = bench_numpy(k, c, d, _NUMPY_EXAMPLES.value)
  ratios = {}
  for row in buffers:
    if row["kind"] == "exstream":
      ratios[f"B={row['batch']}"] = dict(
          vs_numpy_plain=row["examples_per_s"] / numpy_res["numpy_plain_examples_per_s"],
          vs_numpy_cached=row["examples_per_s"] / numpy_res["numpy_cached_examples_per_s"])
  print("jitted ExStream insert / NumPy:")
  for name, r in ratios.items():
    print(f"  {name:6s}: {r['vs_numpy_plain']:8.1f}x plain, {r['vs_numpy_cached']:8.1f}x cached")
  print("learner updates (MLP head [d, 350, 300, K], full ExStream buffer, batch 100):")
  learner_rows = [
      bench_learner(k, c, d, "full_epoch", 1, _FULL_EPOCH_STEPS.value, donate=True),
      bench_learner(k, c, d, "sampled", 1, _SAMPLED_STEPS.value, donate=False),
      bench_learner(k, c, d, "sampled", 1, _SAMPLED_STEPS.value, donate=True),
      bench_learner(k, c, d, "sampled", 32, _SAMPLED_STEPS.value, donate=False),
  ]
  result = dict(config=dict(num_classes=k, capacity=c, dim=d, platform=jax.devices()[0].platform,
                            device=str(jax.devices()[0]), machine=platform.machine(),
                            cpu_count=os.cpu_count(), jax=jax.__version__,
                            loadavg_1_5_15_start=load_start, loadavg_1_5_15_end=os.getloadavg()),
                buffers=buffers, numpy=numpy_res, jit_vs_numpy=ratios, learner=learner_rows)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
