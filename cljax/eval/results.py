"""The result record of one learner's run, and the table's columns: the one place both live.

A run's record (what ``results.json`` holds under ``runs/<name>``, built by ``record``):

* ``final_accuracy`` A(T), ``average_accuracy`` Ā, ``forgetting``, ``backward_transfer``: from the
  accuracy matrix (``cljax.eval.metrics``);
* ``final_top1`` / ``final_top5`` / ``mean_per_class_accuracy`` / ``confusion_matrix`` /
  ``precision`` / ``recall`` / ``f1``: on the test examples of all seen classes after the last step;
* ``accuracy_matrix`` [T][J] (None for tasks not yet introduced), ``steps`` (per step: accuracy,
  examples seen, wall seconds, examples/s, budget used, loss, and ``extra``: {name: the mean of
  the learner's ``Info.extra`` figure over the step's calls}), ``eval_points`` (every evaluation:
  step, examples seen, ``step_end`` (True at the end of a step, False for anytime points),
  ``accuracy`` and ``top5`` on the test examples of all seen classes), ``wall_s``,
  ``examples_per_s``;
* ``roc_auc`` (macro one-vs-rest AUC over the seen classes present in the test data),
  ``roc_auc_per_class`` [K] (None for a class absent from it) and ``ece`` (expected calibration
  error, 15 equal-width bins of top-1 confidence): of the final model on the test examples of
  the seen classes;
* ``state_bytes`` (bytes of the learner-state pytree: every array leaf, typed keys by their key
  data) and ``latency_ms`` ({"median", "p99", "n"}: of one ``update`` call at batch size 1, in
  milliseconds, measured by the runner); ``rollbacks``: the divergences rolled back
  ([{step, loss, reason, lr_scale}], ``on_divergence="rollback"``);
* per step, besides ``loss`` (training): ``test_loss`` (mean cross-entropy of the model after
  the step on the test examples of the seen classes) and, with a validation split,
  ``val_loss`` / ``val_accuracy`` (on the held-out rows of the steps so far); anytime points
  carry the same three;
* ``base_init`` (set by ``cljax.app.experiment.run``): which base initialisation the run started
  from, "none" or "<kind>:<data set> (<N> images)" (``experiment.base_used``);
* ``omega``: Ω against the reference run (``eval.omega_reference``, by default ``offline``), with
  ``omega_reference``, ``omega_topk`` (1 or 5) and ``omega_points`` ("step_ends" or "all") saying
  how it was computed (``add_omega``; None without the reference run).
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
    ("auc", "{:>7.4f}", lambda r: r.get("roc_auc")),
    ("ece", "{:>7.4f}", lambda r: r.get("ece")),
    ("val_acc", "{:>7.4f}", lambda r: _last_step(r, "val_accuracy")),
    ("budget", "{:>8.0f}", lambda r: sum(s["budget_used"] for s in r.get("steps", []))),
    ("saved", "{:>7.0f}", lambda r: _step_sum(r, "passes_saved")),
    ("wall_s", "{:>8.1f}", lambda r: r.get("wall_s")),
    ("ex/s", "{:>8.0f}", lambda r: r.get("examples_per_s")),
    ("state_MB", "{:>8.3f}", lambda r: _scaled(r.get("state_bytes"), 2.0 ** -20)),
    ("lat_ms", "{:>7.3f}", lambda r: (r.get("latency_ms") or {}).get("median")),
    ("p99_ms", "{:>7.3f}", lambda r: (r.get("latency_ms") or {}).get("p99")),
    ("rollbk", "{:>6.0f}", lambda r: len(r["rollbacks"]) if "rollbacks" in r else None),
)


def _last_step(r: dict, key: str):
  steps = r.get("steps") or []
  return steps[-1].get(key) if steps else None


def _step_sum(r: dict, extra: str):
  """The sum over steps of the step extra ``extra`` (None when no step reported it: e.g.
  ``passes_saved`` without early stopping)."""
  vals = [(s.get("extra") or {}).get(extra) for s in r.get("steps") or []]
  vals = [v for v in vals if v is not None]
  return sum(vals) if vals else None


def _scaled(v, factor: float):
  return None if v is None else v * factor


def record(acc_rows: list, task_step: list, steps: list, eval_points: list, final: dict,
           wall: float, **extra) -> dict:
  """The result record of a run (module docstring); ``final`` is the last step's full
  evaluation (``cljax.app.runner.evaluate(..., full=True)``); ``extra``: further fields
  (``state_bytes``, ``latency_ms``, ``rollbacks``)."""
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
      "roc_auc": final.get("roc_auc"), "roc_auc_per_class": final.get("roc_auc_per_class"),
      "ece": final.get("ece"),
      "accuracy_matrix": acc_rows,
      "steps": steps,
      "eval_points": eval_points,
      "wall_s": wall,
      "examples_per_s": n / wall if wall > 0 else None,
      **extra,
  }


OMEGA_TOPK = (1, 5)
OMEGA_POINTS = ("step_ends", "all")


def add_omega(runs: dict, reference: str = "offline", topk: int = 1,
              points: str = "step_ends") -> None:
  """Sets ``omega`` of every run against run ``reference`` ("" for none: every Ω is None), and
  ``omega_reference`` / ``omega_topk`` / ``omega_points`` saying how it was computed.

  ``topk``: 1 (top-1, CORe50's Ω) or 5 (top-5, Hayes and Kanan's ImageNet Ω and REMIND's 0.855).
  ``points``: "step_ends" (the evaluation points at the end of each step) or "all" (anytime
  points too). The offline reference is retrained only at step ends, so its anytime points score
  a model of the previous step: "step_ends" (the default) compares only the points where both
  runs are up to date. ``omega`` is None when the reference was not run or the two runs'
  points differ (in number or examples seen).
  """
  if topk not in OMEGA_TOPK or points not in OMEGA_POINTS:
    raise ValueError(f"add_omega: topk must be in {OMEGA_TOPK} and points in {OMEGA_POINTS}, "
                     f"got {topk!r}, {points!r}")
  field = "accuracy" if topk == 1 else "top5"

  def chosen(run):
    return [p for p in run["eval_points"] if points == "all" or p.get("step_end")]

  ref: Optional[dict] = runs.get(reference) if reference else None
  for r in runs.values():
    r["omega_reference"], r["omega_topk"], r["omega_points"], r["omega"] = (
        reference, topk, points, None)
    if ref is None:
      continue
    a, b = chosen(r), chosen(ref)
    if [p["examples_seen"] for p in a] != [p["examples_seen"] for p in b] or not a:
      continue
    r["omega"] = M.omega([p[field] for p in a], [p[field] for p in b])
