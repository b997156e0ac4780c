"""The result record of one learner's run, and the table's columns: the one place both live.

A run's record (what ``results.json`` holds under ``runs/<name>``, built by ``record``):

* ``final_accuracy`` A(T), ``average_accuracy`` Ā, ``forgetting``, ``backward_transfer``: from the
  accuracy matrix (``cljax.eval.metrics``);
* ``final_top1`` / ``final_top5`` / ``mean_per_class_accuracy`` / ``confusion_matrix`` /
  ``precision`` / ``recall`` / ``f1``: on the test examples of all seen classes after the last step;
* ``accuracy_matrix`` [T][J] (None for tasks not yet introduced), ``steps`` (per step: accuracy,
  examples seen, wall seconds, examples/s, budget used), ``eval_points`` (anytime evaluation:
  step, examples seen, accuracy on all seen classes), ``wall_s``, ``examples_per_s``;
* ``omega``: Ω against the offline run (``add_omega``; None without one).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cljax.eval import metrics as M

# (column title, format, how to read it from a run's record) of the printed table.
COLUMNS = (
    ("final", "{:>7.4f}", lambda r: r.get("final_accuracy")),
    ("average", "{:>8.4f}", lambda r: r.get("average_accuracy")),
    ("forgetting", "{:>10.4f}", lambda r: r.get("forgetting")),
    ("bwt", "{:>8.4f}", lambda r: r.get("backward_transfer")),
    ("omega", "{:>7.4f}", lambda r: r.get("omega")),
    ("top5", "{:>7.4f}", lambda r: r.get("final_top5")),
    ("budget", "{:>8.0f}", lambda r: sum(s["budget_used"] for s in r.get("steps", []))),
    ("wall_s", "{:>8.1f}", lambda r: r.get("wall_s")),
    ("ex/s", "{:>8.0f}", lambda r: r.get("examples_per_s")),
)


def record(acc_rows: list, task_step: list, steps: list, eval_points: list, final: dict,
           wall: float) -> dict:
  """The result record of a run (module docstring); ``final`` is the last step's full
  evaluation (``cljax.train.runner.evaluate(..., full=True)``)."""
  acc = np.asarray([[np.nan if v is None else v for v in row] for row in acc_rows], float)
  n = steps[-1]["examples_seen"] if steps else 0
  return {
      "final_accuracy": M.final_accuracy(acc, task_step),
      "average_accuracy": M.average_accuracy(acc, task_step),
      "forgetting": M.forgetting(acc, task_step),
      "backward_transfer": M.backward_transfer(acc, task_step),
      "final_top1": final.get("accuracy"),
      "final_top5": final.get("top5"),
      "mean_per_class_accuracy": final.get("mean_per_class"),
      "confusion_matrix": final.get("confusion_matrix"),
      "precision": final.get("precision"), "recall": final.get("recall"), "f1": final.get("f1"),
      "accuracy_matrix": acc_rows,
      "steps": steps,
      "eval_points": eval_points,
      "wall_s": wall,
      "examples_per_s": n / wall if wall > 0 else None,
  }


def add_omega(runs: dict, reference: str = "offline") -> None:
  """Sets ``omega`` of every run against run ``reference`` (None when it was not run or the
  evaluation points differ)."""
  ref: Optional[dict] = runs.get(reference)
  for r in runs.values():
    if ref is None:
      r["omega"] = None
      continue
    a = [p["accuracy"] for p in r["eval_points"]]
    b = [p["accuracy"] for p in ref["eval_points"]]
    r["omega"] = M.omega(a, b) if len(a) == len(b) else None
