"""experiments/studies/dietcl_sweep.py: budget x label-rate grid of dietcl-config runs."""

import json
import os

import pytest

from experiments.studies import dietcl_sweep as sweep

SMALL_VIT = {"patch": 7, "depth": 1, "dim": 16, "dec_dim": 16}  # compile time rules these tests


def test_cell_config_sets_the_grid_and_shares_the_mae_checkpoint():
  c = sweep.cell_config(40, 0.1, "dietcl,er", True, "/w/base_init", classes_per_step=5,
                        max_examples_per_step=48, mae_epochs=0.5)
  assert (c.budget.passes_per_step, c.stream.label_rate, c.learners) == (40, 0.1, "dietcl,er")
  assert (c.stream.classes_per_step, c.stream.max_examples_per_step) == (5, 48)
  assert c.base_init.kind == "mae" and c.base_init.checkpoint == "/w/base_init"
  assert c.base_init.epochs == 0.5 and c.plots is False
  c = sweep.cell_config(20, 0.05, "er", False, "", seed=3)
  assert c.base_init.kind == "supervised" and c.seed == 3  # scratch: no base init
  # The ablations: the config's dietcl with one of the paper's Table 2 components removed.
  c = sweep.cell_config(80, 0.05, ",".join(sweep.ABLATIONS), True, "")
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  experiment.validate_config(c)
  assert c.hparams.dietcl_no_masked_ce.lm_mask == "none"
  assert c.hparams.dietcl_no_reconstruction.reconstruction is False
  assert c.hparams.dietcl_no_balanced_buffer.threshold == c.hparams.dietcl.threshold
  # The DietCL paper's other baselines (issue 16) pass through --learners with the config's
  # hyper-parameters (the same budget and memory), checked by the experiment's own validation.
  c = sweep.cell_config(80, 0.05, "dietcl,l2p,cassle,dualnet,ccic", True, "")
  experiment.validate_config(c)
  assert c.learners == "dietcl,l2p,cassle,dualnet,ccic"
  for name in ("l2p", "cassle", "dualnet", "ccic"):  # ER's memory: every label of the stream
    assert c.hparams[name].memory_size == c.hparams.er_plain.memory_size, name


def test_table_and_plot_from_cells(tmp_path):
  out = {"cells": [{"budget": b, "label_rate": r, "seed": s, "learner": n,
                    "final_accuracy": 0.1 * b / 20 + 0.01 * s, "average_accuracy": 0.5,
                    "budget_used": 5.0 * b, "wall_s": 1.0}
                   for b in (20, 40) for r in (0.05, 0.1) for n in ("dietcl", "er")
                   for s in (0, 1, 2)]}
  t = sweep.table(out)
  assert "budget" in t and len(t.splitlines()) == 2 + 8  # header, rule, 8 groups of 3 seeds
  assert "0.110 ± 0.008" in t  # budget 20: 0.10, 0.11, 0.12
  assert os.path.getsize(sweep.plot(out, str(tmp_path / "sweep.png"))) > 1000


@pytest.mark.slow
def test_sweep_writes_table_and_plot(tmp_path):
  def small(c):
    c.model_kwargs = SMALL_VIT
    c.hparams.er.chunk = 2
    c.checkpoint.max_to_keep = 1

  out = sweep.run_sweep(str(tmp_path), [2, 4], [0.5], "er", mae=False, classes_per_step=5,
                        max_examples_per_step=48, overrides=small, log=lambda m: None)
  assert [(c["budget"], c["learner"]) for c in out["cells"]] == [(2, "er"), (4, "er")]
  assert [r["n"] for r in out["summary"]] == [1, 1]
  assert [c["budget_used"] for c in out["cells"]] == [4.0, 8.0]
  assert json.load(open(tmp_path / "sweep.json"))["cells"] == out["cells"]
  assert os.path.isfile(sweep.plot(out, str(tmp_path / "sweep.png")))
  assert "budget" in sweep.table(out)
  assert os.path.isfile(tmp_path / "b2_l0.5_s0" / "results.json")  # each cell's own run
