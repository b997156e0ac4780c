r"""Any experiment config over several seeds: mean ± std per learner, a table and a plot.

  python experiments/studies/seeds.py --workdir=/tmp/remind_seeds \
      --config=experiments/configs/remind.py --config.learners=remind,er,finetune --seeds=0,1,2
  python experiments/studies/seeds.py --workdir=/tmp/slda_seeds \
      --config=experiments/configs/slda.py --seeds=0,1,2
  python experiments/studies/seeds.py --workdir=DIR --config=experiments/configs/dietcl.py \
      --config.learners=dietcl,er,l2p,cassle,dualnet,ccic --share_base

A seed changes the stream (class order, example order, which labels are kept), the base
initialisation and every learner's keys (``config.seed``). With ``--share_base`` the first seed's
base initialisation (DIR/seed<S>/base_init) is loaded by the later seeds, so they differ only in
the stream and the learners' draws (one MAE-pretrained ViT for all seeds, as a pretrained model
would be). Each seed is one
``cljax.app.experiment.run_experiment`` in DIR/seed<S>/ (its own results.json, plots and base
initialisation). Writes DIR/seeds.json (``{"cells": [{seed, learner, final_accuracy,
average_accuracy, forgetting, omega, passes_per_step, examples_per_s, wall_s}], "summary": [{learner, n, final_mean, final_std,
...}]}``), DIR/seeds.png (final and average accuracy per learner, ±1 std) and prints the table.
The helpers (``summarize``, ``table``, ``bar_plot``) are shared by the other seed studies.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

METRICS = ("final_accuracy", "average_accuracy", "forgetting", "omega", "passes_per_step",
           "examples_per_s", "wall_s", "state_bytes", "latency_ms_median", "latency_ms_p99")


def summarize(cells: Sequence[dict], keys: Sequence[str] = ("learner",),
              metrics: Sequence[str] = METRICS) -> list:
  """Groups ``cells`` (dicts) by ``keys`` and gives each metric's mean and std (population,
  ddof 0) over the group: [{**key values, "n": seeds, "<metric>_mean", "<metric>_std",
  "<metric>_all"}] in first-seen order. Missing or None metrics are left out."""
  groups: dict = {}
  for c in cells:
    groups.setdefault(tuple(c[k] for k in keys), []).append(c)
  out = []
  for kv, rows in groups.items():
    row = dict(zip(keys, kv), n=len(rows))
    for m in metrics:
      vals = [r[m] for r in rows if r.get(m) is not None]
      if vals:
        row[f"{m}_mean"] = float(np.mean(vals))
        row[f"{m}_std"] = float(np.std(vals))
        row[f"{m}_all"] = [float(v) for v in vals]
    out.append(row)
  return out


def _fmt(row: dict, m: str) -> str:
  if m + "_mean" not in row:
    return "-"
  f = {"passes_per_step": "{:.1f}", "examples_per_s": "{:,.0f}", "wall_s": "{:.0f}"}.get(m, "{:.3f}")
  return f"{f.format(row[m + '_mean'])} ± {f.format(row[m + '_std'])}"


def table(summary: Sequence[dict], keys: Sequence[str] = ("learner",),
          metrics: Sequence[str] = ("final_accuracy", "average_accuracy")) -> str:
  """A markdown table: one row per group, "mean ± std" per metric (accuracies to 3 decimals,
  passes to 1, examples/s and seconds to whole numbers)."""
  head = [*keys, "n", *metrics]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in summary:
    vals = [str(r[k]) for k in keys] + [str(r["n"])]
    vals += [_fmt(r, m) for m in metrics]
    lines.append("| " + " | ".join(vals) + " |")
  return "\n".join(lines)


def bar_plot(summary: Sequence[dict], path: str, title: str, label_key: str = "learner",
             metrics: Sequence[str] = ("final_accuracy", "average_accuracy")) -> str:
  """Grouped bars (one group per row of ``summary``, one bar per metric), ±1 std error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(summary)), 4))
  xs = np.arange(len(summary))
  width = 0.8 / len(metrics)
  for i, m in enumerate(metrics):
    mean = [r.get(m + "_mean", np.nan) for r in summary]
    std = [r.get(m + "_std", 0.0) for r in summary]
    ax.bar(xs + (i - (len(metrics) - 1) / 2) * width, mean, width, yerr=std, capsize=3,
           label=m.replace("_", " "))
  ax.set_xticks(xs, [str(r[label_key]) for r in summary], rotation=20)
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def metrics_of(run: dict) -> dict:
  """The summary metrics (``METRICS``) of one learner's result record; ``passes_per_step`` is
  the mean budget spent per step, ``latency_ms_median`` / ``_p99`` the runner's batch-1 update
  latency (``latency_ms``)."""
  steps = run.get("steps") or []
  out = {m: run.get(m) for m in METRICS}
  latency = run.get("latency_ms") or {}
  out["latency_ms_median"], out["latency_ms_p99"] = latency.get("median"), latency.get("p99")
  out["passes_per_step"] = (float(np.mean([s["budget_used"] for s in steps])) if steps else None)
  return out


def cells_of(results: dict, **extra) -> list:
  """One cell per run of an experiment's results (``run_experiment``'s return value)."""
  return [{**extra, "learner": name, **metrics_of(run)} for name, run in results["runs"].items()]


def run_seeds(config, seeds: Sequence[int], workdir: str, share_base: bool = False,
              overrides: Optional[Callable] = None, log: Callable = print) -> dict:
  """Runs ``config`` once per seed (module docstring), ``overrides(config)`` applied to each
  copy; returns {"cells", "summary", "seeds", "config", "wall_s"}."""
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  cells, base, t0 = [], "", time.perf_counter()
  for i, s in enumerate(seeds):
    c = config.copy_and_resolve_references()
    c.seed = int(s)
    if share_base and base:
      c.base_init.checkpoint = base
    if overrides is not None:
      overrides(c)
    sdir = os.path.join(workdir, f"seed{s}")
    res = experiment.run_experiment(c, sdir, log=log)
    if share_base and not base and "base_init" in res:
      base = os.path.join(sdir, "base_init")
    cells += cells_of(res, seed=int(s))
    el = time.perf_counter() - t0
    log(f"[seeds] seed {s} done ({i + 1}/{len(seeds)}) | ETA "
        f"{el / (i + 1) * (len(seeds) - i - 1):.0f}s")
  out = {"cells": cells, "summary": summarize(cells), "seeds": [int(s) for s in seeds],
         "config": config.to_dict(), "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "seeds.json"), "w") as f:
    json.dump(out, f, indent=1, default=str)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()
  workdir = flags.FLAGS.workdir
  out = run_seeds(_CONFIG.value, [int(s) for s in flags.FLAGS.seeds], workdir,
                  share_base=flags.FLAGS.share_base, log=lambda m: print(m, flush=True))
  png = bar_plot(out["summary"], os.path.join(workdir, "seeds.png"),
                 f"{len(out['seeds'])} seeds, mean ± std")
  print(table(out["summary"], metrics=("final_accuracy", "average_accuracy", "forgetting",
                                       "omega", "passes_per_step", "examples_per_s", "wall_s")))
  print(f"[seeds] wrote {os.path.join(workdir, 'seeds.json')}, {png} ({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string("workdir", None, "Where the seed runs and seeds.json go.", required=True)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed) to run.")
  flags.DEFINE_bool("share_base", False, "Later seeds load the first seed's base initialisation.")
  app.run(main)
