"""experiments/configs/dietcl.py validates and runs (reduced); B̄ by validation; the sweep."""

import importlib.util
import json
import os

import numpy as np
import pytest

from cljax import data
from cljax.learners import dietcl_tuning
from cljax.train import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module(*parts):
  path = os.path.join(ROOT, *parts)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def cfg_mod():
  return _module("experiments", "configs", "dietcl.py")


def test_config_is_valid_and_complete(cfg_mod):
  c = cfg_mod.get_config()
  experiment.validate_config(c)
  assert set(experiment.run_names(c)) == {"dietcl", "er", "gdumb", "ewc", "mas", "joint"}
  assert c.stream.label_rate == 0.05 and c.dataset == "mnist5k"
  assert c.base_init.kind == "mae" and c.model.startswith("vit_")
  for opt in ("scratch", "small", "scratch,small"):
    experiment.validate_config(cfg_mod.get_config(opt))
  assert cfg_mod.get_config("scratch").base_init.kind == "supervised"  # i.e. off (classes 0)
  with pytest.raises(ValueError, match="valid"):
    cfg_mod.get_config("fast")


SMALL_VIT = {"patch": 7, "depth": 1, "dim": 16, "dec_dim": 16}  # compile time rules these tests


def test_reduced_run_with_mae_base_init(cfg_mod, tmp_path):
  """The config's path end to end: MAE base init, then dietcl from it (the other learners of the
  config are run in their own tests; each costs a ViT compile here)."""
  c = cfg_mod.get_config("small")
  c.learners = "dietcl"
  c.stream.classes_per_step = 5  # 2 steps
  c.stream.max_examples_per_step = 96
  c.budget.passes_per_step = 4
  c.base_init.epochs = 0.1  # 2 MAE steps of 256 on the stream's 4,000 training images
  c.model_kwargs = SMALL_VIT
  c.checkpoint.max_to_keep = 1
  c.plots = False
  lines = []
  res = experiment.run_experiment(c, str(tmp_path), log=lines.append)
  run = res["runs"]["dietcl"]
  assert [s["budget_used"] for s in run["steps"]] == [4.0, 4.0]
  assert 0.0 <= run["final_accuracy"] <= 1.0 and len(run["accuracy_matrix"]) == 2
  assert any(line.startswith("[base_init] mae") for line in lines)
  assert os.path.isdir(tmp_path / "base_init")  # the MAE checkpoint every learner started from


def test_validation_mask_is_stratified_and_keeps_a_label():
  y = np.r_[np.zeros(10), np.ones(5), np.full(1, 2), np.full(4, 3)].astype(np.int32)
  lab = np.ones(20, bool)
  lab[15:] = False  # class 3 unlabeled, class 2 one label
  held = dietcl_tuning.validation_mask(y, lab, 0.2, np.random.default_rng(0))
  assert np.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 0]
  assert not np.any(held & ~lab)


def test_select_threshold_picks_the_best_candidate():
  ds = data.load("digits")
  stream = data.make_stream(ds, "class_incremental", classes_per_step=2, label_rate=0.5, seed=0,
                            max_examples_per_step=120)
  lines = []
  res = dietcl_tuning.select_threshold(
      stream, [0, 100], budget=6, num_steps=3, stream_batch_size=32, log=lines.append,
      model="vit_micro", model_kwargs={"depth": 1, "dim": 16, "dec_dim": 16}, batch_size=24,
      lr=5e-3, w_r=1.0, layer_decay=1.0, memory_size=60, chunk=4)
  assert [r["threshold"] for r in res["table"]] == [0, 100] and len(lines) == 2
  assert res["scores"][res["best"]] == max(res["scores"].values())
  assert res["num_steps"] == 3 and res["val_rows"] > 0
  assert all(len(r["step_accuracy"]) == 3 for r in res["table"])
  with pytest.raises(ValueError, match="threshold"):
    dietcl_tuning.select_threshold(stream, [1], budget=2, threshold=3)


def test_sweep_writes_table_and_plot(tmp_path):
  sweep = _module("experiments", "studies", "dietcl_sweep.py")
  def small(c):
    c.model_kwargs = SMALL_VIT
    c.hparams.er.chunk = 2
    c.checkpoint.max_to_keep = 1

  out = sweep.run_sweep(str(tmp_path), [2, 4], [0.5], "er", mae=False, classes_per_step=5,
                        max_examples_per_step=48, overrides=small, log=lambda m: None)
  assert [(c["budget"], c["learner"]) for c in out["cells"]] == [(2, "er"), (4, "er")]
  assert [c["budget_used"] for c in out["cells"]] == [4.0, 8.0]
  assert json.load(open(tmp_path / "sweep.json"))["cells"] == out["cells"]
  assert os.path.isfile(sweep.plot(out, str(tmp_path / "sweep.png")))
  assert "budget" in sweep.table(out)
