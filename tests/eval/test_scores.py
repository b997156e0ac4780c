"""ROC AUC, precision-recall, calibration and the PCA plane against scikit-learn.

Scores come from real models on real data (a logistic regression on scikit-learn's digits and
breast-cancer measurements) and from rounded random logits, whose many ties exercise the tied-rank
form; classes absent from ``y`` and the 2-class case are covered.
"""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from cljax.eval import metrics as M

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def softmax(z):
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _fit(x, y, seed=0):
  """Logits of a weak logistic regression (few iterations: mistakes and spread confidences),
  trained on every other row and scored on the rest."""
  x = (x - x.mean(0)) / (x.std(0) + 1e-9)
  clf = LogisticRegression(max_iter=8, C=0.05, random_state=seed).fit(x[::2], y[::2])
  return y[1::2], clf.decision_function(x[1::2])


@pytest.fixture(scope="module")
def digits_scores():
  d = load_digits()
  return _fit(d.data, d.target)


def tied_logits(n=300, k=4, seed=0):
  """Labels and logits drawn from a palette of 12 integer rows (every score heavily tied),
  the label mostly the row's largest logit."""
  rng = np.random.default_rng(seed)
  palette = rng.integers(0, 3, (12, k)).astype(float)
  z = palette[rng.integers(0, 12, n)]
  y = np.argmax(z + rng.normal(scale=1.0, size=z.shape), 1)
  return y, z


def test_roc_auc_equals_sklearn_on_real_scores(digits_scores):
  y, z = digits_scores
  got = M.roc_auc(y, z)
  p = softmax(z)
  assert got["macro"] == pytest.approx(
      skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
  want = [skm.roc_auc_score(y == c, p[:, c]) for c in range(10)]
  np.testing.assert_allclose(got["per_class"], want, atol=1e-12)
  assert 0.9 < got["macro"] < 1.0  # a real, imperfect model
  # probabilities in give the same as their logits
  assert M.roc_auc(y, p)["macro"] == pytest.approx(got["macro"], abs=1e-12)


def test_roc_auc_with_ties_equals_sklearn():
  y, z = tied_logits()
  p = softmax(z)
  assert len(np.unique(p[:, 0])) <= 12  # heavily tied
  got = M.roc_auc(y, z)
  assert got["macro"] == pytest.approx(
      skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
  # the area under the tie-aware ROC curve is the same number
  for c in range(4):
    fpr, tpr, _ = M.roc_curve(y == c, p[:, c])
    assert np.trapezoid(tpr, fpr) == pytest.approx(got["per_class"][c], abs=1e-12)


def test_roc_auc_absent_class_is_nan_and_left_out_of_the_macro():
  y, z = tied_logits(k=5, seed=1)
  keep = y != 3
  y, z = y[keep], z[keep]
  got = M.roc_auc(y, z)
  assert np.isnan(got["per_class"][3])
  p = softmax(z)
  present = [0, 1, 2, 4]
  want = [skm.roc_auc_score(y == c, p[:, c]) for c in present]
  np.testing.assert_allclose([got["per_class"][c] for c in present], want, atol=1e-12)
  assert got["macro"] == pytest.approx(np.mean(want), abs=1e-12)
  # one class only: nothing to rank against
  one = M.roc_auc(np.zeros(4, int), np.eye(3)[[0, 1, 0, 2]])
  assert np.isnan(one["macro"]) and all(np.isnan(one["per_class"]))


def test_roc_auc_two_classes_on_real_data():
  d = load_breast_cancer()
  y, z = _fit(d.data, d.target)
  z2 = np.stack([-z / 2, z / 2], 1)  # binary decision values as 2-class logits
  got = M.roc_auc(y, z2)
  want = skm.roc_auc_score(y, z)
  assert got["macro"] == pytest.approx(want, abs=1e-12)
  np.testing.assert_allclose(got["per_class"], [want, want], atol=1e-12)
  assert M.roc_auc(y, z)["macro"] == pytest.approx(want, abs=1e-12)  # 1-D scores of class 1
  assert M.roc_auc(y, 1 / (1 + np.exp(-z)))["macro"] == pytest.approx(want, abs=1e-12)


def test_roc_curve_equals_sklearn():
  y, z = tied_logits(seed=2)
  for c in range(4):
    got = M.roc_curve(y == c, z[:, c])
    want = skm.roc_curve(y == c, z[:, c], drop_intermediate=False)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("source", ["digits", "ties"])
def test_precision_recall_equals_sklearn(source, digits_scores):
  y, z = digits_scores if source == "digits" else tied_logits(seed=3)
  p = softmax(z)
  got = M.precision_recall(y, z)
  k = p.shape[1]
  for c in range(k):
    want = skm.precision_recall_curve(y == c, p[:, c])
    for a, b in zip(got["curves"][c], want):
      np.testing.assert_allclose(a, b, atol=1e-12)
    assert got["average_precision"][c] == pytest.approx(
        skm.average_precision_score(y == c, p[:, c]), abs=1e-12)
  assert got["macro_ap"] == pytest.approx(
      skm.average_precision_score(np.eye(k)[y], p, average="macro"), abs=1e-12)


def test_precision_recall_absent_class_and_two_classes():
  y, z = tied_logits(k=3, seed=4)
  y, z = y[y != 1], z[y != 1]
  got = M.precision_recall(y, z)
  assert np.isnan(got["average_precision"][1])
  p = softmax(z)
  assert got["macro_ap"] == pytest.approx(np.mean(
      [skm.average_precision_score(y == c, p[:, c]) for c in (0, 2)]), abs=1e-12)
  d = load_breast_cancer()
  yb, zb = _fit(d.data, d.target)
  got = M.precision_recall(yb, zb)
  assert got["average_precision"][1] == pytest.approx(
      skm.average_precision_score(yb, zb), abs=1e-12)


def _ece_reference(y, p, bins):
  """ECE from scikit-learn's calibration_curve (accuracy and mean confidence of each non-empty
  bin) with the bin counts from a plain loop over the examples."""
  conf, correct = p.max(1), p.argmax(1) == y
  acc, mean_conf = calibration_curve(correct, conf, n_bins=bins, strategy="uniform")
  counts = {}
  for c in conf:  # bin b holds (b/bins, (b+1)/bins]; 0 goes to bin 0
    b = max(int(np.ceil(c * bins)) - 1, 0)
    counts[b] = counts.get(b, 0) + 1
  n = [counts[b] for b in sorted(counts)]
  return float(np.sum(np.asarray(n) / len(y) * np.abs(acc - mean_conf)))


@pytest.mark.parametrize("bins", [15, 10, 4])
def test_ece_equals_calibration_curve(bins, digits_scores):
  y, z = digits_scores
  p = softmax(z)
  got = M.expected_calibration_error(y, p, bins)
  assert got == pytest.approx(_ece_reference(y, p, bins), abs=1e-12)
  assert M.expected_calibration_error(y, z, bins) == pytest.approx(got, abs=1e-12)  # logits
  t = M.reliability_table(y, p, bins)
  assert t["count"].sum() == len(y) and len(t["edges"]) == bins + 1


def test_ece_by_hand():
  # confidences 0.9, 0.9 (one right), 0.6 (right), 0.5 exactly on an edge of 10 bins -> bin 4
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
  y = np.array([0, 0, 0, 1])
  t = M.reliability_table(y, probs, 10)
  assert t["count"][8] == 2 and t["count"][5] == 1 and t["count"][4] == 1
  # |0.5 - 0.9| * 2/4 + |1 - 0.6| * 1/4 + |0 - 0.5| * 1/4 (argmax of a tie is class 0)
  assert M.expected_calibration_error(y, probs, 10) == pytest.approx(0.2 + 0.1 + 0.125)
  with pytest.raises(ValueError, match="bins must be an integer"):
    M.expected_calibration_error(y, probs, 0)
  with pytest.raises(ValueError, match="labels in \\[0, 2\\)"):
    M.expected_calibration_error(np.array([0, 0, 0, 2]), probs)


def test_pca_plane_equals_sklearn():
  x = load_digits().data
  mean, pcs, coords = M.pca_plane(x)
  ref = PCA(2).fit(x)
  np.testing.assert_allclose(mean, ref.mean_, atol=1e-10)
  signs = np.sign((pcs * ref.components_).sum(1))  # sklearn's own sign convention may differ
  np.testing.assert_allclose(pcs, ref.components_ * signs[:, None], atol=1e-8)
  np.testing.assert_allclose(coords, ref.transform(x) * signs, atol=1e-8)
  assert all(pcs[i, np.argmax(np.abs(pcs[i]))] > 0 for i in range(2))
  # deterministic sign: negating the data's direction does not flip the components
  _, pcs2, _ = M.pca_plane(-x)
  np.testing.assert_allclose(pcs2, pcs, atol=1e-8)
  # images are flattened; a 1-D input has a zero second direction
  _, pcs_img, _ = M.pca_plane(x.reshape(-1, 8, 8, 1))
  np.testing.assert_allclose(pcs_img, pcs, atol=1e-8)
  _, pcs1, c1 = M.pca_plane(np.arange(5.0)[:, None])
  assert pcs1.tolist() == [[1.0], [0.0]] and c1[:, 1].tolist() == [0.0] * 5
