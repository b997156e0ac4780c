"""experiments/studies/dietcl_regime.py: every cell is a valid config that changes one axis of
the dietcl config; the table and plot of DietCL - ER."""

import os

from cljax.app import experiment
from experiments.configs import dietcl as cfg_mod
from experiments.studies import dietcl_regime as regime


def test_every_cell_is_valid_and_changes_its_axis_only():
  base = cfg_mod.get_config()
  for name in regime.CELLS:
    c = regime.cell_config(name, "/w/base_init")
    experiment.validate_config(c)
    assert c.learners == "dietcl,er"
    assert (c.base_init.checkpoint == "/w/base_init") == (regime.CELLS[name][2] != "none")
  c = regime.cell_config("rate_0.1")
  assert c.stream.label_rate == 0.1 and c.budget.passes_per_step == base.budget.passes_per_step
  c = regime.cell_config("budget_128")
  assert c.budget.passes_per_step == 128 and c.hparams.dietcl.threshold == 102  # 80 % joint
  c = regime.cell_config("images_12000")
  # 10 labels a class kept, the whole 60,000-image stream, the out-of-domain base.
  assert c.stream.max_examples_per_step * c.stream.label_rate / 2 == 10
  assert c.base_init.dataset == "mnist5k"
  c = regime.cell_config("model_p4")
  assert c.model_kwargs.patch == 4 and c.base_init.epochs == 2.0  # 49 patches
  assert regime.cell_config("base_none").base_init.kind == "supervised"  # off (no classes)
  assert regime.cell_config("stream_iid").stream.ordering == "iid"
  assert regime.cell_config("ood_s2").seed == 2
  for alias, src in regime.ALIASES.items():  # aliases are the same run
    assert regime.cell_config(alias).to_dict() == regime.cell_config(src).to_dict()


def test_differences_table_and_plot(tmp_path):
  rows = []
  for cell, d, e in (("default", 0.30, 0.35), ("rate_0.1", 0.50, 0.40), ("ood", 0.2, 0.1),
                     ("ood_s1", 0.25, 0.2)):
    axis, value, _, _, seed = regime.CELLS[cell]
    for learner, acc in (("dietcl", d), ("er", e)):
      rows.append(dict(cell=cell, axis=axis, value=value, seed=seed, learner=learner,
                       final_accuracy=acc))
  diff = regime.differences(rows)
  assert [round(r["diff"], 3) for r in diff] == [-0.05, 0.1, 0.1, 0.05]
  out = {"diff": diff}
  t = regime.table(out)
  assert "| label rate | 10 % | 0 | 0.500 | 0.400 | +0.100 |" in t
  assert os.path.getsize(regime.plot(out, str(tmp_path / "r.png"))) > 1000
