r"""One experiment config over several seeds: a table of mean ± std per learner.

  python experiments/studies/seeds.py --workdir=/tmp/ci3 \
      --config=experiments/configs/class_incremental.py --seeds=0,1,2
  python experiments/studies/seeds.py --workdir=DIR --config=experiments/configs/dietcl.py \
      --config.learners=dietcl,er,l2p,cassle,dualnet,ccic --share_base

Each seed is one ``run_experiment`` of the config with ``seed`` set (the stream's class order and
shuffles, the base initialisation and every learner's keys follow it), in DIR/seed<S>. With
``--share_base`` the first seed's base initialisation (WORKDIR/seed<S>/base_init) is loaded by
the later seeds, so they differ only in the stream and the learners' draws (e.g. one
MAE-pretrained ViT for all seeds, as a pretrained model would be).

Writes DIR/seeds.json (``{"seeds": [...], "runs": {seed: {learner: metrics}}, "summary":
{learner: {metric: [mean, std]}}}``) and prints a markdown table: final and average accuracy,
forgetting, budget spent per step, examples per second (the runner's, evaluation included) and
wall time, each as mean ± std over the seeds.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

METRICS = ("final_accuracy", "average_accuracy", "forgetting", "passes_per_step",
           "examples_per_s", "wall_s")

F = {}  # flags, defined only when run as a script


def _define_flags() -> None:
  F["config"] = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  F["workdir"] = flags.DEFINE_string("workdir", None, "Where seeds.json and the runs go.",
                                     required=True)
  F["seeds"] = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  F["share_base"] = flags.DEFINE_bool("share_base", False, "Later seeds load the first seed's "
                                      "base initialisation.")


def metrics_of(run: dict) -> dict:
  """The summary metrics (``METRICS``) of one learner's result record."""
  steps = run.get("steps") or []
  return {"final_accuracy": run["final_accuracy"], "average_accuracy": run["average_accuracy"],
          "forgetting": run["forgetting"],
          "passes_per_step": (float(np.mean([s["budget_used"] for s in steps])) if steps
                              else None),
          "examples_per_s": run.get("examples_per_s"), "wall_s": run.get("wall_s")}


def summarise(runs: dict) -> dict:
  """{learner: {metric: [mean, std]}} over seeds from {seed: {learner: metrics}}."""
  out = {}
  learners = list(next(iter(runs.values())))
  for name in learners:
    out[name] = {}
    for m in METRICS:
      vals = [runs[s][name][m] for s in runs if runs[s].get(name, {}).get(m) is not None]
      out[name][m] = [float(np.mean(vals)), float(np.std(vals))] if vals else None
  return out


def run_seeds(config, workdir: str, seeds, share_base: bool = False,
              overrides: Optional[Callable] = None, log=print) -> dict:
  """Runs ``config`` once per seed (module docstring); returns the seeds.json record."""
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  runs, base, t0 = {}, "", time.perf_counter()
  for i, s in enumerate(int(s) for s in seeds):
    c = copy.deepcopy(config)
    c.seed = s
    if share_base and base:
      c.base_init.checkpoint = base
    if overrides is not None:
      overrides(c)
    sdir = os.path.join(workdir, f"seed{s}")
    res = experiment.run_experiment(c, sdir, log=log)
    if share_base and not base and "base_init" in res:
      base = os.path.join(sdir, "base_init")
    runs[str(s)] = {name: metrics_of(r) for name, r in res["runs"].items()}
    el = time.perf_counter() - t0
    log(f"[seeds] seed {s} done ({i + 1}/{len(seeds)}) | {el:.0f}s")
  out = {"seeds": [int(s) for s in seeds], "runs": runs, "summary": summarise(runs),
         "config": config.to_dict(), "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "seeds.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def _cell(v, fmt: str) -> str:
  return "-" if v is None else f"{fmt.format(v[0])} ± {fmt.format(v[1])}"


def table(out: dict) -> str:
  """A markdown table of ``out["summary"]``, one row per learner."""
  head = ("| learner | final | average | forgetting | passes/step | ex/s | wall s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
  rows = []
  for name, m in out["summary"].items():
    rows.append(f"| {name} | {_cell(m['final_accuracy'], '{:.3f}')} | "
                f"{_cell(m['average_accuracy'], '{:.3f}')} | {_cell(m['forgetting'], '{:.3f}')} "
                f"| {_cell(m['passes_per_step'], '{:.1f}')} | "
                f"{_cell(m['examples_per_s'], '{:,.0f}')} | {_cell(m['wall_s'], '{:.1f}')} |")
  return "\n".join([head, *rows])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if F["config"].value is None:
    raise app.UsageError("--config=experiments/configs/NAME.py is required")
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get("CLJAX_JAX_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["CLJAX_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  out = run_seeds(F["config"].value, F["workdir"].value, F["seeds"].value,
                  F["share_base"].value, log=lambda m: print(m, flush=True))
  print(table(out))
  print(f"[seeds] wrote {os.path.join(F['workdir'].value, 'seeds.json')} "
        f"({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
