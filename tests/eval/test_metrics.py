"""Metric formulas against hand-computed matrices."""

import numpy as np
import pytest

from cljax.eval import metrics as M

# 3 steps, 3 tasks introduced at steps 0, 1, 2.
ACC = np.array([[0.9, np.nan, np.nan],
                [0.6, 0.8, np.nan],
                [0.5, 0.7, 0.95]])
STEPS = [0, 1, 2]


def test_average_over_seen_by_hand():
  np.testing.assert_allclose(M.average_over_seen(ACC, STEPS), [0.9, 0.7, (0.5 + 0.7 + 0.95) / 3])
  assert M.final_accuracy(ACC, STEPS) == pytest.approx(2.15 / 3)
  assert M.average_accuracy(ACC, STEPS) == pytest.approx((0.9 + 0.7 + 2.15 / 3) / 3)


def test_forgetting_and_bwt_by_hand():
  # task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: max(0.8) - 0.7 = 0.1
  assert M.forgetting(ACC, STEPS) == pytest.approx(0.25)
  # task 0: 0.5 - 0.9; task 1: 0.7 - 0.8
  assert M.backward_transfer(ACC, STEPS) == pytest.approx(-0.25)


def test_single_task_stream_has_no_forgetting():
  acc = np.array([[0.5], [0.7], [0.6]])
  assert M.forgetting(acc, [0]) == pytest.approx(0.7 - 0.6)
  assert M.final_accuracy(acc, [0]) == pytest.approx(0.6)
  assert M.forgetting(np.array([[0.5]]), [0]) == 0.0


def test_omega():
  assert M.omega([0.5, 0.6], [1.0, 0.8]) == pytest.approx((0.5 + 0.75) / 2)
  assert M.omega([0.5, 0.6], [0.0, 0.6]) == pytest.approx(1.0)  # zero offline points skipped
  with pytest.raises(ValueError, match="evaluation points"):
    M.omega([0.5], [0.5, 0.5])


def test_topk_confusion_and_per_class():
  logits = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [5.0, 0.0, 4.0]])
  y = np.array([1, 2, 2])
  np.testing.assert_array_equal(M.topk_correct(logits, y, 1), [False, True, False])
  np.testing.assert_array_equal(M.topk_correct(logits, y, 2), [True, True, True])
  pred = logits.argmax(1)
  cm = M.confusion_matrix(y, pred, 3)
  np.testing.assert_array_equal(cm, [[0, 0, 0], [1, 0, 0], [1, 0, 1]])
  assert M.mean_per_class_accuracy(y, pred) == pytest.approx((0.0 + 0.5) / 2)
  prf = M.precision_recall_f1(cm)
  np.testing.assert_allclose(prf["precision"], [0.0, 0.0, 1.0])
  np.testing.assert_allclose(prf["recall"], [0.0, 0.0, 0.5])
  np.testing.assert_allclose(prf["f1"], [0.0, 0.0, 2 / 3])
