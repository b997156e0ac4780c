"""experiments/configs/remind.py: valid, equal memory, and (reduced) REMIND beats fine-tuning on
real MNIST digits through the normal experiment path; resume mid-stream equals the full run."""

import importlib.util
import os
import shutil

import jax
import numpy as np
import pytest

from cljax.ops import pq
from cljax.app import experiment
from cljax.app import settings
from cljax.app.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
  spec = importlib.util.spec_from_file_location(
      "remind_config", os.path.join(ROOT, "experiments", "configs", "remind.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_config_is_valid_and_replay_memories_have_the_same_bytes():
  mod = _module()
  c = mod.get_config()
  experiment.validate_config(c)
  assert set(experiment.run_names(c)) == {"remind", "finetune", "er", "offline"}
  budget = c.hparams.remind.buffer_bytes
  assert c.hparams.er.memory_size * mod.RAW_IMAGE_BYTES == budget
  cap = mod.remind_capacity()
  used = pq.memory_bytes(cap, mod.NUM_SUBVECTORS, mod.NUM_CENTROIDS, mod.FEATURE_DIM,
                         vectors_per_item=mod.FEATURE_MAP)["total"]
  assert used <= budget < used + mod.FEATURE_MAP * mod.NUM_SUBVECTORS  # no room for one more
  assert cap > 5 * c.hparams.er.memory_size  # PQ codes: many more items in the same bytes


def _reduced():
  c = _module().get_config()
  c.learners = "remind,finetune"
  c.model_kwargs.width = 1 / 16
  c.stream.max_examples_per_step = 150  # base set 150 images, then 150 per new class
  c.base_init.epochs, c.base_init.batch_size = 12.0, 32
  c.budget.passes_per_step = 10
  c.hparams.remind.num_centroids = 64
  c.hparams.remind.pq_iters = 10
  c.hparams.remind.buffer_bytes = 60_000
  c.hparams.remind.lr_step = 12
  c.plots = False
  return c


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("remind_run"))
  return wd, experiment.run_experiment(_reduced(), wd, log=lambda m: None)


@pytest.mark.slow  # the reduced experiment: base init, PQ, 900 REMIND steps, finetune (~1 min)
def test_remind_beats_finetune_on_real_digits(reduced_run):
  _, res = reduced_run
  runs = res["runs"]
  assert res["base_init"]["test_accuracy"] > 0.6, res["base_init"]  # 150 images, measured 0.73
  remind, ft = runs["remind"]["final_accuracy"], runs["finetune"]["final_accuracy"]
  assert remind > 0.6, remind
  assert remind > ft + 0.3, (remind, ft)
  # One SGD step per example (step 0, the base set, is streamed too).
  assert [s["budget_used"] for s in runs["remind"]["steps"]] == [150.0] * 6


def _remind_like(wd, c):
  """A fresh remind state (the target tree for restoring its checkpoints)."""
  s = settings.from_config(c)
  stream = experiment.make_stream(s.stream)
  base = experiment.base_model(s, stream, wd, log=lambda m: None)
  lrn = experiment.build_learner(s.learner("remind"), stream.dataset.num_classes,
                                 experiment.learner_inputs(s, stream, base))
  idx = stream.steps[0][:c.stream.batch_size]
  example = {"x": stream.dataset.train.batch(idx),
             "y": np.asarray(stream.dataset.train.y[idx], np.int32)}
  return lrn.init(jax.random.key(0), example)


def _restore(wd, like):
  with Checkpointer(os.path.join(wd, "checkpoints", "remind")) as ck:
    return ck.restore_latest(like)


@pytest.mark.slow  # needs the reduced experiment, then reruns two of its steps
def test_resume_mid_stream_equals_uninterrupted(reduced_run, tmp_path):
  wd, res = reduced_run
  other = str(tmp_path / "resumed")
  shutil.copytree(wd, other)
  ck = os.path.join(other, "checkpoints", "remind")
  for step in ("4", "5"):  # as if the run had stopped after step 3 of 6
    shutil.rmtree(os.path.join(ck, step))
  c = _reduced()
  c.learners = "remind"
  logs = []
  again = experiment.run_experiment(c, other, resume=True, log=logs.append)
  assert any("[remind] resumed after step 3" in m for m in logs), logs
  want = res["runs"]["remind"]
  got = again["runs"]["remind"]
  assert got["accuracy_matrix"] == want["accuracy_matrix"]
  assert got["confusion_matrix"] == want["confusion_matrix"]
  # The whole learner state (F, momentum, buffer, class counts, codebook, steps) is identical.
  like = _remind_like(wd, c)
  s_want, s_got = _restore(wd, like), _restore(other, like)
  assert s_want[0] == s_got[0] == 5
  for a, b in zip(jax.tree.leaves(s_want[1]), jax.tree.leaves(s_got[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(s_got[1].buffer.count) > 0 and int(s_got[1].steps) == 900
