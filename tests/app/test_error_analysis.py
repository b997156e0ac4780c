"""What a run tells you (issue 21 items 1-2, issue 22 item 4), on real digits through the
experiment: validation and test losses per step and per evaluation point, the final model's ROC AUC
and ECE (checked against scikit-learn and a plain loop on the saved predictions), the diagnostic
plots, the learner state's bytes (against the checkpoint on disk) and the batch-1 update latency,
which does not change what the run computes."""

import glob
import json
import os
import re

import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn import metrics as skm

from cljax import data
from cljax.app import experiment, runner
from cljax.eval import report
from experiments.bench import faults
from tests.app.test_divergence import softmax_sgd


def _config():
  c = experiment.base_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.learners = "finetune,er"
  c.stream.batch_size = 32
  c.stream.max_examples_per_step = 160
  c.budget.passes_per_step = 20
  c.hparams.finetune = dict(lr=3e-3)
  c.hparams.er = dict(lr=3e-3, memory_size=100)
  c.eval.every_examples = 100
  c.eval.val_fraction = 0.25
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("ea"))
  res = experiment.run_experiment(_config(), wd, log=lambda m: None)
  return wd, res


def _softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def test_losses_per_step_and_point(run):
  _, res = run
  for name, r in res["runs"].items():
    assert len(r["steps"]) == 5
    for s in r["steps"]:
      assert s["loss"] > 0 and s["test_loss"] > 0 and s["val_loss"] > 0, (name, s)
      assert 0 <= s["val_accuracy"] <= 1
    anytime = [p for p in r["eval_points"] if not p["step_end"]]
    assert anytime and all("test_loss" in p and "val_loss" in p for p in anytime)
    # 25 % of each class of each step held out: 160 -> 120 trained on per step
    assert r["steps"][-1]["examples_seen"] == 5 * 120
  # replay keeps the old classes: lower final test loss than fine-tuning, and the validation
  # split agrees with the test split about it
  er, ft = res["runs"]["er"]["steps"][-1], res["runs"]["finetune"]["steps"][-1]
  assert er["test_loss"] < ft["test_loss"] and er["val_loss"] < ft["val_loss"]
  assert er["val_accuracy"] > ft["val_accuracy"]


def test_auc_ece_and_test_loss_equal_references(run):
  wd, res = run
  preds = runner.read_predictions(wd, res["runs"])
  for name, r in res["runs"].items():
    p = preds[name]
    y, scores = p["y"], p["scores"].astype(np.float64)
    prob = _softmax(scores)
    np.testing.assert_allclose(r["steps"][-1]["test_loss"],
                               skm.log_loss(y, prob, labels=np.arange(10)), rtol=1e-5)
    np.testing.assert_allclose(r["roc_auc"], skm.roc_auc_score(y, prob, multi_class="ovr"),
                               rtol=1e-6)
    # ECE by a plain loop over 15 equal-width bins (lo, hi] of the top-1 confidence
    conf, hit, ece = prob.max(1), prob.argmax(1) == y, 0.0
    for b in range(15):
      lo, hi = b / 15, (b + 1) / 15
      m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
      if m.any():
        ece += m.sum() / len(y) * abs(hit[m].mean() - conf[m].mean())
    np.testing.assert_allclose(r["ece"], ece, rtol=1e-6)
    assert p["grid_pred"].shape == (runner.GRID, runner.GRID) and p["test_uv"].shape == (len(y), 2)
    assert set(np.unique(p["grid_pred"])) <= set(range(10))


def test_plots_table_state_bytes_and_latency(run):
  wd, res = run
  pngs = {os.path.basename(p) for p in glob.glob(os.path.join(wd, "plots", "*.png"))}
  assert {"loss_curves.png", "roc.png", "calibration.png", "decision_boundary.png",
          "accuracy.png"} <= pngs
  with open(os.path.join(wd, "results.json")) as f:
    disk = json.load(f)["runs"]
  table = report.table(disk)
  for col in ("auc", "ece", "val_acc", "state_MB", "lat_ms", "p99_ms", "rollbk"):
    assert col in table.splitlines()[0]
  for name, r in disk.items():
    ck = os.path.join(wd, "checkpoints", name)
    step = max(int(s) for s in os.listdir(ck) if s.isdigit())
    saved = ocp.StandardCheckpointer().restore(os.path.join(ck, str(step), "state"))
    import jax  # pylint: disable=import-outside-toplevel
    assert r["state_bytes"] == sum(np.asarray(a).nbytes for a in jax.tree.leaves(saved))
    lat = r["latency_ms"]
    assert lat["n"] == 100 and 0 < lat["median"] <= lat["p99"], lat
    assert r["rollbacks"] == []


def test_latency_timing_changes_nothing(tmp_path):
  stream = data.make_stream(data.load("digits"), "class_incremental", classes_per_step=5,
                            seed=1, max_examples_per_step=64, val_fraction=0.25)
  recs = [runner.run_learner("sgd", softmax_sgd(0.5), stream,
                             runner.RunOptions(batch_size=16, latency_calls=calls),
                             str(tmp_path / str(calls)), log=lambda m: None)
          for calls in (0, 5)]
  assert recs[0]["latency_ms"] is None and recs[1]["latency_ms"]["n"] == 5
  a, b = ({"r": {k: v for k, v in r.items() if k != "latency_ms"}} for r in recs)
  assert faults.differences(faults.without_timings(a), faults.without_timings(b)) == []


@pytest.mark.parametrize("key,value,says", [
    ("eval.val_fraction", 1.0, "eval.val_fraction must be a number in [0, 1)"),
    ("eval.val_folds", 1, "eval.val_folds must be an integer >= 2"),
    ("eval.latency_calls", -1, "eval.latency_calls must be an integer >= 0"),
    ("on_divergence", "ignore", "on_divergence must be one of ['stop', 'rollback']"),
    ("max_rollbacks", -1, "max_rollbacks must be an integer >= 0"),
])
def test_bad_settings_are_one_line(key, value, says):
  from cljax.app import settings  # pylint: disable=import-outside-toplevel
  c = _config()
  node, *rest = key.split(".")
  if rest:
    c[node][rest[0]] = value
  else:
    c[key] = value
  with pytest.raises(experiment.ConfigError, match=r"^" + re.escape(says)):
    settings.from_config(c)


def test_both_splits_refused():
  from cljax.app import settings  # pylint: disable=import-outside-toplevel
  c = _config()
  c.eval.val_folds = 5
  with pytest.raises(experiment.ConfigError, match="not both"):
    settings.from_config(c)


def test_workdirs_from_before_the_split_still_fit():
  """A config without a validation split has the fingerprint it had before the keys existed (so
  older workdirs resume); a split is part of the fingerprint."""
  from cljax.app import settings, workdir  # pylint: disable=import-outside-toplevel
  c = _config()
  c.eval.val_fraction = 0.0
  fp = workdir.fingerprint(settings.from_config(c).config, "sha")
  assert not any(k.startswith("eval.val_") for k in fp)
  c.eval.val_fraction = 0.1
  assert workdir.fingerprint(settings.from_config(c).config, "sha")["eval.val_fraction"] == 0.1


def test_workdirs_from_before_early_stopping_still_fit():
  """Early stopping off: none of its keys in the fingerprint (older workdirs resume, and its
  patience or metric may change); on: all three are."""
  from cljax.app import settings, workdir  # pylint: disable=import-outside-toplevel
  c = _config()
  c.eval.early_stop_patience = 7
  fp = workdir.fingerprint(settings.from_config(c).config, "sha")
  assert not any(k.startswith("eval.early_stop") for k in fp)
  c.eval.early_stop_every = 4
  fp = workdir.fingerprint(settings.from_config(c).config, "sha")
  assert (fp["eval.early_stop_every"], fp["eval.early_stop_patience"],
          fp["eval.early_stop_metric"]) == (4, 7, "loss")
