"""The Käding et al. fine-tuning study runs end to end on a reduced grid and writes its outputs."""

import json
import os

import numpy as np
import pytest

from experiments.studies import finetune as study


@pytest.mark.slow
def test_study_end_to_end_reduced(tmp_path, capsys):
  # one class draw; every setting but the constant one shares the learner of 1 epoch per update
  cfg = dict(study.DEFAULTS, repeats=1, per_class=100, base_epochs=1.0, epochs=[1.0],
             const_iterations=5, lambdas=[0.0, 1.0], noises=[0.2])
  study.main_cfg(cfg, str(tmp_path))
  res = json.loads((tmp_path / "results.json").read_text())
  assert set(res) >= {"iterations", "lambda", "noise"}
  assert set(res["iterations"]) == {"1", "const5"}
  assert set(res["lambda"]) == {"0", "1"} and set(res["noise"]) == {"0.2"}
  for per in (res["iterations"], res["lambda"], res["noise"]):
    for r in per.values():
      # 6 new classes of 100 examples each, one update set each, plus the base point
      assert len(r["curve"]) == 7 and len(r["finals"]) == 1
      assert r["final_accuracy"] == np.mean(r["finals"]) and r["std"] >= 0
      assert 0.0 <= min(r["curve"]) <= max(r["curve"]) <= 1.0
  # λ = 0 trains on the newest class alone: it forgets everything else
  assert res["lambda"]["0"]["final_accuracy"] < 0.2 < res["lambda"]["1"]["final_accuracy"]
  for name in ("iterations", "lambda", "noise"):
    assert os.path.getsize(tmp_path / f"{name}.png") > 1000
  out = capsys.readouterr().out
  assert "final acc" in out and "[study]" in out and "ETA" in out


def test_base_capacity_and_padding():
  # the step store holds the largest possible base set (the 2 largest classes: 3 + 2 rows)
  assert study.base_capacity(np.array([0, 0, 0, 1, 1, 2]), 2, 4) == 5
  assert study.base_capacity(np.array([0, 0, 0, 1, 1, 2]), 1, 4) == 4  # or an update set
  b = study._padded(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([4, 5, 6]), 5)
  assert b["x"].shape == (5, 2) and b["y"].tolist() == [4, 5, 6, 0, 0]
  assert b["valid"].tolist() == [True] * 3 + [False] * 2 and b["labeled"].all()
