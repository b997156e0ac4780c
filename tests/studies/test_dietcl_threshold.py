"""experiments/studies/dietcl_threshold.py: B̄ by validation on held-out labelled rows of the first
steps, through the ordinary runner."""

import numpy as np
import pytest

from cljax.app import experiment
from cljax.app import settings
from cljax.app import runner
from experiments.configs import dietcl as dietcl_config
from experiments.studies import dietcl_threshold as study


def _tiny_config():
  """The dietcl config on digits (8x8, patch 4) with a one-block 16-wide ViT, few rows, no MAE."""
  c = dietcl_config.get_config("scratch")
  c.dataset = "digits"
  c.learners = "dietcl"
  c.model_kwargs = {"depth": 1, "dim": 16, "dec_dim": 16}
  c.stream.classes_per_step = 2
  c.stream.label_rate = 0.5
  c.stream.max_examples_per_step = 120
  c.budget.batch_size = 24
  c.budget.passes_per_step = 6
  c.hparams.dietcl = dict(lr=5e-3, w_r=1.0, layer_decay=1.0, memory_size=60, chunk=4,
                          allocation="paper", threshold=20)
  c.checkpoint.max_to_keep = 1
  c.plots = False
  return c


def _held(stream, vstream, t):
  """Rows of step t of ``stream`` that ``vstream`` left out of training."""
  return stream.steps[t][~np.isin(stream.steps[t], vstream.steps[t])]


def test_validation_mask_is_stratified_and_keeps_a_label():
  y = np.r_[np.zeros(10), np.ones(5), np.full(1, 2), np.full(4, 3)].astype(np.int32)
  lab = np.ones(20, bool)
  lab[15:] = False  # class 3 unlabeled, class 2 one label
  held = study.validation_mask(y, lab, 0.2, np.random.default_rng(0))
  assert np.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 0]
  assert not np.any(held & ~lab)
  for bad in (0.0, 1.0):
    with pytest.raises(ValueError, match="val_fraction"):
      study.validation_mask(y, lab, bad, np.random.default_rng(0))


def test_validation_stream_removes_the_held_out_rows_from_training():
  c = _tiny_config()
  stream = experiment.make_stream(settings.from_config(c).stream)
  vs = study.validation_stream(stream, 3, 0.2, seed=0)
  assert vs.num_steps == 3 and stream.num_steps == 5
  assert [list(t) for t in vs.tasks] == [list(t) for t in stream.tasks[:3]]
  held = []
  for t in range(3):
    h = _held(stream, vs, t)
    held.append(h)
    # Training keeps every other row of the step, in order, with its label and label flag.
    assert len(h) > 0 and len(h) + len(vs.steps[t]) == len(stream.steps[t])
    keep = np.isin(stream.steps[t], vs.steps[t])
    np.testing.assert_array_equal(vs.steps[t], stream.steps[t][keep])
    np.testing.assert_array_equal(vs.labeled[t], stream.labeled[t][keep])
    np.testing.assert_array_equal(vs.labels[t], stream.labels[t][keep])
    assert np.all(stream.labeled[t][~keep])  # only labelled rows are held out
    for cls in stream.tasks[t]:  # every class keeps a training label
      assert np.any(vs.labeled[t] & (vs.labels[t] == cls))
  # The held-out rows, and only they, are the validation (test) set; the real test set is unused.
  held = np.concatenate(held)
  train = stream.dataset.train
  np.testing.assert_array_equal(vs.dataset.test.x, train.x[held])
  np.testing.assert_array_equal(vs.dataset.test.y, train.y[held])
  assert vs.dataset.train is train
  for j, cls in enumerate(vs.tasks):
    np.testing.assert_array_equal(np.sort(vs.test_index[j]),
                                  np.flatnonzero(np.isin(vs.dataset.test.y, cls)))
  # Another seed, another draw.
  other = study.validation_stream(stream, 3, 0.2, seed=1)
  assert not all(np.array_equal(a, b) for a, b in zip(other.steps, vs.steps))


def test_select_threshold_picks_the_best_candidate_on_training_without_held_out_rows(
    tmp_path, monkeypatch):
  """The selection itself, with the runner replaced by a table of accuracies (no training)."""
  c = _tiny_config()
  stream = experiment.make_stream(settings.from_config(c).stream)
  # Validation accuracy after each step, per (B̄, draw): means 0.5, 0.7, 0.7 after the last step.
  acc = {(0, 0): [0.9, 0.4], (20, 0): [0.8, 0.8], (40, 0): [0.7, 0.6],
         (0, 1): [0.9, 0.6], (20, 1): [0.6, 0.6], (40, 1): [0.5, 0.8]}
  seen = []

  def run_learner(run_name, learner, vstream, opts, workdir, resume=False, log=print):
    b, r = learner.hparams["threshold"], int(run_name.rsplit("_r", 1)[1])
    assert run_name == f"dietcl_b{b}_r{r}" and learner.name == "dietcl"
    assert learner.hparams["lr"] == 5e-3 and opts.budget == 6  # the config's, B̄ replaced
    seen.append((b, r, vstream))
    return {"steps": [{"accuracy_seen": a} for a in acc[(b, r)]]}

  monkeypatch.setattr(runner, "run_learner", run_learner)
  lines = []
  res = study.select_threshold(c, [0, 20, 40], str(tmp_path), num_steps=2, repeats=2,
                               log=lines.append)
  assert res["best"] == 20  # 0.7 ties with B̄ = 40: the earlier candidate wins
  assert res["scores"] == pytest.approx({0: 0.5, 20: 0.7, 40: 0.7})
  assert [r["threshold"] for r in res["table"]] == [0, 20, 40]
  assert res["table"][0]["step_accuracy"] == pytest.approx([0.9, 0.5])
  assert res["table"][2]["draws"] == pytest.approx([0.6, 0.8])
  assert (res["num_steps"], res["budget"], res["repeats"]) == (2, 6, 2)
  assert len(lines) == 6 and all(line.startswith("[threshold]") for line in lines)
  # Every candidate of a draw trained on the same validation stream, drawn with seed + draw, whose
  # training steps hold none of its validation rows.
  assert [(b, r) for b, r, _ in seen] == [(0, 0), (20, 0), (40, 0), (0, 1), (20, 1), (40, 1)]
  val_rows = 0
  for b, r, vs in seen:
    ref = study.validation_stream(stream, 2, 0.2, int(c.seed) + r)
    for t in range(2):
      np.testing.assert_array_equal(vs.steps[t], ref.steps[t])
      h = _held(stream, vs, t)
      assert len(h) > 0 and not np.any(np.isin(h, vs.steps[t]))
    if b == 0:
      val_rows += len(vs.dataset.test)
  assert res["val_rows"] == val_rows


def test_select_threshold_rejects_bad_settings(tmp_path):
  c = _tiny_config()
  c.hparams.dietcl.allocation = "reference_code"
  with pytest.raises(ValueError, match="threshold"):
    study.select_threshold(c, [1], str(tmp_path))
  for bad in ([], [-1, 2]):
    with pytest.raises(ValueError, match="candidates"):
      study.select_threshold(_tiny_config(), bad, str(tmp_path))


@pytest.mark.slow
def test_select_threshold_end_to_end_on_a_tiny_config(tmp_path):
  c = _tiny_config()
  lines = []
  res = study.select_threshold(c, [0, 100], str(tmp_path), num_steps=3, log=lines.append)
  assert [r["threshold"] for r in res["table"]] == [0, 100] and len(lines) == 2
  assert res["scores"][res["best"]] == max(res["scores"].values())
  assert res["num_steps"] == 3 and res["val_rows"] > 0
  assert all(len(r["step_accuracy"]) == 3 for r in res["table"])
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in res["table"])
  stream = experiment.make_stream(settings.from_config(c).stream)
  vs = study.validation_stream(stream, 3, 0.2, int(c.seed))
  assert res["val_rows"] == len(vs.dataset.test)
