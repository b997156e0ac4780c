"""Reports: results.json, PNG plots and a printed table."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np

from cljax.eval.results import COLUMNS


def _clean(v):
  """JSON-safe: numpy to python, NaN/Inf to None."""
  if isinstance(v, dict):
    return {str(k): _clean(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_clean(x) for x in v]
  if isinstance(v, np.ndarray):
    return _clean(v.tolist())
  if isinstance(v, (np.floating, float)):
    f = float(v)
    return f if math.isfinite(f) else None
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, np.bool_):
    return bool(v)
  return v


def write_json(path: str, obj) -> None:
  """Writes atomically (a temp file renamed), so a crash never leaves half a results file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_clean(obj), f, indent=1)
  os.replace(tmp, path)


def table(runs: dict) -> str:
  """A fixed-width table of the headline metrics (``results.COLUMNS``), one row per learner."""
  widths = [len(f.format(0.0)) for _, f, _ in COLUMNS]
  head = " ".join([f"{'learner':<12}"] + [f"{c:>{w}}" for (c, _, _), w in zip(COLUMNS, widths)])
  lines = [head, "-" * len(head)]
  for name, r in runs.items():
    cells = [f"{name:<12}"]
    for (_, f, read), w in zip(COLUMNS, widths):
      v = read(r)
      ok = v is not None and not (isinstance(v, float) and not math.isfinite(v))
      cells.append(f.format(v) if ok else f"{'-':>{w}}")
    lines.append(" ".join(cells))
  return "\n".join(lines)


def plots(runs: dict, outdir: str, class_names: Optional[list] = None) -> list:
  """accuracy over the stream (all learners), and per learner an accuracy-matrix heatmap and a
  confusion matrix. Returns the written paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  os.makedirs(outdir, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, r in runs.items():
    pts = r.get("eval_points") or []
    if pts:
      ax.plot([p["examples_seen"] for p in pts], [p["accuracy"] for p in pts], marker="o",
              markersize=3, label=name)
  ax.set_xlabel("training examples seen")
  ax.set_ylabel("accuracy on seen tasks")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title("Accuracy over the stream")
  fig.tight_layout()
  paths.append(os.path.join(outdir, "accuracy.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  for name, r in runs.items():
    acc = np.asarray([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]],
                     float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * acc.shape[1], 1.0 + 0.5 * acc.shape[0]))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    for t in range(acc.shape[0]):
      for j in range(acc.shape[1]):
        if np.isfinite(acc[t, j]):
          ax.text(j, t, f"{acc[t, j]:.2f}", ha="center", va="center", fontsize=7,
                  color="w" if acc[t, j] < 0.6 else "k")
    ax.set_xlabel("task j")
    ax.set_ylabel("after step t")
    ax.set_title(f"{name}: a[t, j]")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths.append(os.path.join(outdir, f"accuracy_matrix_{name}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    cm = np.asarray(r.get("confusion_matrix") or [], float)
    if cm.size:
      fig, ax = plt.subplots(figsize=(5, 4.5))
      norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
      im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
      labels = class_names or list(range(cm.shape[0]))
      ax.set_xticks(range(cm.shape[0]), labels, rotation=90, fontsize=7)
      ax.set_yticks(range(cm.shape[0]), labels, fontsize=7)
      ax.set_xlabel("predicted")
      ax.set_ylabel("true")
      ax.set_title(f"{name}: confusion (final, row-normalised)")
      fig.colorbar(im, ax=ax, fraction=0.046)
      fig.tight_layout()
      paths.append(os.path.join(outdir, f"confusion_{name}.png"))
      fig.savefig(paths[-1], dpi=110)
      plt.close(fig)
  return paths
