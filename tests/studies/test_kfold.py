"""experiments/studies/kfold.py on real digits: 3 stratified folds, each fold's validation rows held
out of its training stream (together they are every training row once), and the study's
mean ± std equal to numpy's over the folds' own results.json."""

import json
import os

import numpy as np
import pytest

from cljax import data
from cljax.app import experiment, settings
from experiments.studies import kfold


def _config():
  c = experiment.base_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.learners = "finetune"
  c.stream.ordering = "iid"
  c.stream.num_steps = 2
  c.stream.batch_size = 64
  c.budget.passes_per_step = 20
  c.hparams.finetune = dict(lr=3e-3)
  c.eval.val_fraction = 0.1  # replaced by the held-out fold
  c.plots = False
  return c


@pytest.mark.slow  # three experiment runs: about 38 s of CPU
def test_kfold_study(tmp_path):
  k, logs = 3, []
  out = kfold.run_folds(_config(), k, str(tmp_path), log=logs.append)
  assert any("replaced by the held-out fold" in m for m in logs)
  held = []
  for f in range(k):
    with open(tmp_path / f"fold{f}" / "results.json") as fh:
      res = json.load(fh)
    assert res["config"]["eval"]["val_folds"] == k and res["config"]["eval"]["val_fold"] == f
    cfg = _config()
    cfg.eval.val_fraction, cfg.eval.val_folds, cfg.eval.val_fold = 0.0, k, f
    stream = experiment.make_stream(settings.from_config(cfg).stream)
    trained = np.concatenate(stream.steps)
    held.append(stream.val_index(stream.num_steps - 1))
    assert not set(trained) & set(held[-1])
    assert res["runs"]["finetune"]["steps"][-1]["examples_seen"] == len(trained)
    cell = [c for c in out["cells"] if c["fold"] == f][0]
    assert cell["val_accuracy"] == res["runs"]["finetune"]["steps"][-1]["val_accuracy"]
    # iid stream: the held-out fold and the test split measure the same model alike
    assert abs(cell["val_accuracy"] - cell["final_accuracy"]) < 0.1, cell
  n = len(data.load("digits").train)
  every = np.sort(np.concatenate(held))
  np.testing.assert_array_equal(every, np.arange(n))  # each training row in one fold
  row = out["summary"][0]
  vals = [c["val_accuracy"] for c in out["cells"]]
  assert row["n"] == k and row["val_accuracy_mean"] == pytest.approx(np.mean(vals))
  assert row["val_accuracy_std"] == pytest.approx(np.std(vals))
  assert os.path.exists(tmp_path / "kfold.json")
