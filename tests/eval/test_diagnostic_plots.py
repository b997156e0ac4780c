"""diagnostic_plots: the four figures from a real model's predictions; missing inputs skipped."""

import os

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cljax.eval import metrics as M
from cljax.eval import report

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _predictions(seed, grid=True):
  """A logistic regression on real iris measurements (every other row to train): its test
  logits, and its predicted class over the plane of the test inputs' first two PCs."""
  d = load_iris()
  x, y = (d.data - d.data.mean(0)) / d.data.std(0), d.target
  clf = LogisticRegression(max_iter=3 + seed, C=0.1).fit(x[::2], y[::2])
  xt, yt = x[1::2], y[1::2]
  out = {"y": yt, "scores": clf.decision_function(xt)}
  if grid:
    mean, pcs, uv = M.pca_plane(xt)
    g = np.linspace(-4, 4, 40)
    uu, vv = np.meshgrid(g, g, indexing="ij")  # grid_pred[i, j] is the class at (g[i], g[j])
    pts = mean + uu.reshape(-1, 1) * pcs[0] + vv.reshape(-1, 1) * pcs[1]
    out.update(grid_u=g, grid_v=g, grid_pred=clf.predict(pts).reshape(40, 40), test_uv=uv)
  return out


def _runs():
  steps = [{"step": t, "loss": 1.0 / (t + 1), "val_loss": 1.2 / (t + 1),
            "test_loss": 1.3 / (t + 1)} for t in range(4)]
  return {"er": {"steps": steps},
          "slda": {"steps": [{"step": t, "loss": None} for t in range(4)]},  # no losses
          "finetune": {"steps": [{"step": t, "loss": 0.5, "test_loss": float("nan")}
                                 for t in range(4)]}}


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_all_four_figures(tmp_path):
  preds = {"er": _predictions(0), "finetune": _predictions(20)}
  paths = report.diagnostic_plots(_runs(), preds, str(tmp_path),
                                  class_names=load_iris().target_names.tolist())
  names = [os.path.basename(p) for p in paths]
  assert names == ["loss_curves.png", "roc.png", "calibration.png", "decision_boundary.png"]
  assert all(_is_png(p) for p in paths)


def test_missing_fields_are_skipped(tmp_path):
  # no grid, one learner without predictions, no validation losses anywhere
  runs = {"er": {"steps": [{"step": 0, "loss": 0.7}, {"step": 1}]}, "gdumb": {}}
  preds = {"er": _predictions(0, grid=False), "gdumb": None, "x": {"y": np.zeros(0, int),
                                                                   "scores": np.zeros((0, 3))}}
  paths = report.diagnostic_plots(runs, preds, str(tmp_path / "a"))
  assert [os.path.basename(p) for p in paths] == ["loss_curves.png", "roc.png", "calibration.png"]
  # nothing to draw: nothing written, no error
  assert report.diagnostic_plots({"er": {"steps": [{"step": 0, "loss": None}]}}, {},
                                 str(tmp_path / "b")) == []
  assert report.diagnostic_plots({}, None, str(tmp_path / "c")) == []
  # a grid without test points still draws the boundary
  p = _predictions(0)
  del p["test_uv"], p["scores"]
  paths = report.diagnostic_plots({}, {"er": p}, str(tmp_path / "d"))
  assert [os.path.basename(q) for q in paths] == ["decision_boundary.png"]
