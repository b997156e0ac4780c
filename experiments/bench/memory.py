r"""Resident memory over a long stream: slda and er through the runner, 240,000 examples each.

    python experiments/bench/memory.py --out=/tmp/memory.json
    python experiments/bench/memory.py --cycles=1 --steps=6        # a quick look

The stream: Fashion-MNIST's 60,000 real training images (mnist5k's 4,000 if the Debian package
is missing), ``--cycles`` shuffled passes (4: 240,000 examples), iid, cut into ``--steps`` time
steps; the whole runner path: grain chunks, checks, ``update`` per batch of 32, ``end_of_step``
(ER: ``--budget`` passes per step), evaluation on the 10,000 test images and a checkpoint at
every step end. slda works on the raw pixels (784-d), er is the default MLP with a 1,000-example
reservoir.

Printed per learner: resident memory (VmRSS) before the run, after the first step (compiles and
first allocations done), in the middle, after the last step, the peak, and the slope of RSS
against examples seen over the second half of the stream (MiB per 100,000 examples). Flat: a
slope near 0 (a leak grows with the examples streamed; warm-up and allocator noise do not; the
run's metadata, e.g. eval points, grows by a few bytes per step).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from cljax import data, learners
from cljax.data.streams import Stream
from cljax.app import runner

_CYCLES = flags.DEFINE_integer("cycles", 4, "Shuffled passes over the training images.")
_STEPS = flags.DEFINE_integer("steps", 24, "Time steps (a checkpoint and an evaluation each).")
_BUDGET = flags.DEFINE_integer("budget", 20, "ER's passes per step.")
_LEARNERS = flags.DEFINE_list("learners", ["slda", "er"], "Learners to stream.")
_OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")


def rss_mib() -> float:
  """Current resident set size of this process (VmRSS), MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _stream(cycles: int, steps: int) -> Stream:
  try:
    ds = data.load("fashion_mnist")
  except data.DataError:
    ds = data.load("mnist5k")
  rng = np.random.default_rng(0)
  order = np.concatenate([rng.permutation(len(ds.train)) for _ in range(cycles)])
  cut = np.array_split(order, steps)
  return Stream(ds, "iid", 0, cut, [np.ones(len(c), bool) for c in cut],
                [np.arange(ds.num_classes)], [0], [np.arange(len(ds.test))])


def measure(name: str, stream: Stream, budget: int) -> dict:
  learner = (learners.get("slda", num_classes=10, checked=False) if name == "slda" else
             learners.get("er", num_classes=10, model="mlp", memory_size=1000, checked=False))
  samples = []

  def log(msg: str) -> None:
    if f"[{name}] step " in msg:
      samples.append(rss_mib())

  wd = tempfile.mkdtemp(prefix="cljax_memory_bench_")
  try:
    before = rss_mib()
    opts = runner.RunOptions(batch_size=32, budget=budget if name == "er" else None)
    t0 = time.perf_counter()
    res = runner.run_learner(name, learner, stream, opts, wd, log=log)
    wall = time.perf_counter() - t0
  finally:
    shutil.rmtree(wd, ignore_errors=True)
  # A leak grows with the examples streamed; warm-up (allocator pools, programs compiled for
  # the first evaluation and end of step) does not. So: the least-squares slope of RSS against
  # examples seen over the second half of the stream.
  seen = np.cumsum([len(s) for s in stream.steps])
  half = len(samples) // 2
  slope = float(np.polyfit(seen[half:], samples[half:], 1)[0]) * 1e5
  return {"learner": name, "examples": stream.num_examples, "steps": stream.num_steps,
          "rss_before_mib": before, "rss_after_step1_mib": samples[0],
          "rss_middle_mib": samples[half], "rss_end_mib": samples[-1],
          "rss_per_step_mib": samples,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "growth_mib": samples[-1] - samples[0],
          "second_half_slope_mib_per_100k_examples": slope,
          "final_accuracy": res["final_accuracy"], "wall_s": wall}


def main(argv):
  del argv
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()
  stream = _stream(_CYCLES.value, _STEPS.value)
  print(f"{stream.describe()}; RSS with the data loaded {rss_mib():.0f} MiB", flush=True)
  rows = []
  for name in _LEARNERS.value:
    r = measure(name, stream, _BUDGET.value)
    rows.append(r)
    print(f"{name:<5} {r['examples']:,} ex in {r['wall_s']:.0f}s | RSS (MiB) before "
          f"{r['rss_before_mib']:.0f}, after step 1 {r['rss_after_step1_mib']:.0f}, middle "
          f"{r['rss_middle_mib']:.0f}, end {r['rss_end_mib']:.0f}, peak {r['peak_rss_mib']:.0f} "
          f"| second-half slope {r['second_half_slope_mib_per_100k_examples']:+.1f} MiB per 100k "
          f"examples | final accuracy {r['final_accuracy']:.4f}", flush=True)
  out = {"rows": rows, "jax": jax.__version__, "backend": jax.default_backend(),
         "load_avg": os.getloadavg()}
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
