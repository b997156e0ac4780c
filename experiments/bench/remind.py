"""REMIND benchmark: cljax.ops.pq against faiss-cpu, and the full REMIND step at ImageNet shapes.

    .venv/bin/python experiments/bench/remind.py --out=/tmp/remind_bench.json

Part 1, product quantization (d = 512, M = 32, C = 256, 25 k-means iterations, at most 256 points
per centroid): training time, encode and decode throughput (vectors/s) and reconstruction MSE on
held-out vectors, for cljax.ops.pq (JAX, jit) and faiss.ProductQuantizer on the same data. The data
stand in for ResNet-18 layer4.0 features (no ImageNet weights ship here): x = relu(z A + b) with
z ~ N(0, I_64), A ~ N(0, 1/64) [64, 512], b ~ N(-0.5, 0.25): low-rank, non-negative, about two
thirds zeros. faiss is optional (``pip install faiss-cpu``); without it its column is left out and the
JSON says why.

Part 2, the REMIND step: examples/s of ``learner.update`` at ImageNet shapes: features [7, 7, 512],
r = 50 (51 rows through F per step, 101 maps decoded and cropped), F = layer4.1 + pool + fc of a
width-1 ResNet-18 (1000 classes), a full buffer of random codes (so every insert evicts).

Times are wall-clock medians of ``--repeats`` runs after one warm-up call (which holds the compile);
compile times are reported separately. faiss and XLA both use every core the machine gives them.
The REMIND step is timed for both ``loop`` settings of the learner (unrolled steps, and lax.scan
with matmul kernel gradients).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cljax import learners
from cljax.models import resnet
from cljax.ops import buffers
from cljax.ops import pq

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Write the results as JSON to this file.")
flags.DEFINE_integer("n_train", 50_000, "PQ training vectors.")
flags.DEFINE_integer("n_test", 20_000, "Held-out vectors for encode/decode throughput and MSE.")
flags.DEFINE_integer("d", 512, "Vector dimension.")
flags.DEFINE_integer("m", 32, "Sub-vectors.")
flags.DEFINE_integer("c", 256, "Centroids per sub-space.")
flags.DEFINE_integer("iters", 25, "k-means iterations.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
flags.DEFINE_integer("replay", 50, "REMIND r.")
flags.DEFINE_integer("capacity", 100_000, "REMIND buffer capacity (items of 7x7x32 bytes).")
flags.DEFINE_integer("batch", 4, "Examples per update call (steps run in one lax.scan).")
flags.DEFINE_integer("calls", 3, "Timed update calls.")
flags.DEFINE_bool("skip_remind", False, "Only the PQ part.")
flags.DEFINE_list("loops", ["unroll", "scan"], "remind `loop` settings to time.")


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _features(key_seed, n, d):
  rng = np.random.default_rng(key_seed)
  a = rng.normal(size=(64, d)).astype(np.float32) / 8.0
  b = rng.normal(-0.5, 0.5, size=(d,)).astype(np.float32)
  z = np.random.default_rng(key_seed + 1).normal(size=(n, 64)).astype(np.float32)
  return np.maximum(z @ a + b, 0.0)


def bench_pq(res):
  d, m, c = FLAGS.d, FLAGS.m, FLAGS.c
  x = _features(0, FLAGS.n_train + FLAGS.n_test, d)
  xtr, xte = x[:FLAGS.n_train], x[FLAGS.n_train:]
  res["data"] = {"n_train": FLAGS.n_train, "n_test": FLAGS.n_test, "d": d, "zero_fraction":
                 float((x == 0).mean()), "mean_square": float((xte ** 2).mean())}
  out = {}

  # --- cljax.ops.pq ---
  xtr_j, xte_j = jnp.asarray(xtr), jnp.asarray(xte)
  t = time.perf_counter()
  cb = jax.block_until_ready(pq.train(jax.random.key(0), xtr_j, m, c, iters=FLAGS.iters))
  first = time.perf_counter() - t
  train_s = _median_time(lambda: pq.train(jax.random.key(1), xtr_j, m, c, iters=FLAGS.iters),
                         FLAGS.repeats)
  enc = jax.jit(pq.encode)
  dec = jax.jit(pq.decode)
  codes = jax.block_until_ready(enc(cb, xte_j))
  jax.block_until_ready(dec(cb, codes))
  enc_s = _median_time(lambda: enc(cb, xte_j), FLAGS.repeats)
  dec_s = _median_time(lambda: dec(cb, codes), FLAGS.repeats)
  mse = float(jnp.mean((dec(cb, codes) - xte_j) ** 2))
  out["cljax"] = {"train_s": train_s, "train_compile_s": first - train_s,
                  "encode_vec_per_s": FLAGS.n_test / enc_s, "decode_vec_per_s": FLAGS.n_test / dec_s,
                  "mse": mse}

  # --- faiss ---
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    res["faiss_skipped"] = f"faiss not importable ({e}); pip install faiss-cpu for its column"
  else:
    def train_faiss():
      q = faiss.ProductQuantizer(d, m, int(np.log2(c)))
      q.cp.niter = FLAGS.iters
      q.cp.max_points_per_centroid = 256
      q.verbose = False
      q.train(xtr)
      return q

    q = train_faiss()
    train_s = _median_time(train_faiss, FLAGS.repeats)
    fcodes = q.compute_codes(xte)
    enc_s = _median_time(lambda: q.compute_codes(xte), FLAGS.repeats)
    dec_s = _median_time(lambda: q.decode(fcodes), FLAGS.repeats)
    out["faiss"] = {"train_s": train_s, "encode_vec_per_s": FLAGS.n_test / enc_s,
                    "decode_vec_per_s": FLAGS.n_test / dec_s,
                    "mse": float(((q.decode(fcodes) - xte) ** 2).mean()),
                    "version": faiss.__version__, "threads": faiss.omp_get_max_threads()}
  res["pq"] = out
  res["memory"] = pq.memory_bytes(1, m, c, d, vectors_per_item=49)
  res["memory"]["remind_imagenet_capacity"] = pq.capacity_for_bytes(10000 * 224 * 224 * 3, m, c, d,
                                                                    vectors_per_item=49)


def bench_remind(res):
  r, cap, b = FLAGS.replay, FLAGS.capacity, FLAGS.batch
  t = time.perf_counter()
  model = resnet.ResNet18(1000, width=1.0, stem="imagenet",
                          rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  _, f = resnet.split_model(model, "layer4.0")
  init_s = time.perf_counter() - t
  codebook = jax.random.normal(jax.random.key(1), (32, 256, 16)) * 0.3
  rng = np.random.default_rng(0)
  feats = jnp.asarray(np.maximum(rng.normal(size=(b, 7, 7, 512)), 0).astype(np.float32))
  batch = {"x": feats, "y": jnp.asarray(rng.integers(0, 1000, b), jnp.int32),
           "valid": jnp.ones(b, bool), "labeled": jnp.ones(b, bool)}
  fill = jax.jit(buffers.get("largest_class").insert, donate_argnums=0)
  out = {}
  for loop in FLAGS.loops:
    lrn = learners.get("remind", num_classes=1000, codebook=codebook, f_module=f, replay_size=r,
                       buffer_capacity=cap, loop=loop, checked=False)
    state = lrn.init(jax.random.key(2), batch)
    # A full buffer of random codes over 1,000 classes: every insert pays the eviction search.
    chunk = 10_000
    buf = state.buffer
    for i in range(0, cap, chunk):
      n = min(chunk, cap - i)
      codes = jnp.asarray(rng.integers(0, 256, (chunk, 7, 7, 32)), jnp.uint8)
      labels = jnp.asarray(rng.integers(0, 1000, chunk), jnp.int32)
      buf = fill(buf, codes, labels, jnp.arange(chunk) < n)
    state = state._replace(buffer=buf)
    assert int(state.buffer.count) == cap
    t = time.perf_counter()
    state, met = lrn.update(state, batch, jax.random.key(3))
    jax.block_until_ready(state)
    first = time.perf_counter() - t
    times = []
    for i in range(FLAGS.calls):
      t = time.perf_counter()
      state, met = lrn.update(state, batch, jax.random.key(10 + i))
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
    call_s = statistics.median(times)
    out[loop] = {"examples_per_s": b / call_s, "step_ms": 1000 * call_s / b,
                 "first_call_s": first, "compile_s_approx": first - call_s,
                 # None: the learner's default, matmul gradients on the CPU backend only
                 "matmul_conv_grad": lrn.hparams["matmul_conv_grad"],
                 "backend": jax.default_backend(),
                 "passes_per_call": float(met.passes)}
    del state
  # F alone at top level (plain XLA convolutions): one forward-backward over r + 1 rows, for scale.
  gdef, params, stats = nnx.split(f, nnx.Param, nnx.BatchStat)
  x_rows = jnp.asarray(np.maximum(rng.normal(size=(r + 1, 7, 7, 512)), 0).astype(np.float32))

  def f_loss(p, s, x):
    mm = nnx.merge(gdef, p, s, copy=True)
    return mm(x, use_running_average=False).sum()

  f_grad = jax.jit(jax.grad(f_loss))
  jax.block_until_ready(f_grad(params, stats, x_rows))
  f_s = _median_time(lambda: f_grad(params, stats, x_rows), FLAGS.repeats)
  res["remind"] = {
      "loops": out, "replay": r, "capacity": cap, "examples_per_call": b,
      "buffer_bytes": cap * 7 * 7 * 32, "f_params": sum(int(np.prod(v.shape))
                                                       for v in jax.tree.leaves(params)),
      "f_fwd_bwd_ms_top_level": 1000 * f_s, "model_init_s": init_s}


def main(argv):
  del argv
  res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                     "jax": jax.__version__, "backend": jax.default_backend(),
                     "device": str(jax.devices()[0]),
                     "python": sys.version.split()[0]},
         "config": {k: FLAGS[k].value for k in ["d", "m", "c", "iters", "repeats", "replay",
                                                "capacity", "batch", "calls"]}}
  bench_pq(res)
  _dump(res)  # so a run cut short keeps the PQ part
  rows = [("", "train s", "encode vec/s", "decode vec/s", "MSE")]
  for name, v in res["pq"].items():
    rows.append((name, f"{v['train_s']:.2f}", f"{v['encode_vec_per_s']:,.0f}",
                 f"{v['decode_vec_per_s']:,.0f}", f"{v['mse']:.5f}"))
  print(f"PQ d={FLAGS.d} M={FLAGS.m} C={FLAGS.c}, {FLAGS.n_train} training / {FLAGS.n_test} "
        f"held-out vectors, mean square {res['data']['mean_square']:.4f}")
  for row in rows:
    print(f"{row[0]:>8} {row[1]:>9} {row[2]:>14} {row[3]:>14} {row[4]:>9}")
  if "faiss_skipped" in res:
    print("faiss column skipped:", res["faiss_skipped"])
  print(f"cljax train compile ~{res['pq']['cljax']['train_compile_s']:.1f} s (not in train s)")
  if not FLAGS.skip_remind:
    bench_remind(res)
    rm = res["remind"]
    print(f"REMIND step: 7x7x512 features, r={rm['replay']}, F = layer4.1+fc "
          f"({rm['f_params']:,} params), full buffer of {rm['capacity']:,} items, "
          f"{rm['examples_per_call']} examples per update call")
    for loop, v in rm["loops"].items():
      print(f"  loop={loop:<6} {v['examples_per_s']:.2f} examples/s ({v['step_ms']:.0f} ms/step), "
            f"compile ~{v['compile_s_approx']:.0f} s")
    print(f"  F forward+backward alone, top level: {rm['f_fwd_bwd_ms_top_level']:.0f} ms")
  if FLAGS.out:
    _dump(res)
    print("wrote", FLAGS.out)


def _dump(res):
  if FLAGS.out:
    with open(FLAGS.out, "w") as fh:
      json.dump(res, fh, indent=2)


if __name__ == "__main__":
  app.run(main)
