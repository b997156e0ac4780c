"""experiments/studies/seeds.py over the RanDumb config, and that config's promises (reduced)."""

import os

import numpy as np
import pytest

from experiments.configs import randumb as randumb_cfg
from experiments.studies import seeds as seeds_lib
from cljax.app import experiment


def test_randumb_configs_are_valid():
  for ds in ("mnist5k", "fashion_mnist"):
    c = randumb_cfg.get_config(ds)
    experiment.validate_config(c)
    assert c.stream.batch_size == 1  # one example per update
  with pytest.raises(ValueError, match="unknown data set"):
    randumb_cfg.get_config("cifar")


def test_summary_and_table():
  cells = [{"seed": 0, "learner": "a", "final_accuracy": 0.5, "average_accuracy": 0.6,
            "forgetting": 0.1, "passes_per_step": 10.0, "examples_per_s": 100.0, "wall_s": 2.0},
           {"seed": 1, "learner": "a", "final_accuracy": 0.7, "average_accuracy": 0.6,
            "forgetting": 0.3, "passes_per_step": 10.0, "examples_per_s": None, "wall_s": 4.0}]
  s = seeds_lib.summarize(cells)
  assert s[0]["n"] == 2
  np.testing.assert_allclose([s[0]["final_accuracy_mean"], s[0]["final_accuracy_std"]],
                             [0.6, 0.1])
  assert s[0]["examples_per_s_all"] == [100.0]  # seeds without the figure are left out
  t = seeds_lib.table(s, metrics=("final_accuracy", "examples_per_s", "omega"))
  assert "| a | 2 | 0.600 ± 0.100 | 100 ± 0 | - |" in t, t


def test_metrics_of_averages_the_budget_over_steps():
  m = seeds_lib.metrics_of({"final_accuracy": 0.9, "steps": [{"budget_used": 4},
                                                             {"budget_used": 6}]})
  assert m["passes_per_step"] == 5.0 and m["final_accuracy"] == 0.9 and m["omega"] is None


@pytest.mark.slow  # two reduced runs of the randumb config (one example per update)
def test_seeds_of_the_randumb_config(tmp_path):
  c = randumb_cfg.get_config()
  c.learners = "randumb,slda"
  c.hparams.randumb.embed_dim = 256
  c.stream.max_examples_per_step = 100
  c.plots = False
  out = seeds_lib.run_seeds(c, [0, 1], str(tmp_path), log=lambda m: None)
  assert os.path.exists(tmp_path / "seeds.json") and out["seeds"] == [0, 1]
  runs = {(c["seed"], c["learner"]): c for c in out["cells"]}
  for s in (0, 1):
    assert runs[s, "randumb"]["passes_per_step"] == 0.0
    assert runs[s, "randumb"]["final_accuracy"] > 0.75
  assert runs[0, "randumb"] != runs[1, "randumb"]  # seeds differ
  assert "randumb" in seeds_lib.table(out["summary"])
