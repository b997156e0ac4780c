"""Early stopping through the experiment (``eval.early_stop_every``, issue 21 item 4), on real
digits: each step keeps the model with the lowest validation loss the runner's own evaluation
reports, the passes it saves are what the run without early stopping spent more, the table sums
them, and a resume under other early-stopping settings is refused."""

import pytest

from cljax.app import experiment
from cljax.eval import report
from tests.app.test_error_analysis import _config as error_analysis_config

pytestmark = pytest.mark.slow


def _config(**eval_kw):
  """test_error_analysis's digits config (MLP, validation split) with three step-end trainers."""
  c = error_analysis_config()
  c.learners = "finetune,gdumb,offline"
  c.stream.max_examples_per_step = 200
  c.budget.passes_per_step = 48
  c.hparams.gdumb = dict(lr=3e-3, memory_size=200)
  c.hparams.offline = dict(lr=3e-3, epochs_per_step=4.0)
  c.eval.every_examples = 0
  c.eval.latency_calls = 0
  c.plots = False
  for k, v in eval_kw.items():
    c.eval[k] = v
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("es"))
  quiet = lambda m: None  # noqa: E731
  es = experiment.run_experiment(_config(early_stop_every=4, early_stop_patience=2), wd,
                                 log=quiet)
  plain = experiment.run_experiment(_config(), str(tmp_path_factory.mktemp("plain")), log=quiet)
  return wd, es["runs"], plain["runs"]


def test_each_step_keeps_its_best_validation_model(runs):
  _, es, _ = runs
  for name, r in es.items():
    for s in r["steps"]:
      x = s["extra"]
      assert {"passes_saved", "best_pass", "best_score"} <= set(x), (name, x)
      # The score early stopping kept is the validation loss the runner measures after the step.
      assert s["val_loss"] == pytest.approx(x["best_score"], rel=1e-5), (name, s["step"])


def test_passes_saved_are_the_passes_not_spent(runs):
  _, es, plain = runs
  saved = 0
  for name in es:
    for a, b in zip(es[name]["steps"], plain[name]["steps"], strict=True):
      assert a["budget_used"] + a["extra"]["passes_saved"] == pytest.approx(b["budget_used"])
      saved += a["extra"]["passes_saved"]
  assert saved > 0  # the loss stops falling within some step on these data
  table = report.table(es)
  assert "saved" in table.splitlines()[0]
  assert "saved" in report.table(plain).splitlines()[0]  # "-" without early stopping
  gd = [l for l in table.splitlines() if l.startswith("gdumb")][0]
  want = sum(s["extra"]["passes_saved"] for s in es["gdumb"]["steps"])
  assert f"{want:.0f}" in gd.split()


def test_resume_under_other_early_stopping_settings_is_refused(runs):
  wd, _, _ = runs
  with pytest.raises(Exception, match="early_stop_patience"):
    experiment.run_experiment(_config(early_stop_every=4, early_stop_patience=5), wd,
                              resume=True, log=lambda m: None)
