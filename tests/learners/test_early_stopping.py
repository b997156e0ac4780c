"""Early stopping in every learner that trains at step ends (issue 21 item 4), on real digits:
a validation score that never improves stops the step after ``patience`` evaluations and keeps
the step's starting model; one that always improves changes nothing; a real held-out score on
one step saves passes. Learners that do not stop early refuse ``early_stop`` in one line."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learner import BatchError
from cljax.train.early_stop import EarlyStopping

BS = 32
TINY_VIT = dict(depth=1, dim=16, dec_dim=16)
CLASSES = [0, 1, 2]


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
  xt, yt = ds.test.batch(np.arange(len(ds.test))), np.asarray(ds.test.y, np.int32)
  return x, y, xt, yt


def _learner(name):
  vit = dict(model="vit_micro", model_kwargs=TINY_VIT, chunk=4, flip=False)
  return {
      "er": lambda: L.get("er", num_classes=10, memory_size=100, chunk=4),
      "finetune": lambda: L.get("finetune", num_classes=10, chunk=4),
      "offline": lambda: L.get("offline", num_classes=10, stream_size=1500, chunk=4,
                               epochs_per_step=1.0),
      "gdumb": lambda: L.get("gdumb", num_classes=10, memory_size=200, chunk=4),
      "ewc": lambda: L.get("ewc", num_classes=10, chunk=4, importance_passes=2),
      "lwf": lambda: L.get("lwf", num_classes=10, chunk=4),
      "icarl": lambda: L.get("icarl", num_classes=10, chunk=4, memory_size=100),
      "dietcl": lambda: L.get("dietcl", num_classes=10, batch_size=BS, max_step_size=600,
                              memory_size=100, threshold=20, **vit),
      "joint": lambda: L.get("joint", num_classes=10, batch_size=BS, stream_size=600, **vit),
      "l2p": lambda: L.get("l2p", num_classes=10, model="vit_micro", chunk=4, batch_size=16,
                           model_kwargs={"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16},
                           memory_size=400, top_k=2, prompt_length=2),
      "siesta": _siesta,
      "cassle": lambda: L.get("cassle", num_classes=10, model="vit_micro", batch_size=16, chunk=4,
                              model_kwargs={"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16},
                              memory_size=400, proj_dim=16, proj_hidden=16, pred_hidden=16),
      "dualnet": lambda: L.get("dualnet", num_classes=10, model="vit_micro", batch_size=16,
                               chunk=4, memory_size=400, proj_dim=32, proj_hidden=32,
                               model_kwargs={"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16}),
      "ccic": lambda: L.get("ccic", num_classes=10, model="vit_micro", batch_size=16, chunk=4,
                            model_kwargs={"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16},
                            memory_size=60),
  }[name]()


def _siesta():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cljax.ops import pq  # pylint: disable=import-outside-toplevel
  from tests.learners.test_siesta import TinyF  # pylint: disable=import-outside-toplevel
  x = data.load("digits").train
  maps = _maps(x.batch(np.arange(len(x))))
  cb = pq.train(jax.random.key(0), jax.numpy.asarray(maps.reshape(-1, 4)), 2, 16, iters=10)
  return L.get("siesta", num_classes=10, f_module=TinyF(4, 10, nnx.Rngs(0)), codebook=cb,
               batch_size=32, buffer_capacity=300, sleep_lr=0.1, chunk=4)


def _maps(x):
  """Digits as SIESTA's inputs: 4 x 4 maps of 4 channels (as tests/learners/test_siesta.py)."""
  return np.asarray(x, np.float32).reshape(-1, 4, 4, 4)


def _step(learner, digits):
  """A state after the updates of one step of classes CLASSES (the end of step not yet run)."""
  x, y, _, _ = digits
  if learner.name == "siesta":
    x = _maps(x)
  idx = np.random.default_rng(0).permutation(np.flatnonzero(np.isin(y, CLASSES)))[:320]
  state = learner.init(jax.random.key(0), {"x": x[:BS], "y": y[:BS]})
  for i, b in enumerate(data.array_batches(x[idx], y[idx], BS)):
    state, _ = learner.update(state, b, jax.random.key(i))
  return state


def _flat(every, patience):
  return EarlyStopping(score=lambda logits_of: 1.0, every=every, patience=patience)


def _improving(every):
  calls = []

  def score(logits_of):
    calls.append(1)
    return -float(len(calls))
  return EarlyStopping(score=score, every=every, patience=1)


def _same(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# (learner, budget of the end of step, passes a flat score lets run: phases x patience x every)
# ewc: + 2 importance passes; dietcl: two phases; the ViT learners compile for ~20 s: slow tier.
CASES = [("er", 60, 8), ("finetune", 60, 8), ("offline", None, 8), ("gdumb", 60, 8),
         ("ewc", 60, 10), ("lwf", 60, 8), ("siesta", 60, 8),
         pytest.param("l2p", 60, None, marks=pytest.mark.slow),
         pytest.param("cassle", 200, 8, marks=pytest.mark.slow),
         pytest.param("ccic", 200, None, marks=pytest.mark.slow),
         pytest.param("dualnet", 400, None, marks=pytest.mark.slow),
         pytest.param("dietcl", 40, 16, marks=pytest.mark.slow),
         pytest.param("joint", 60, 8, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, budget, flat_passes", CASES)
def test_a_score_that_never_improves_keeps_the_steps_start(digits, name, budget, flat_passes):
  learner = _learner(name)
  assert learner.early_stopping
  state = _step(learner, digits)
  key = jax.random.key(5)
  plain, info = learner.end_of_step(state, key, budget)
  got, ginfo = learner.end_of_step(state, key, budget, early_stop=_flat(every=3, patience=2))
  # every=3 rounds up to the chunk of 4; two evaluations without improvement: 8 passes a phase.
  extra = {k: float(v) for k, v in ginfo.extra.items()}
  if name in ("joint", "cassle"):  # their SSL phase (no classifier) always runs; fine-tuning stops
    ssl = {"joint": "ssl_passes", "cassle": "ssl_steps"}[name]
    assert float(ginfo.extra[ssl]) == float(info.extra[ssl])
    assert float(ginfo.extra["finetune_passes" if name == "joint" else "finetune_steps"]) == 8
  elif name in ("l2p", "ccic", "dualnet"):  # a step costs > 1 pass: every=3 rounds to chunk 4
    assert float(ginfo.extra["iterations" if name == "dualnet" else "sgd_steps"]) == 8
    assert float(ginfo.extra["passes_saved"]) > 0
  else:
    assert float(ginfo.passes) == flat_passes
  assert extra["passes_saved"] == pytest.approx(float(info.passes) - float(ginfo.passes))
  start = {"offline": lambda s: s.init_params, "gdumb": lambda s: s.init_params,
           "l2p": lambda s: s.train, "dualnet": lambda s: (s.slow, s.fast)}.get(
               name, lambda s: s.params)(state)
  if name == "dualnet":
    _same((got.slow, got.fast), start)
  elif name not in ("joint", "cassle"):
    _same(got.train if name == "l2p" else got.params, start)
  # Everything else the end of step does (filing the step, buffers, counters) still happens;
  # what depends on the trained model follows the kept one (EWC's anchor and importance).
  trained = {"params": None, "train": None, "opt": None, "anchor": None, "importance": None,
             "teacher": None, "heads": None, "emb": None, "slow": None, "fast": None,
             "opt_slow": None, "soft": None}
  fields = {k: v for k, v in trained.items() if k in got._fields}
  if name in ("ewc", "lwf"):
    _same(got.anchor if name == "ewc" else got.teacher, start)
  _same(got._replace(**fields), plain._replace(**fields))


# Loop.stopping's own test covers the rule (tests/train/test_early_stop.py); the fast tier keeps
# one learner that trains online and one that retrains, the full suite all of them.
IMPROVING = [c if (c.values if hasattr(c, "values") else c)[0] in ("er", "gdumb")
             else pytest.param(*(c.values if hasattr(c, "values") else c), marks=pytest.mark.slow)
             for c in CASES]


@pytest.mark.parametrize("name, budget, _", IMPROVING)
def test_a_score_that_always_improves_changes_nothing(digits, name, budget, _):
  learner = _learner(name)
  state = _step(learner, digits)
  key = jax.random.key(5)
  plain, info = learner.end_of_step(state, key, budget)
  got, ginfo = learner.end_of_step(state, key, budget, early_stop=_improving(every=4))
  _same(got, plain)
  assert float(ginfo.passes) == float(info.passes)
  assert float(ginfo.extra["passes_saved"]) == 0.0


def test_icarl_stops_its_sgd_and_still_herds(digits):
  """iCaRL is scored by its own head while it trains; herding and class means follow the kept
  model, and their forwards are charged as before."""
  learner = _learner("icarl")
  state = _step(learner, digits)
  got, info = learner.end_of_step(state, jax.random.key(5), 60, early_stop=_flat(3, 2))
  _same(got.params, state.params)
  assert float(info.passes) == pytest.approx(8 + float(info.extra["forward_passes"]))
  assert int(got.mem.count) == 99 and bool(got.has_mean[np.asarray(CLASSES)].all())  # 33 each


def test_held_out_loss_on_digits_saves_passes_and_keeps_the_best(digits):
  """GDumb retrains from scratch on its memory: the held-out loss of the model it keeps is the
  lowest of those scored, and a long budget stops once the loss stops falling."""
  _, _, xt, yt = digits
  learner = _learner("gdumb")
  state = _step(learner, digits)
  sel = np.isin(yt, CLASSES)
  stop = EarlyStopping.on(xt[sel], yt[sel], every=8, patience=2)
  seen = []
  scored = EarlyStopping(score=lambda f: seen.append(stop.score(f)) or seen[-1], every=8,
                         patience=2)
  got, info = learner.end_of_step(state, jax.random.key(1), 2000, early_stop=scored)
  assert float(info.passes) < 2000 and float(info.extra["passes_saved"]) > 0
  assert stop.score(lambda x: learner.predict(got, x)) == pytest.approx(min(seen))
  best = int(np.argmin(seen))
  assert float(info.extra["best_pass"]) == 8 * best
  assert len(seen) == best + 3  # two more evaluations without improvement, then it stopped


def test_learners_that_do_not_stop_early_refuse_it_in_one_line(digits):
  learner = L.get("slda", num_classes=10)
  assert not learner.early_stopping
  state = _step(learner, digits)
  with pytest.raises(BatchError, match=r"^slda.end_of_step: this learner does not take early_stop"):
    learner.end_of_step(state, jax.random.key(0), 10, early_stop=_flat(1, 1))
