"""Reports: results.json, PNG plots and a printed table."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np

from cljax.eval import metrics as M
from cljax.eval.results import COLUMNS

# A step record's losses drawn by ``loss_curves.png``: (key, legend label, line style).
LOSSES = (("loss", "train", "-"), ("val_loss", "validation", "--"), ("test_loss", "test", ":"))


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


def _figure(nrows: int = 1, ncols: int = 1, **kw):
  """(figure, axes) of matplotlib's object-oriented API: no pyplot, so no global backend is set
  or figure registered (a notebook's inline plots keep working); PNGs render with Agg.
  matplotlib is imported here (~0.5 s) because a run without plots never needs it."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figsize = kw.pop("figsize", None)
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, outdir: str, name: str, paths: list) -> None:
  """Writes ``fig`` to ``outdir/name`` and appends the path to ``paths``."""
  fig.tight_layout()
  paths.append(os.path.join(outdir, name))
  fig.savefig(paths[-1], dpi=110)


def plots(runs: dict, outdir: str, class_names: Optional[list] = None) -> list:
  """accuracy over the stream (all learners), and per learner an accuracy-matrix heatmap and a
  confusion matrix. Returns the written paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = []
  fig, ax = _figure(figsize=(6.4, 4.2))
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
  _save(fig, outdir, "accuracy.png", paths)

  for name, r in runs.items():
    acc = np.asarray([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]],
                     float)
    fig, ax = _figure(figsize=(1.2 + 0.6 * acc.shape[1], 1.0 + 0.5 * acc.shape[0]))
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
    _save(fig, outdir, f"accuracy_matrix_{name}.png", paths)

    cm = np.asarray(r.get("confusion_matrix") or [], float)
    if cm.size:
      fig, ax = _figure(figsize=(5, 4.5))
      norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
      im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
      labels = class_names or list(range(cm.shape[0]))
      ax.set_xticks(range(cm.shape[0]), labels, rotation=90, fontsize=7)
      ax.set_yticks(range(cm.shape[0]), labels, fontsize=7)
      ax.set_xlabel("predicted")
      ax.set_ylabel("true")
      ax.set_title(f"{name}: confusion (final, row-normalised)")
      fig.colorbar(im, ax=ax, fraction=0.046)
      _save(fig, outdir, f"confusion_{name}.png", paths)
  return paths


# --- diagnostics of the final models ----------------------------------------------------------

def _grid(n: int, width: float = 4.0, height: float = 3.4):
  """A figure of ``n`` panels in rows of at most 3; returns (fig, [n] axes), spare axes hidden."""
  cols = min(max(n, 1), 3)
  rows = -(-max(n, 1) // cols)
  fig, axes = _figure(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  axes = list(axes.ravel())
  for ax in axes[n:]:
    ax.set_visible(False)
  return fig, axes[:n]


def _finite_or_none(v):
  return None if v is None or not math.isfinite(float(v)) else float(v)


def _scored(predictions: dict) -> dict:
  """{name: (y [N] int, probabilities [N, K])} of the learners whose predictions hold both."""
  out = {}
  for name, p in (predictions or {}).items():
    if p is not None and p.get("y") is not None and p.get("scores") is not None:
      y = np.asarray(p["y"]).astype(np.int64)
      if len(y):
        out[name] = (y, M.probabilities(p["scores"]))
  return out


def _loss_curves(runs: dict, outdir: str, paths: list) -> None:
  drawn = {name: r for name, r in runs.items() if any(
      _finite_or_none(s.get(key)) is not None for s in (r or {}).get("steps") or []
      for key, _, _ in LOSSES)}
  if not drawn:
    return
  fig, axes = _grid(len(drawn))
  for ax, (name, r) in zip(axes, drawn.items()):
    steps = r["steps"]
    for key, label, style in LOSSES:
      pts = [(s.get("step", i), _finite_or_none(s.get(key))) for i, s in enumerate(steps)]
      pts = [(t, v) for t, v in pts if v is not None]
      if pts:
        ax.plot(*zip(*pts), style, marker="o", markersize=3, label=label)
    ax.set_xlabel("time step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Loss per step: train (the step's mean), validation, test (seen classes)")
  _save(fig, outdir, "loss_curves.png", paths)


def _roc(scored: dict, outdir: str, paths: list, class_names) -> None:
  fig, axes = _grid(len(scored))
  for ax, (name, (y, p)) in zip(axes, scored.items()):
    auc = M.roc_auc(y, p)
    k = p.shape[1]
    many = len(np.unique(y)) > 10  # beyond 10 curves a legend of classes is unreadable
    for c in range(k):
      if not np.isfinite(auc["per_class"][c]):
        continue  # class absent from the test labels: no curve
      fpr, tpr, _ = M.roc_curve(y == c, p[:, c])
      label = None if many else (
          f"{class_names[c] if class_names else c}: {auc['per_class'][c]:.3f}")
      ax.plot(fpr, tpr, lw=0.8 if many else 1.2, alpha=0.5 if many else 0.9, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.plot([], [], " ", label=f"macro AUC {auc['macro']:.4f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
           ylim=(0, 1.01), title=f"{name}: one-vs-rest ROC")
    ax.legend(fontsize=7, loc="lower right")
  _save(fig, outdir, "roc.png", paths)


def _calibration(scored: dict, outdir: str, paths: list, bins: int) -> None:
  fig, (ax, hist) = _figure(2, 1, figsize=(5.6, 6.2), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfectly calibrated")
  for name, (y, p) in scored.items():
    t = M.reliability_table(y, p, bins)
    ece = M.expected_calibration_error(y, p, bins)
    ok = t["count"] > 0
    line, = ax.plot(t["confidence"][ok], t["accuracy"][ok], marker="o", markersize=4,
                    label=f"{name} (ECE {ece:.4f})")
    hist.stairs(t["count"] / t["count"].sum(), t["edges"], color=line.get_color())
  ax.set(ylabel="accuracy of the bin", xlim=(0, 1), ylim=(0, 1),
         title=f"Reliability diagram (top-1 confidence, {bins} bins)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left")
  hist.set(xlabel="confidence", ylabel="fraction of\nexamples")
  _save(fig, outdir, "calibration.png", paths)


def _decision_boundary(predictions: dict, outdir: str, paths: list) -> None:
  grids = {name: p for name, p in (predictions or {}).items() if p is not None and all(
      p.get(k) is not None for k in ("grid_u", "grid_v", "grid_pred"))}
  if not grids:
    return
  k = 1 + max(int(np.max(p["grid_pred"])) for p in grids.values())
  for p in grids.values():
    if p.get("y") is not None and len(p["y"]):
      k = max(k, 1 + int(np.max(p["y"])))
  k = max(k, 2)
  from matplotlib import colormaps, colors  # pylint: disable=import-outside-toplevel
  if k <= 20:  # the first k distinct qualitative colours, one per class
    cmap = colors.ListedColormap(colormaps["tab10" if k <= 10 else "tab20"].colors[:k])
  else:
    cmap = colormaps["turbo"].resampled(k)
  fig, axes = _grid(len(grids), 4.2, 3.8)
  for ax, (name, p) in zip(axes, grids.items()):
    u, v = np.asarray(p["grid_u"], float), np.asarray(p["grid_v"], float)
    # grid_pred[i, j] is the class at (u[i], v[j]): rows along u, so transpose for pcolormesh
    ax.pcolormesh(u, v, np.asarray(p["grid_pred"]).T, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5,
                  shading="nearest", alpha=0.35)
    if p.get("test_uv") is not None:
      uv = np.asarray(p["test_uv"], float)
      colors = (np.asarray(p["y"]) if p.get("y") is not None and len(p["y"]) == len(uv)
                else np.zeros(len(uv), int))
      ax.scatter(uv[:, 0], uv[:, 1], c=colors, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, s=9,
                 edgecolors="k", linewidths=0.3)
    ax.set(xlabel="principal component 1", ylabel="principal component 2",
           xlim=(u.min(), u.max()), ylim=(v.min(), v.max()), title=name)
  fig.suptitle("Predicted class over the plane of the test inputs' first two principal "
               "components (points: test examples, coloured by true class)", fontsize=9)
  _save(fig, outdir, "decision_boundary.png", paths)


def diagnostic_plots(runs: dict, predictions: dict, outdir: str,
                     class_names: Optional[list] = None, bins: int = 15) -> list:
  """The diagnostics of a run's final models, written into ``outdir``; returns the paths.

  ``runs``: results.json's ``runs`` ({learner: record}); each record's ``steps`` are dicts with
  ``loss`` (the step's training loss) and, when measured, ``val_loss`` and ``test_loss``.
  ``predictions``: {learner: {"y": [N] int test labels, "scores": [N, K] logits (or
  probabilities) of the final model, optionally "grid_u" [G], "grid_v" [G], "grid_pred" [G, G]
  int (the predicted class at mean + u·pc1 + v·pc2, ``metrics.pca_plane``; rows follow u) and
  "test_uv" [N, 2] (the test inputs' coordinates in that plane)}}.

  * ``loss_curves.png``: train / validation / test loss per step, one panel per learner;
  * ``roc.png``: one-vs-rest ROC curves per class (``metrics.roc_curve``), macro AUC in the
    legend, one panel per learner;
  * ``calibration.png``: reliability diagram of every learner (``metrics.reliability_table``,
    ``bins`` equal-width bins), ECE in the legend, with the confidence histogram below;
  * ``decision_boundary.png``: each learner's predicted class over the grid, test points on top.

  A figure whose inputs are missing (no losses, no scores, no grid) is skipped, not an error.
  """
  os.makedirs(outdir, exist_ok=True)
  paths: list = []
  _loss_curves(runs or {}, outdir, paths)
  scored = _scored(predictions)
  if scored:
    _roc(scored, outdir, paths, class_names)
    _calibration(scored, outdir, paths, bins)
  _decision_boundary(predictions, outdir, paths)
  return paths
