"""The shipped experiment configs run on real data and keep their headline promises (reduced)."""

import importlib.util
import os

import pytest

from cljax.app import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize("name", ["demo", "slda", "exstream"])
def test_config_is_valid(name):
  experiment.validate_config(load_config(name))


@pytest.mark.slow  # a reduced experiment: base init, slda and finetune on real digits (~16 s)
def test_slda_config_does_not_forget(tmp_path):
  c = load_config("slda")
  c.learners = "slda,slda_fixed,finetune"
  c.model = "mlp"  # same recipe, faster network
  c.base_init.epochs = 4.0
  c.budget.passes_per_step = 40
  c.stream.max_examples_per_step = 400
  c.plots = False
  res = experiment.run_experiment(c, str(tmp_path), log=lambda m: None)
  runs = res["runs"]
  assert runs["slda"]["final_accuracy"] > 0.8, runs["slda"]["final_accuracy"]
  assert runs["slda"]["final_accuracy"] > runs["finetune"]["final_accuracy"] + 0.4
  assert all(s["budget_used"] == 0 for s in runs["slda"]["steps"])  # no backward passes
  # After the base initialisation a fixed covariance is not far from the plastic one (measured
  # 0.826 vs 0.885 here: the covariance of 4 base classes of an MLP's features; the seed study in
  # notes/slda.md has the CNN figures).
  assert runs["slda_fixed"]["final_accuracy"] > 0.75, runs["slda_fixed"]["final_accuracy"]
  assert abs(runs["slda_fixed"]["final_accuracy"] - runs["slda"]["final_accuracy"]) < 0.1
  assert os.path.isdir(tmp_path / "base_init")
  # a second run in the same workdir loads the saved base network instead of retraining
  logs = []
  experiment.run_experiment(c, str(tmp_path), resume=True, log=logs.append)
  assert any("[base_init] loaded" in m for m in logs)
