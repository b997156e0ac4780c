r"""Stratified k-fold validation of any experiment config: mean ± std per learner over the folds.

  python experiments/studies/kfold.py --workdir=/tmp/kfold \
      --config=experiments/configs/demo.py --folds=5
  python experiments/studies/kfold.py --workdir=DIR --config=tests/configs/tiny.py --folds=3 \
      --config.dataset=iris --config.stream.classes_per_step=1

The data set's training rows are dealt into ``--folds`` stratified folds (every class's rows in a
seed-determined random order, row i of a class in fold i mod k: ``cljax.data.streams
.split_validation``); run f holds fold f out of training as its validation split
(``eval.val_folds`` = k, ``eval.val_fold`` = f) and trains on the rest, laid out as the config
says. Each fold is one ``cljax.app.experiment.run_experiment`` in DIR/fold<f>/ (its own
results.json and plots). The validation figures are the final step's ``val_accuracy`` and
``val_loss`` (on the held-out rows of every step); test figures are on the test split as usual.

Writes DIR/kfold.json (``{"cells": [{fold, learner, val_accuracy, val_loss, final_accuracy, ...}],
"summary": [{learner, n, <metric>_mean, <metric>_std, <metric>_all}]}``), DIR/kfold.png and
prints the table: the same summary, table and plot code as the seeds study
(``experiments/studies/seeds.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.studies import seeds  # noqa: E402  pylint: disable=wrong-import-position

METRICS = ("val_accuracy", "val_loss") + seeds.METRICS


def cells_of(results: dict, fold: int) -> list:
  """One cell per run of a fold's results: the seeds study's metrics and the final step's
  validation accuracy and loss."""
  out = seeds.cells_of(results, fold=fold)
  for cell in out:
    last = (results["runs"][cell["learner"]].get("steps") or [{}])[-1]
    cell.update(val_accuracy=last.get("val_accuracy"), val_loss=last.get("val_loss"))
  return out


def run_folds(config, folds: int, workdir: str, log: Callable = print) -> dict:
  """Runs ``config`` once per fold (module docstring); returns {"cells", "summary", "folds",
  "config", "wall_s"} and writes it to DIR/kfold.json."""
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  from cljax.app.config_schema import ConfigError  # pylint: disable=import-outside-toplevel
  if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
    raise ConfigError(f"--folds must be an integer >= 2, got {folds!r}")
  if config.eval.val_fraction:
    log(f"[kfold] the config's eval.val_fraction={config.eval.val_fraction} is replaced by the "
        "held-out fold")
  os.makedirs(workdir, exist_ok=True)
  cells, t0 = [], time.perf_counter()
  for f in range(folds):
    c = config.copy_and_resolve_references()
    c.eval.val_fraction, c.eval.val_folds, c.eval.val_fold = 0.0, folds, f
    res = experiment.run_experiment(c, os.path.join(workdir, f"fold{f}"), log=log)
    cells += cells_of(res, f)
    el = time.perf_counter() - t0
    log(f"[kfold] fold {f} done ({f + 1}/{folds}) | ETA {el / (f + 1) * (folds - f - 1):.0f}s")
  out = {"cells": cells, "summary": seeds.summarize(cells, metrics=METRICS), "folds": folds,
         "config": config.to_dict(), "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "kfold.json"), "w") as fh:
    json.dump(out, fh, indent=1, default=str)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()
  workdir = flags.FLAGS.workdir

  def go():
    out = run_folds(_CONFIG.value, flags.FLAGS.folds, workdir,
                    log=lambda m: print(m, flush=True))
    png = seeds.bar_plot(out["summary"], os.path.join(workdir, "kfold.png"),
                         f"{out['folds']}-fold validation, mean ± std",
                         metrics=("val_accuracy", "final_accuracy"))
    print(seeds.table(out["summary"], metrics=("val_accuracy", "val_loss", "final_accuracy",
                                               "average_accuracy", "forgetting", "wall_s")))
    print(f"[kfold] wrote {os.path.join(workdir, 'kfold.json')}, {png} ({out['wall_s']:.0f}s)")

  cli.run_or_exit(go)  # a bad config or data: one line `error: ...`, exit status 2


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string("workdir", None, "Where the fold runs and kfold.json go.", required=True)
  flags.DEFINE_integer("folds", 5, "Number of stratified folds (k >= 2).")
  app.run(main)
