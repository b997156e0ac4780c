"""experiments/configs/dietcl.py validates and runs (reduced), with and without MAE base init."""

import os

import pytest

from cljax.app import experiment
from cljax.app import settings
from experiments.configs import dietcl as cfg_mod

SMALL_VIT = {"patch": 7, "depth": 1, "dim": 16, "dec_dim": 16}  # compile time rules these tests


def test_config_is_valid_and_complete():
  c = cfg_mod.get_config()
  experiment.validate_config(c)
  assert {"dietcl", "dietcl_ref", "er", "er_plain", "gdumb", "ewc", "mas", "joint"} <= set(
      experiment.run_names(c))
  assert c.hparams.dietcl_ref.allocation == "reference_code" and c.hparams.dietcl_ref.w_r == 50
  # The paper's ratios (docstring): 10 labels a class, about one pass, in-domain MAE base.
  assert c.stream.label_rate == 0.01 and c.dataset == "fashion_mnist"
  per_class = c.stream.max_examples_per_step / c.stream.classes_per_step
  assert per_class * c.stream.label_rate == 10
  assert c.budget.passes_per_step * c.budget.batch_size / c.stream.max_examples_per_step == (
      pytest.approx(1.0, abs=0.05))
  # No silent fallback of the base set: the data set is named without "?".
  assert c.base_init.dataset == "fashion_mnist"
  # The reference-built ER and GDumb use DietCL's recipe; the plain ER stays as its own run.
  assert experiment.learner_of(c, "er") == "er_diet" and c.hparams.er.lr == c.hparams.dietcl.lr
  assert experiment.learner_of(c, "er_plain") == "er"
  assert c.hparams.gdumb.mixup_alpha == 0.8 and c.hparams.gdumb.augment
  assert c.base_init.kind == "mae" and c.model.startswith("vit_")
  assert c.hparams.dietcl.threshold == cfg_mod.THRESHOLD
  for opt in ("scratch", "small", "scratch,small", "base=/some/where"):
    experiment.validate_config(cfg_mod.get_config(opt))
  assert cfg_mod.get_config("scratch").base_init.kind == "supervised"  # i.e. off (classes 0)
  assert cfg_mod.get_config("base=/w/base_init").base_init.checkpoint == "/w/base_init"
  with pytest.raises(ValueError, match="valid"):
    cfg_mod.get_config("fast")
  # Configs are data: B̄ is chosen by the threshold study, not at config load.
  with pytest.raises(ValueError, match="dietcl_threshold.py"):
    cfg_mod.get_config("tune")


def test_every_learner_of_the_config_builds():
  """Each run of the config gets its declared inputs (ViT, batch size, stream sizes)."""
  c = cfg_mod.get_config("scratch,small")
  s = settings.from_config(c)
  stream = experiment.make_stream(s.stream)
  inputs = experiment.learner_inputs(s, stream)

  def build(name):
    return experiment.build_learner(s.learner(name), stream.dataset.num_classes, inputs)

  for name in experiment.run_names(c):
    learner = build(name)
    assert learner.name == experiment.learner_of(c, name)
    if "model" in learner.hparams:
      assert learner.hparams["model"] == "vit_micro"
  dcl = build("dietcl")
  assert dcl.hparams["threshold"] == cfg_mod.THRESHOLD
  # memory_size -1: every labelled row, in a memory as large as the stream (experiment input).
  assert dcl.hparams["memory_size"] == -1
  assert dcl.hparams["stream_size"] == stream.num_examples
  assert build("joint").budgeted is False


def _reduced(c, learners):
  c.learners = learners
  c.stream.classes_per_step = 5  # 2 steps
  c.stream.max_examples_per_step = 96
  c.budget.passes_per_step = 4
  c.model_kwargs = SMALL_VIT
  c.checkpoint.max_to_keep = 1
  c.plots = False
  return c


@pytest.mark.slow
def test_reduced_run_from_scratch(tmp_path):
  """The run path without base init: dietcl on the config's stream, exact budgets."""
  c = _reduced(cfg_mod.get_config("scratch,small"), "dietcl")
  lines = []
  res = experiment.run_experiment(c, str(tmp_path), log=lines.append)
  run = res["runs"]["dietcl"]
  assert [s["budget_used"] for s in run["steps"]] == [4.0, 4.0]
  assert 0.0 <= run["final_accuracy"] <= 1.0 and len(run["accuracy_matrix"]) == 2
  assert "base_init" not in res and not os.path.isdir(tmp_path / "base_init")


@pytest.mark.slow
def test_reduced_run_with_mae_base_init(tmp_path):
  """The config's path end to end: MAE base init, then dietcl and joint from it (the other
  learners of the config are run in their own tests; each costs a ViT compile here)."""
  c = _reduced(cfg_mod.get_config("small"), "dietcl,joint")
  c.base_init.epochs = 0.01  # 2 MAE steps of 256 on Fashion's images outside the stream
  lines = []
  res = experiment.run_experiment(c, str(tmp_path), log=lines.append)
  run = res["runs"]["dietcl"]
  assert [s["budget_used"] for s in run["steps"]] == [4.0, 4.0]
  assert 0.0 <= run["final_accuracy"] <= 1.0 and len(run["accuracy_matrix"]) == 2
  # joint spends the cumulative budget (t·B) and is not flagged over budget.
  assert [s["budget_used"] for s in res["runs"]["joint"]["steps"]] == [4.0, 8.0]
  assert not any("over the budget" in line for line in lines)
  assert any(line.startswith("[base_init] mae") for line in lines)
  assert res["base_init"]["kind"] == "mae" and res["base_init"]["dataset"] == "fashion_mnist"
  assert res["base_init"]["examples"] == 60000 - 2 * 96  # the stream's images left out
  assert os.path.isdir(tmp_path / "base_init")  # the MAE checkpoint every learner started from
