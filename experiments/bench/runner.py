r"""Runner overhead: a run through ``cljax.app.runner`` against a bare loop of the same calls.

    .venv/bin/python experiments/bench/runner.py --out=/tmp/runner_bench.json
    .venv/bin/python experiments/bench/runner.py --learners=slda --batch_sizes=1 --step_examples=500

For each learner (``slda``, ``ncm``, ``acil`` and ``ranpac`` on 512-d features (the last two
with ``EXPANSION`` random features), ``er`` on real 28x28 MNIST digits with an MLP,
``remind``'s update on 4x4x64 feature maps) and each incoming batch size, the same stream (real
``mnist5k`` labels, cycled for streams over 4,000 examples; SLDA's and REMIND's inputs are fixed
random projections of the digits) is
consumed twice in one process:

* **bare**: a plain Python loop over the batches (prebuilt numpy dicts, as a user's pipeline would
  hand them over) calling the bare jitted ``update`` with precomputed keys, and ``end_of_step``
  with a budget of 0 at each step's end: the raw jitted calls and nothing else;
* **runner**: ``runner.run_learner`` on that stream with a budget of 0 passes per step (so both
  time ``update``): grain chunks, boundary checks, key derivation, budget accounting, an orbax
  checkpoint at every step, evaluation at step ends only on a 1-example test set (so evaluation
  is effectively off; anytime evaluation is off), and the final model's decision-boundary
  predictions (``runner.predictions``: 3,600 grid points in batches of 256).

Steps hold ``STEP_EXAMPLES`` examples (1 to 2 seconds of compute each on 2 CPU cores), since the
runner's fixed cost per step (an orbax checkpoint of the whole state: about 36 ms of CPU for a
1 MB state here; the step's evaluation) is spread over a step: with steps of a tenth of a second
it alone is 30 % and more. ``--step_examples`` changes the size.

Both runs are warmed up first (compiles excluded: one short run of each), then timed ``--repeats``
times, alternating, and the median is kept. Printed: examples/s of each, and runner / bare time
(target: within 1.10), also as the ratio of the fastest run of each, with the spread (max / min)
of the bare runs: on a loaded machine one run's time varies by more than the runner's overhead,
and the fastest run is the one least slowed by other processes; and as the ratio of the
process CPU times (all threads: XLA's, grain's prefetch, the checkpoint writer), which other
processes barely change, and which counts the runner's background work that an idle core would
hide from the wall time. These machines are shared and
noisy; the ratio is measured in one run.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from cljax import data, learners
from cljax.data.sources import ArraySource, Dataset
from cljax.models import resnet
from cljax.app import runner

_LEARNERS = flags.DEFINE_list("learners", ["slda", "ncm", "acil", "ranpac", "er", "remind"],
                              "Learners to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Incoming batch sizes.")
_STEP_EXAMPLES = flags.DEFINE_integer(
    "step_examples", 0, "Examples per time step (0: the defaults in STEP_EXAMPLES, about a "
    "second of compute per step on 2 CPU cores).")
_STEPS = flags.DEFINE_integer("steps", 3, "Time steps (one checkpoint each).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each; the median is reported.")

# (learner, incoming batch size) -> examples per time step.
STEP_EXAMPLES = {("slda", 1): 4000, ("slda", 32): 120000, ("ncm", 1): 4000, ("ncm", 32): 120000,
                 ("acil", 1): 2000, ("acil", 32): 32000, ("ranpac", 1): 2000,
                 ("ranpac", 32): 32000, ("er", 1): 2000, ("er", 32): 32000, ("remind", 1): 512,
                 ("remind", 32): 512}
# The analytic heads' feature expansion: 1,024 (the papers' 8,192 and 10,000 make each batch-1
# update a 64-400 MB matrix update, whose compute hides any runner overhead; the runner's cost is
# measured where it shows most).
EXPANSION = 1024
_FEATURES = ("slda", "ncm", "acil", "ranpac")  # learners fed SLDA's 512-d features
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _stream(kind: str, n: int, steps: int):
  """A ``cljax.data.Stream`` of n real MNIST labels with inputs for ``kind``, in ``steps`` steps."""
  ds = data.load("mnist5k")
  idx = np.arange(n) % len(ds.train)  # longer streams cycle through the 4,000 digits
  x = ds.train.batch(idx)
  y = np.asarray(ds.train.y[idx], np.int32)
  rng = np.random.default_rng(0)
  if kind in _FEATURES:  # 512-d features: a fixed random projection of the digits
    x = np.maximum(x.reshape(n, -1) @ rng.normal(size=(784, 512)).astype(np.float32) / 28, 0)
  elif kind == "remind":  # 4x4x64 feature maps (G's output of a width-1/8 ResNet at 28 px)
    x = np.maximum(x.reshape(n, -1) @ rng.normal(size=(784, 1024)).astype(np.float32) / 28, 0)
    x = x.reshape(n, 4, 4, 64)
  x = x.astype(np.float32)
  train = ArraySource(f"mnist5k-{kind}", x, y)
  test = ArraySource(f"mnist5k-{kind}-test", x[:1], y[:1])
  dset = Dataset(f"mnist5k-{kind}", train, test, 10)
  order = np.arange(n)
  cut = np.array_split(order, steps)
  return data.streams.Stream(dset, "iid", 0, cut, [np.ones(len(c), bool) for c in cut],
                             [np.arange(10)], [0], [np.arange(1)])


def _learner(kind: str):
  if kind == "slda":
    return learners.get("slda", num_classes=10, checked=False)
  if kind == "ncm":
    return learners.get("ncm", num_classes=10, checked=False)
  if kind == "acil":
    return learners.get("acil", num_classes=10, expansion_dim=EXPANSION, checked=False)
  if kind == "ranpac":
    return learners.get("ranpac", num_classes=10, projection_dim=EXPANSION, checked=False)
  if kind == "er":
    return learners.get("er", num_classes=10, model="mlp", memory_size=500, checked=False)
  model = resnet.ResNet18(10, width=1 / 8, stem="small",
                          rngs=__import__("flax").nnx.Rngs(jax.random.key(0, impl="rbg")))
  _, f = resnet.split_model(model, "layer4.0")
  codebook = jax.random.normal(jax.random.key(1), (4, 256, 16)) * 0.3
  return learners.get("remind", num_classes=10, codebook=codebook, f_module=f, replay_size=20,
                      buffer_capacity=2000, checked=False)


def _bare(learner, stream, bs: int, key):
  """The bare loop: prebuilt batches, precomputed keys, update per batch, end_of_step per step."""
  batches, ends = [], []
  for b in data.batches(stream, bs):
    batches.append({k: b[k] for k in ("x", "y", "valid", "labeled")})
    ends.append(bool(b["last_in_step"]))
  keys = list(jax.random.split(key, len(batches)))
  first = batches[0]

  def run():
    t0, c0 = time.perf_counter(), time.process_time()  # like the runner's time, includes init
    state = learner.init(jax.random.key(0), {"x": first["x"], "y": first["y"]})
    t = 0
    for b, k, end in zip(batches, keys, ends):
      state, _ = learner.update(state, b, k)
      if end:
        state, _ = learner.end_of_step(state, jax.random.fold_in(key, t), 0)
        t += 1
    jax.block_until_ready(state)
    return time.perf_counter() - t0, time.process_time() - c0

  return run


def _through_runner(learner, stream, bs: int):
  def run():
    wd = tempfile.mkdtemp(prefix="cljax_runner_bench_")
    try:
      # latency_calls=0: the batch-1 latency probe after the last step is not the runner's
      # per-batch work this bench compares with a bare loop. Evaluation batches of 256 rows: the
      # test set is one example (one call per step end), and the final decision-boundary grid
      # (runner.predictions, 3,600 points) is 15 calls; at batch 1 it was 3,600 calls, about 2 s.
      opts = runner.RunOptions(batch_size=bs, budget=0, eval_every_examples=0,
                               eval_batch_size=256, latency_calls=0)
      t0, c0 = time.perf_counter(), time.process_time()
      runner.run_learner("bench", learner, stream, opts, wd, log=lambda m: None)
      return time.perf_counter() - t0, time.process_time() - c0
    finally:
      shutil.rmtree(wd, ignore_errors=True)
  return run


def measure(kind: str, bs: int, n: int, steps: int, repeats: int) -> dict:
  stream = _stream(kind, n, steps)
  learner = _learner(kind)
  bare = _bare(learner, stream, bs, jax.random.key(7))
  through = _through_runner(learner, stream, bs)
  bare()  # compile everything once
  through()
  tb, tr, cb, cr = [], [], [], []
  for _ in range(repeats):
    for times, cpus, fn in ((tb, cb, bare), (tr, cr, through)):
      wall, cpu = fn()
      times.append(wall)
      cpus.append(cpu)
  b, r = statistics.median(tb), statistics.median(tr)
  return {"learner": kind, "batch_size": bs, "examples": n, "steps": steps,
          "bare_s": b, "runner_s": r, "bare_examples_per_s": n / b,
          "runner_examples_per_s": n / r, "ratio": r / b, "ratio_of_fastest": min(tr) / min(tb),
          "cpu_ratio": statistics.median(cr) / statistics.median(cb),
          "bare_times": tb, "runner_times": tr, "bare_cpu_s": cb, "runner_cpu_s": cr}


def main(argv):
  del argv
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()  # quiet orbax's per-save logging, as the binaries do
  rows = []
  for kind in _LEARNERS.value:
    for bs in (int(b) for b in _BATCH_SIZES.value):
      n = (_STEP_EXAMPLES.value or STEP_EXAMPLES[(kind, bs)]) * _STEPS.value
      r = measure(kind, bs, n, _STEPS.value, _REPEATS.value)
      rows.append(r)
      print(f"{kind:<7} batch {bs:>3}: bare {r['bare_examples_per_s']:>9,.0f} ex/s | runner "
            f"{r['runner_examples_per_s']:>9,.0f} ex/s | runner / bare {r['ratio']:.3f} (of the "
            f"fastest runs {r['ratio_of_fastest']:.3f}; bare spread "
            f"{max(r['bare_times']) / min(r['bare_times']):.2f}x) | CPU time runner / bare "
            f"{r['cpu_ratio']:.3f}", flush=True)
  out = {"rows": rows, "jax": jax.__version__, "backend": jax.default_backend(),
         "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
