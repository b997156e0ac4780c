r"""State size and update latency at batch size 1 of every run of a config, and the head-to-head
table of ``experiments/configs/frozen_features.py``.

    python experiments/studies/frozen_features.py --config=experiments/configs/frozen_features.py:mnist5k \
        --out=/tmp/lat.json
    python experiments/studies/frozen_features.py \
        --config=experiments/configs/frozen_features.py:mnist5k,maps --workdir=/tmp/maps/seed0 \
        --out=/tmp/lat_maps.json
    python experiments/studies/frozen_features.py --table=/tmp/ci/seeds.json,/tmp/maps/seeds.json \
        --latency=/tmp/lat.json,/tmp/lat_maps.json

Latency and memory (until the runner records them): each run's bare learner (``checked=False``,
as the runner drives it) is built with the inputs the experiment would give it (the base
initialisation loaded from ``--workdir``'s ``base_init`` when the config has one), initialised,
and fed the stream's first ``--calls`` + 10 training examples one at a time; the first 10 calls
(compiles) are dropped and the median and 99th percentile of the wall time of one ``update``
(until its result is ready) are reported, with the state's size in bytes (every array leaf; fixed
shapes, so the size after ``init`` is the size at any point of the stream).

``--table`` prints the markdown table of ``experiments/studies/seeds.py``'s seeds.json files, or
of seeds workdirs (the runs their seed*/results.json hold so far), with final and average
accuracy, Ω and examples/s (mean ± std over the seeds) and the latency columns.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config")
flags.DEFINE_string("workdir", "", "where the base initialisation is loaded from (or saved)")
flags.DEFINE_integer("calls", 200, "timed update calls per learner (after 10 warm-up calls)")
flags.DEFINE_string("out", "", "JSON file for the latency and memory records")
flags.DEFINE_string("table", "", "comma-separated seeds.json files or seeds workdirs")
flags.DEFINE_string("latency", "", "comma-separated latency JSON files (--out) for the table")


def state_bytes(state) -> int:
  """Bytes of every array leaf of ``state``."""
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(getattr(a, "nbytes", 0) for a in jax.tree.leaves(state)))


def measure(config, workdir: str, calls: int) -> list:
  """[{run, learner, state_bytes, latency_ms_median, latency_ms_p99}] of every run of config."""
  import jax  # pylint: disable=import-outside-toplevel
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  from cljax.app import settings as settings_lib  # pylint: disable=import-outside-toplevel
  settings = settings_lib.from_config(config)
  stream = experiment.make_stream(settings.stream)
  base = None
  if settings.base_init.classes > 0 or settings.base_init.checkpoint:
    base = experiment.base_model(settings, stream, workdir or "/tmp/frozen_features_base")
  inputs = experiment.learner_inputs(settings, stream, base)
  src = stream.dataset.train
  n = calls + 10
  x = np.asarray(src.batch(np.arange(n)), np.float32)
  y = np.asarray(src.y[:n], np.int32)
  k = stream.dataset.num_classes
  out = []
  for spec in settings.learners:
    learner = experiment.build_learner(spec, k, inputs)
    state = learner.init(jax.random.key(0), {"x": x[:1], "y": y[:1]})
    size = state_bytes(state)
    times = []
    for i in range(n):
      b = {"x": x[i:i + 1], "y": y[i:i + 1], "valid": np.ones(1, bool),
           "labeled": np.ones(1, bool)}
      t = time.perf_counter()
      state, info = learner.update(state, b, jax.random.key(i))
      jax.block_until_ready((state, info))
      times.append(time.perf_counter() - t)
    ms = 1e3 * np.asarray(times[10:])
    rec = dict(run=spec.name, learner=spec.learner, state_bytes=size,
               latency_ms_median=float(np.median(ms)), latency_ms_p99=float(np.percentile(ms, 99)))
    print(json.dumps(rec), flush=True)
    out.append(rec)
  return out


def _fmt(m, s, scale=1.0, digits=3):
  if m is None:
    return "-"
  return f"{m * scale:.{digits}f} ± {(s or 0.0) * scale:.{digits}f}"


def _summary(path: str) -> dict:
  """A seeds.json, or for a seeds workdir still running (or stopped), the summary of the runs
  its seed*/results.json files hold so far (``seeds.summarize`` of ``seeds.cells_of``)."""
  if path.endswith(".json"):
    with open(path) as fh:
      return json.load(fh)
  from experiments.studies import seeds  # pylint: disable=import-outside-toplevel
  cells = []
  for sub in sorted(os.listdir(path)):
    res = os.path.join(path, sub, "results.json")
    if sub.startswith("seed") and os.path.exists(res):
      with open(res) as fh:
        cells += seeds.cells_of(json.load(fh), seed=int(sub[4:]))
  return {"summary": seeds.summarize(cells)}


def table(seed_files: list, latency_files: list) -> str:
  """Markdown rows: run, final, average, Ω, ex/s (mean ± std), state bytes, latency median/p99."""
  lat = {}
  for f in latency_files:
    with open(f) as fh:
      for r in json.load(fh):
        lat[r["run"]] = r
  lines = ["| stream | run | seeds | final acc | average acc | Ω | examples/s | state bytes | "
           "update ms, median / p99 (batch 1) |", "|---|---|---|---|---|---|---|---|---|"]
  for f in seed_files:
    d = _summary(f)
    name = os.path.basename(os.path.dirname(os.path.abspath(f))) if f.endswith(".json") else \
        os.path.basename(os.path.abspath(f))
    for r in d["summary"]:
      lr = lat.get(r["learner"], {})
      lines.append(
          f"| {name} | {r['learner']} | {r['n']} | {_fmt(r.get('final_accuracy_mean'), r.get('final_accuracy_std'))}"
          f" | {_fmt(r.get('average_accuracy_mean'), r.get('average_accuracy_std'))} | "
          f"{_fmt(r.get('omega_mean'), r.get('omega_std'))} | "
          f"{_fmt(r.get('examples_per_s_mean'), r.get('examples_per_s_std'), digits=0)} | "
          + (f"{lr['state_bytes']:,} | " if lr else "- | ")
          + (f"{lr['latency_ms_median']:.2f} / {lr['latency_ms_p99']:.2f} |" if lr else "- |"))
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.table:
    print(table(FLAGS.table.split(","), [f for f in FLAGS.latency.split(",") if f]))
    return
  if FLAGS.config is None:
    raise app.UsageError("error: give --config=... (latency) or --table=... (the table)")
  recs = measure(FLAGS.config, FLAGS.workdir, FLAGS.calls)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(recs, f, indent=1)


if __name__ == "__main__":
  app.run(main)
