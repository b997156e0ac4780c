r"""The head-to-head table of ``experiments/configs/frozen_features.py``: one row per stream and
run, from ``experiments/studies/seeds.py``'s seeds.json files or seeds workdirs (the runs their
seed*/results.json hold so far).

    python experiments/studies/seeds.py --config=experiments/configs/frozen_features.py:mnist5k \
        --seeds=0,1,2 --workdir=/tmp/ci
    python experiments/studies/frozen_features.py --table=/tmp/ci/seeds.json,/tmp/maps/seeds.json

Columns: final and average accuracy, Ω and examples/s (mean ± std over the seeds), and the state's
size in bytes and the median / 99th-percentile wall time of one batch-1 ``update``, both as the
runner records them in results.json (``state_bytes``, ``latency_ms``).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FLAGS = flags.FLAGS
flags.DEFINE_string("table", None, "comma-separated seeds.json files or seeds workdirs",
                    required=True)


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


def table(seed_files: list) -> str:
  """Markdown rows: stream, run, seeds, final, average, Ω, ex/s (mean ± std), state bytes,
  batch-1 update latency median / p99 (means over the seeds)."""
  lines = ["| stream | run | seeds | final acc | average acc | Ω | examples/s | state bytes | "
           "update ms, median / p99 (batch 1) |", "|---|---|---|---|---|---|---|---|---|"]
  for f in seed_files:
    d = _summary(f)
    name = os.path.basename(os.path.dirname(os.path.abspath(f))) if f.endswith(".json") else \
        os.path.basename(os.path.abspath(f))
    for r in d["summary"]:
      size, med, p99 = (r.get(k + "_mean") for k in
                        ("state_bytes", "latency_ms_median", "latency_ms_p99"))
      lines.append(
          f"| {name} | {r['learner']} | {r['n']} | "
          f"{_fmt(r.get('final_accuracy_mean'), r.get('final_accuracy_std'))} | "
          f"{_fmt(r.get('average_accuracy_mean'), r.get('average_accuracy_std'))} | "
          f"{_fmt(r.get('omega_mean'), r.get('omega_std'))} | "
          f"{_fmt(r.get('examples_per_s_mean'), r.get('examples_per_s_std'), digits=0)} | "
          + (f"{size:,.0f} | " if size is not None else "- | ")
          + (f"{med:.2f} / {p99:.2f} |" if med is not None else "- |"))
  return "\n".join(lines)


def main(argv):
  del argv
  print(table(FLAGS.table.split(",")))


if __name__ == "__main__":
  app.run(main)
