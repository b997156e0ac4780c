"""experiments/studies/seeds.py over the RanDumb config, and that config's promises (reduced)."""

import os

import numpy as np
import pytest

from experiments.configs import randumb as randumb_cfg
from experiments.studies import seeds as seeds_lib
from cljax.train import experiment


def test_randumb_configs_are_valid():
  for ds in ("mnist5k", "fashion_mnist"):
    c = randumb_cfg.get_config(ds)
    experiment.validate_config(c)
    assert c.stream.batch_size == 1  # one example per update
  with pytest.raises(ValueError, match="unknown data set"):
    randumb_cfg.get_config("cifar")


def test_summary_and_table():
  runs = {"0": {"a": {"final_accuracy": 0.5, "average_accuracy": 0.6, "forgetting": 0.1,
                      "passes_per_step": 10.0, "examples_per_s": 100.0, "wall_s": 2.0}},
          "1": {"a": {"final_accuracy": 0.7, "average_accuracy": 0.6, "forgetting": 0.3,
                      "passes_per_step": 10.0, "examples_per_s": None, "wall_s": 4.0}}}
  s = seeds_lib.summarise(runs)
  np.testing.assert_allclose(s["a"]["final_accuracy"], [0.6, 0.1])
  assert s["a"]["examples_per_s"] == [100.0, 0.0]  # seeds without the figure are left out
  assert "| a | 0.600 ± 0.100 |" in seeds_lib.table({"summary": s})


@pytest.mark.slow  # two reduced runs of the randumb config (one example per update)
def test_seeds_of_the_randumb_config(tmp_path):
  c = randumb_cfg.get_config()
  c.learners = "randumb,slda"
  c.hparams.randumb.embed_dim = 256
  c.stream.max_examples_per_step = 100
  c.plots = False
  out = seeds_lib.run_seeds(c, str(tmp_path), [0, 1], log=lambda m: None)
  assert os.path.exists(tmp_path / "seeds.json") and set(out["runs"]) == {"0", "1"}
  for s in ("0", "1"):
    assert out["runs"][s]["randumb"]["passes_per_step"] == 0.0
    assert out["runs"][s]["randumb"]["final_accuracy"] > 0.75
  assert out["runs"]["0"]["randumb"] != out["runs"]["1"]["randumb"]  # seeds differ
  assert "randumb" in seeds_lib.table(out)
