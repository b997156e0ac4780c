"""experiments/studies/slda.py: Deep SLDA's variants and orderings on real digits (reduced)."""

import numpy as np
import pytest

from experiments.studies import slda as study


@pytest.mark.slow  # trains a small MLP backbone and streams 8 SLDA runs (~10 s)
def test_study_cells_and_findings_on_digits():
  cfg = dict(dataset="digits", max_train=0, model="mlp", base_classes=4, base_epochs=3.0,
             steps=3, seeds=[0])
  out = study.run_study(cfg, log=lambda m: None)
  assert len(out["cells"]) == len(study.VARIANTS) * len(study.ORDERINGS)
  got = {(c["variant"], c["ordering"]): c for c in out["cells"]}
  for (name, ordering), c in got.items():
    # one point per streamed step, plus the base set's own step without a base init
    assert len(c["curve"]) == 3 + (0 if study.VARIANTS[name][1] else 1)
  final = {k: c["final_accuracy"] for k, c in got.items()}
  # Same examples, same base: the order changes the final accuracy by little.
  for name in study.VARIANTS:
    assert abs(final[(name, "iid")] - final[(name, "class_incremental")]) < 0.03, final
  # A fixed covariance without a base initialisation is the weakest (Σ = 0: nearest class mean).
  assert final[("fixed, no base init", "iid")] < final[("fixed", "iid")]
  assert {r["n"] for r in out["summary"]} == {1}
  assert np.isfinite([r["final_accuracy_mean"] for r in out["summary"]]).all()
