"""Tests for the siesta learner on real digits (as 4x4x4 maps) with a tiny F: the wake's class
means in the cosine classifier, class-balanced sleep batches, the one-cycle schedule, budgets,
no recompiles."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import cljax.learners
from cljax.learners import siesta as siesta_lib
from cljax.ops import pq
from cljax.ops import pq_maps


class TinyF(nnx.Module):
  """A 1x1 convolution, batch norm, ReLU, average pool, fc: F's interface (``features``, ``fc``)."""

  def __init__(self, d, k, rngs):
    self.conv = nnx.Conv(d, 16, (1, 1), rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.fc = nnx.Linear(16, k, rngs=rngs)

  def features(self, x, use_running_average=None, mask=None):
    del mask
    return jax.nn.relu(self.bn(self.conv(x), use_running_average=use_running_average)).mean((1, 2))

  def __call__(self, x, use_running_average=None, mask=None):
    return self.fc(self.features(x, use_running_average))


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits(return_X_y=True)
  x = (x / 16).astype(np.float32).reshape(-1, 4, 4, 4)  # real digits as 4x4 maps of 4 channels
  cb = pq.train(jax.random.key(0), jnp.asarray(x.reshape(-1, 4)), 2, 16, iters=10)
  return x, y.astype(np.int32), cb


def _learner(cb, **kw):
  kw = dict(dict(batch_size=32, sleep_passes=20, buffer_capacity=300, sleep_lr=0.1), **kw)
  return cljax.learners.get("siesta", num_classes=10, f_module=TinyF(4, 10, nnx.Rngs(0)),
                            codebook=cb, **kw)


def test_wake_sets_classifier_rows_to_running_means_of_decoded_features(digits, compiles):
  x, y, cb = digits
  learner = _learner(cb)
  state = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  net = siesta_lib.Net.of(siesta_lib.CosineTop(TinyF(4, 10, nnx.Rngs(0))))
  rows = np.flatnonzero(y < 3)[:96]
  counts = []
  for i in range(0, 96, 16):
    with compiles() as n:
      state, info = learner.update(state, {"x": x[rows[i:i + 16]], "y": y[rows[i:i + 16]]}, None)
    counts.append(n[0])
  assert counts[1:] == [0] * 5, counts
  # Independent reference: F (unchanged by the wake, eval mode) on the decoded maps, class means.
  h = np.asarray(net.features(net.fixed_params, pq_maps.decode(cb, pq_maps.encode(cb, x[rows]))))
  kernel = np.asarray(state.params["f"]["fc"]["kernel"])
  bias = np.asarray(state.params["f"]["fc"]["bias"])
  for c in range(3):
    np.testing.assert_allclose(kernel[:, c], h[y[rows] == c].mean(0), rtol=1e-4, atol=1e-5)
    assert bias[c] == 1.0
  init_kernel = np.asarray(net.fixed_params["f"]["fc"]["kernel"])
  np.testing.assert_array_equal(kernel[:, 3:], init_kernel[:, 3:])  # unseen rows untouched
  assert int(state.buffer.count) == 96 and int(info.passes) == 0


@pytest.mark.slow  # about 30 s on 2 busy cores
def test_sleep_spends_its_budget_and_lifts_accuracy_class_incrementally(digits):
  x, y, cb = digits
  learner = _learner(cb)
  state = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  order = np.argsort(y, kind="stable")
  tr, te = order[::2], order[1::2]
  for t in range(3):
    idx = tr[np.isin(y[tr], [2 * t, 2 * t + 1])][:144]
    for i in range(0, len(idx), 16):
      state, _ = learner.update(state, {"x": x[idx[i:i + 16]], "y": y[idx[i:i + 16]]}, None)
    seen = te[np.isin(y[te], range(2 * t + 2))]
    before = (np.asarray(learner.predict(state, x[seen])).argmax(1) == y[seen]).mean()
    state, info = learner.end_of_step(state, jax.random.key(t), 60)
    after = (np.asarray(learner.predict(state, x[seen])).argmax(1) == y[seen]).mean()
    assert float(info.passes) == 60 and np.isfinite(float(info.loss))
  assert after > before + 0.15 and after > 0.45, (before, after)
  state, info = learner.end_of_step(state, jax.random.key(9), 0)
  assert float(info.passes) == 0


def test_balanced_rows_go_round_the_classes_held(digits):
  x, y, cb = digits
  learner = _learner(cb)
  state = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  rows = np.flatnonzero(np.isin(y, [1, 4, 7]))[:64]
  rows = np.concatenate([rows[y[rows] == 1][:40], rows[y[rows] == 4][:4], rows[y[rows] == 7][:4]])
  for i in range(0, 48, 16):
    state, _ = learner.update(state, {"x": x[rows[i:i + 16]], "y": y[rows[i:i + 16]]}, None)
  slots = np.asarray(siesta_lib.balanced_rows(state.buffer, jax.random.key(3), 30))
  labels = np.asarray(state.buffer.y)[slots]
  np.testing.assert_array_equal(np.bincount(labels, minlength=10)[[1, 4, 7]], [10, 10, 10])


def test_one_cycle_matches_torch_one_cycle_lr_endpoints():
  peak, total = 0.2, 100
  lr = lambda i: float(siesta_lib.one_cycle(jnp.int32(i), jnp.int32(total), peak))
  # torch.optim.lr_scheduler.OneCycleLR(max_lr=0.2, total_steps=100): step 0 at max_lr / 25,
  # the peak at step 0.3 * 100 - 1 = 29, the last step at max_lr / 25 / 1e4.
  assert lr(0) == pytest.approx(peak / 25)
  assert lr(29) == pytest.approx(peak)
  assert lr(99) == pytest.approx(peak / 25 / 1e4, rel=1e-3)
  assert lr(14) < lr(20) < lr(29) and lr(40) > lr(70) > lr(95)


def test_sleep_every_examples_and_bad_settings(digits):
  x, y, cb = digits
  learner = _learner(cb, sleep_every=32, sleep_passes=5)
  state = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  passes = []
  for i in range(0, 64, 16):
    state, info = learner.update(state, {"x": x[i:i + 16], "y": y[i:i + 16]}, jax.random.key(i))
    passes.append(float(info.passes))
  assert passes == [0, 5, 0, 5]
  with pytest.raises(ValueError, match="siesta"):
    _learner(cb, sleep_every=-1)
  with pytest.raises(ValueError, match="siesta"):
    cljax.learners.get("siesta", num_classes=10)
