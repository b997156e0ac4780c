r"""Choosing DietCL's threshold B̄ by validation on the first time steps, as the paper does.

  python experiments/studies/dietcl_threshold.py --workdir=/tmp/threshold \
      --config=experiments/configs/dietcl.py --candidates=0,20,40,60,80 --repeats=2
  python experiments/run.py --workdir=W --config=experiments/configs/dietcl.py \
      --config.hparams.dietcl.threshold=<the B̄ printed>

Zhang et al. (ICLR 2024) pick B̄ (the budget below which a step's passes are split equally among
the three sources; passes above it go to buffer-only fine-tuning) by validation on the first 3
steps of the stream (≈400-450 steps of 1024 on ImageNet10K). This study does that through the
ordinary runner:

* from each of the first ``num_steps`` steps of the config's stream, a stratified
  ``val_fraction`` of the *labelled* rows of every class is held out (``validation_mask``);
  held-out rows leave the step entirely (neither label nor image reaches training) and become the
  test set of a validation stream (``validation_stream``), so the score is on unseen examples of
  the training distribution, never on the test set;
* ``dietcl`` runs that stream once per candidate B̄ (``cljax.app.runner.run_learner``), with the
  config's budget, base initialisation, seed and every other hyper-parameter;
* the score of a candidate is its accuracy after the last of those steps on the held-out rows of
  all classes seen (it rewards learning the new classes and keeping the old ones); the best
  candidate wins, ties going to the earlier one. ``repeats`` draws of held-out rows are averaged.

A candidate B̄ >= the budget gives the all-joint allocation, so candidates above the budget all
score the same; only thresholds in [0, budget] are distinct choices.

Writes WORKDIR/threshold.json (``{"best", "scores", "table", ...}``) and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Sequence

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cljax.data.sources import ArraySource, Dataset  # noqa: E402
from cljax.data.streams import Stream  # noqa: E402


def validation_mask(labels: np.ndarray, labeled: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
  """Held-out rows [n] bool: per class, round(fraction · its labelled rows) of them, at least 1
  where the class has 2 or more labelled rows (so every class with a spare label is scored) and
  never all of them (so every class keeps a training label)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
  out = np.zeros(len(labels), bool)
  for c in np.unique(labels[labeled]):
    idx = np.flatnonzero(labeled & (labels == c))
    k = min(max(int(round(fraction * len(idx))), 1 if len(idx) >= 2 else 0), len(idx) - 1)
    out[rng.choice(idx, k, replace=False)] = True
  return out


def validation_stream(stream: Stream, num_steps: int, val_fraction: float, seed: int) -> Stream:
  """The first ``num_steps`` steps of ``stream`` without their held-out rows, whose test set is
  those held-out rows (``validation_mask`` per step; tasks keep their classes)."""
  rng = np.random.default_rng(seed)
  steps, labeled, labels, held_idx, held_y = [], [], [], [], []
  for t in range(min(int(num_steps), stream.num_steps)):
    idx, lab, y = stream.steps[t], stream.labeled[t], stream.labels[t]
    held = validation_mask(y, lab, val_fraction, rng)
    steps.append(idx[~held])
    labeled.append(lab[~held])
    labels.append(y[~held])
    held_idx.append(idx[held])
    held_y.append(y[held])
  held_idx, held_y = np.concatenate(held_idx), np.concatenate(held_y).astype(np.int32)
  if len(held_y) == 0:
    raise ValueError("dietcl_threshold: no labelled rows to hold out in the first steps")
  train = stream.dataset.train
  val = ArraySource(f"{train.name}:validation", train.x[held_idx], held_y)
  ds = Dataset(stream.dataset.name, train, val, stream.dataset.num_classes,
               stream.dataset.class_names)
  tasks = [j for j, s in enumerate(stream.task_step) if s < len(steps)]
  test_index = [np.flatnonzero(np.isin(held_y, stream.tasks[j])) for j in tasks]
  return dataclasses.replace(stream, dataset=ds, steps=steps, labeled=labeled, labels=labels,
                             tasks=[stream.tasks[j] for j in tasks],
                             task_step=[stream.task_step[j] for j in tasks],
                             test_index=test_index)


def select_threshold(config, candidates: Sequence[int], workdir: str, *, num_steps: int = 3,
                     val_fraction: float = 0.2, repeats: int = 1,
                     log: Callable[[str], None] = print) -> dict:
  """Scores every candidate B̄ on validation streams of ``config`` (module docstring).

  Args:
    config: a dietcl experiment config (``experiments/configs/dietcl.py``); its stream, budget,
      base initialisation, seed and ``hparams.dietcl`` are used, ``threshold`` replaced.
    candidates: thresholds B̄ to try, in passes (ints >= 0).
    workdir: the base initialisation (WORKDIR/base_init, trained or loaded as by ``run.py``) and
      the runs' checkpoints (WORKDIR/runs) go here.
    num_steps: first steps of the stream used (the paper: 3).
    val_fraction: share of each class's labelled rows held out per step (``validation_mask``).
    repeats: draws of held-out rows (seeds config.seed, config.seed + 1, ...), averaged.
    log: one line per candidate and draw.

  Returns ``{"best", "scores": {B̄: mean accuracy}, "table": [{"threshold", "accuracy",
  "step_accuracy", "draws", "seconds"}], "num_steps", "val_rows", "budget", "repeats"}``:
  ``accuracy`` is the mean over draws of the accuracy after the last step, ``step_accuracy`` that
  mean after every step, ``draws`` the per-draw accuracies after the last step.
  """
  # pylint: disable=import-outside-toplevel
  import dataclasses
  from cljax.app import experiment, runner, settings as settings_lib
  cands = [int(c) for c in candidates]
  if not cands or min(cands) < 0:
    raise ValueError(f"candidates must be a non-empty list of thresholds >= 0, got {candidates}")
  settings = settings_lib.from_config(config, log)  # the config is read here, once
  if "dietcl" not in settings.run_names:
    raise ValueError(f"the config has no run 'dietcl' (runs: {settings.run_names}); add it to "
                     "config.learners")
  spec = settings.learner("dietcl")
  if spec.hparams.get("allocation", "paper") != "paper":
    raise ValueError("the threshold B̄ belongs to allocation='paper'")
  stream = experiment.make_stream(settings.stream)
  base = experiment.base_model(settings, stream, workdir, log)
  opts = settings.run
  table = {c: {"threshold": c, "draws": [], "steps": [], "seconds": 0.0} for c in cands}
  val_rows = 0
  for r in range(int(repeats)):
    vstream = validation_stream(stream, num_steps, val_fraction, settings.run.seed + r)
    val_rows += len(vstream.dataset.test)
    inputs = experiment.learner_inputs(settings, vstream, base)
    for cand in cands:
      t0 = time.perf_counter()
      cand_spec = dataclasses.replace(spec, hparams={**spec.hparams, "threshold": cand})
      learner = experiment.build_learner(cand_spec, vstream.dataset.num_classes, inputs)
      res = runner.run_learner(f"dietcl_b{cand}_r{r}", learner, vstream, opts,
                               os.path.join(workdir, "runs"), log=lambda m: None)
      acc = res["steps"][-1]["accuracy_seen"]
      table[cand]["draws"].append(acc)
      table[cand]["steps"].append([s["accuracy_seen"] for s in res["steps"]])
      table[cand]["seconds"] += time.perf_counter() - t0
      log(f"[threshold] B̄={cand} draw {r + 1}/{repeats}: validation accuracy {acc:.4f} after "
          f"{vstream.num_steps} steps ({time.perf_counter() - t0:.0f}s)")
  rows = []
  for c in cands:
    row = table[c]
    row["accuracy"] = float(np.mean(row["draws"]))
    row["step_accuracy"] = np.mean(row.pop("steps"), axis=0).tolist()
    rows.append(row)
  best = max(rows, key=lambda r: r["accuracy"])["threshold"]  # max keeps the first of ties
  return {"best": best, "scores": {r["threshold"]: r["accuracy"] for r in rows}, "table": rows,
          "num_steps": min(int(num_steps), stream.num_steps), "val_rows": int(val_rows),
          "budget": int(opts.budget), "repeats": int(repeats)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()
  workdir = FLAGS.workdir

  def run():
    os.makedirs(workdir, exist_ok=True)
    res = select_threshold(_CONFIG.value, [int(c) for c in FLAGS.candidates], workdir,
                           num_steps=FLAGS.num_steps, val_fraction=FLAGS.val_fraction,
                           repeats=FLAGS.repeats)
    with open(os.path.join(workdir, "threshold.json"), "w") as f:
      json.dump(res, f, indent=1)
    print(f"{'B̄':>6} {'accuracy':>9} {'seconds':>8}")
    for row in res["table"]:
      print(f"{row['threshold']:>6} {row['accuracy']:>9.4f} {row['seconds']:>8.0f}")
    print(f"best B̄ = {res['best']}: run with --config.hparams.dietcl.threshold={res['best']}")

  cli.run_or_exit(run)


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  _DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                          "dietcl.py")
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "A DietCL experiment config.")
  flags.DEFINE_string("workdir", None, "Where threshold.json and the runs go.", required=True)
  flags.DEFINE_list("candidates", ["0", "20", "40", "60", "80"], "Thresholds B̄ to try (passes).")
  flags.DEFINE_integer("num_steps", 3, "Steps of the stream used (the paper: 3).")
  flags.DEFINE_float("val_fraction", 0.2, "Share of each class's labels held out per step.")
  flags.DEFINE_integer("repeats", 2, "Draws of held-out rows, averaged.")
  FLAGS = flags.FLAGS
  app.run(main)
