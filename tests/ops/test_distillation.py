"""cljax/ops/distillation.py against hand-written NumPy versions of LwF's and iCaRL's losses."""

import numpy as np

from cljax.ops.distillation import icarl_targets, kd_loss, sigmoid_bce


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_kd_loss_is_t2_kl_over_old_classes():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
  old = np.array([True, True, False, True, False])
  w = np.array([1, 1, 1, 0, 1, 1], np.float32)
  T = 2.0
  # Li and Hoiem 2016, Eq. (2) with y' = softmax(logits / T) over the old task's outputs.
  p_t, p_s = _softmax(t[:, old] / T), _softmax(s[:, old] / T)
  kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(1)
  want = T * T * (kl * w).sum() / w.sum()
  np.testing.assert_allclose(float(kd_loss(s, t, old, w, T)), want, rtol=1e-5)
  assert float(kd_loss(s, t, np.zeros(5, bool), w, T)) == 0.0
  assert abs(float(kd_loss(t, t, old, w, T))) < 1e-6  # the teacher itself loses nothing


def test_icarl_bce_with_teacher_targets():
  rng = np.random.default_rng(1)
  z, t = rng.normal(size=(4, 6)) * 2, rng.normal(size=(4, 6))
  y = np.array([2, 3, 3, 2])
  old = np.array([1, 1, 0, 0, 0, 0], bool)
  seen = np.array([1, 1, 1, 1, 0, 0], bool)
  w = np.ones(4, np.float32)
  tgt = np.asarray(icarl_targets(t, y, old))
  want_tgt = np.eye(6)[y]
  want_tgt[:, :2] = 1 / (1 + np.exp(-t[:, :2]))
  np.testing.assert_allclose(tgt, want_tgt, rtol=1e-6)
  # mammoth models/icarl.py: F.binary_cross_entropy_with_logits(outputs[:, :seen], targets)
  p = 1 / (1 + np.exp(-z[:, seen]))
  want = -(want_tgt[:, seen] * np.log(p) + (1 - want_tgt[:, seen]) * np.log(1 - p)).mean()
  np.testing.assert_allclose(float(sigmoid_bce(z, tgt, seen, w)), want, rtol=1e-5)
