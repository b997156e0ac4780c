"""The validation split of a stream (``make_stream(val_fraction=...)`` / ``val_folds``), on real
digits: stratified per class and step, disjoint from training, seed-determined, and leaving the
stream without a split exactly as it was."""

import numpy as np
import pytest

from cljax import data


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def _stream(ds, **kw):
  return data.make_stream(ds, "class_incremental", classes_per_step=2, seed=3, **kw)


def test_fraction_is_stratified_disjoint_and_seeded(digits):
  plain = _stream(digits)
  s = _stream(digits, val_fraction=0.2)
  y = digits.train.y
  for t, (full, tr, va) in enumerate(zip(plain.steps, s.steps, s.val_steps)):
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(np.sort(np.r_[tr, va]), np.sort(full))
    # training order kept: the plain step with the held-out rows removed
    np.testing.assert_array_equal(tr, full[~np.isin(full, va)])
    for c in np.unique(y[full]):
      assert (y[va] == c).sum() == round(0.2 * (y[full] == c).sum()), (t, c)
    np.testing.assert_array_equal(s.labels[t], y[tr])
    assert len(s.labeled[t]) == len(tr)
  assert np.array_equal(s.val_index(1), np.r_[s.val_steps[0], s.val_steps[1]])
  again = _stream(digits, val_fraction=0.2)
  assert all(np.array_equal(a, b) for a, b in zip(again.val_steps, s.val_steps))
  other = data.make_stream(digits, "class_incremental", classes_per_step=2, seed=4,
                           val_fraction=0.2)
  assert not np.array_equal(np.sort(other.val_index(4)), np.sort(s.val_index(4)))
  assert "held out for validation" in s.describe() and plain.val_steps is None
  assert not plain.has_validation and plain.val_index(2).size == 0


def test_folds_partition_every_class(digits):
  k, y = 5, digits.train.y
  folds = [np.sort(_stream(digits, val_folds=k, val_fold=i).val_index(4)) for i in range(k)]
  every = np.concatenate(folds)
  assert len(every) == len(y) and len(np.unique(every)) == len(y)  # disjoint, and all rows
  for c in range(10):
    n = (y == c).sum()
    sizes = [(y[f] == c).sum() for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n  # stratified as StratifiedKFold


def test_bad_values(digits):
  with pytest.raises(data.DataError, match="val_fraction"):
    _stream(digits, val_fraction=1.0)
  with pytest.raises(data.DataError, match="val_fold"):
    _stream(digits, val_folds=5, val_fold=5)
  with pytest.raises(data.DataError, match="not both"):
    _stream(digits, val_folds=5, val_fraction=0.1)
