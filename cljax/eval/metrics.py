"""Continual-learning metrics over an accuracy matrix (ALGORITHMS.md §0).

``acc`` is the accuracy matrix a [T, J]: a[t, j] is the accuracy on evaluation task j's test data
after time step t. ``task_step`` [J] gives the step that introduces task j; only entries with
task_step[j] <= t count ("seen" tasks). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _seen(acc: np.ndarray, task_step, t: int) -> np.ndarray:
  return np.asarray([j for j in range(acc.shape[1]) if task_step[j] <= t], int)


def average_over_seen(acc: np.ndarray, task_step) -> np.ndarray:
  """A(t) [T]: mean over seen tasks j of a[t, j]."""
  return np.asarray([acc[t, _seen(acc, task_step, t)].mean() for t in range(acc.shape[0])])


def final_accuracy(acc: np.ndarray, task_step) -> float:
  """A(T): the mean accuracy over all seen tasks after the last step."""
  return float(average_over_seen(acc, task_step)[-1])


def average_accuracy(acc: np.ndarray, task_step) -> float:
  """Ā: the mean of A(t) over all steps."""
  return float(average_over_seen(acc, task_step).mean())


def forgetting(acc: np.ndarray, task_step) -> float:
  """Mean over tasks j seen before the last step of max_{t' < T} a[t', j] − a[T, j].

  The max runs over the steps t' at which task j had been seen. 0 when only one step exists or no
  task was introduced before the last step.
  """
  last = acc.shape[0] - 1
  vals = [max(acc[t, j] for t in range(task_step[j], last)) - acc[last, j]
          for j in range(acc.shape[1]) if task_step[j] < last]
  return float(np.mean(vals)) if vals else 0.0


def backward_transfer(acc: np.ndarray, task_step) -> float:
  """BWT: mean over tasks j introduced before the last step of a[T, j] − a[s_j, j]."""
  last = acc.shape[0] - 1
  vals = [acc[last, j] - acc[task_step[j], j]
          for j in range(acc.shape[1]) if task_step[j] < last]
  return float(np.mean(vals)) if vals else 0.0


def omega(model_acc, offline_acc) -> float:
  """Ω_all (Hayes and Kanan): mean over evaluation points of α_model(t) / α_offline(t).

  Both arguments are [P] accuracies at the same evaluation points (on all data seen so far).
  Points where the offline accuracy is 0 are skipped.
  """
  m, o = np.asarray(model_acc, float), np.asarray(offline_acc, float)
  if m.shape != o.shape:
    raise ValueError(f"omega: model has {m.shape} evaluation points, offline {o.shape}")
  keep = o > 0
  return float(np.mean(m[keep] / o[keep])) if keep.any() else float("nan")


def topk_correct(logits: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: whether y is among the k highest logits [N, K] (ties broken by index)."""
  k = min(k, logits.shape[1])
  top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return (top == y[:, None]).any(axis=1)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """[K, K] int counts: rows are true classes, columns predicted classes."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (y_true, y_pred), 1)
  return cm


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes=None) -> float:
  """Mean over classes (present in y_true, or ``classes``) of per-class recall."""
  classes = np.unique(y_true) if classes is None else np.asarray(classes)
  return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes if (y_true == c).any()]))


def precision_recall_f1(cm: np.ndarray) -> dict:
  """Per-class precision, recall and F1 [K] from a confusion matrix (0 where undefined)."""
  tp = np.diag(cm).astype(float)
  pred, true = cm.sum(0).astype(float), cm.sum(1).astype(float)
  p = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
  r = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
  f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
  return {"precision": p, "recall": r, "f1": f1}


# --- scores of the final model: ROC, precision-recall, calibration, the PCA plane --------------
# ``y`` [N] int labels in [0, K); ``scores`` [N, K] logits or probabilities of one model on N test
# examples. Every figure here equals scikit-learn's (tests/eval/test_metrics.py), computed with
# numpy only (importing scikit-learn costs ~2 s, more than a small run).


def cross_entropy(logits, y) -> Optional[float]:
  """Mean cross-entropy, in nats, of ``logits`` [N, K] for integer labels ``y`` [N], computed in
  float64 (``sklearn.metrics.log_loss`` of their softmax); None for N = 0 or non-finite logits."""
  y = np.asarray(y)
  if len(y) == 0:
    return None
  z = np.asarray(logits, np.float64)
  z = z - z.max(1, keepdims=True)
  ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y.astype(np.int64)]
  v = float(ce.mean())
  return v if np.isfinite(v) else None


def probabilities(scores) -> np.ndarray:
  """[N, K] float64 class probabilities: ``scores`` as they are when they already are (every
  entry in [0, 1], every row summing to 1 within 1e-4), else their softmax (logits)."""
  s = np.asarray(scores, np.float64)
  if s.ndim != 2:
    raise ValueError(f"scores must be [N, K] (N examples, K classes), got shape {s.shape}")
  if s.size and s.min() >= 0.0 and s.max() <= 1.0 and np.allclose(s.sum(1), 1.0, atol=1e-4):
    return s
  z = s - s.max(1, keepdims=True)  # shifted so exp never overflows
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def _labels(y, n: int, k: int) -> np.ndarray:
  y = np.asarray(y)
  if y.shape != (n,):
    raise ValueError(f"y must be [N] = [{n}] labels (one per row of scores), got shape {y.shape}")
  if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
    raise ValueError(f"y must hold integer labels in [0, {k}) (the columns of scores)")
  return y.astype(np.int64)


def _scores_2d(y, scores) -> tuple:
  """(y [N] int64, probabilities [N, K]); 1-D scores are the positive class's of a 2-class
  problem (column 1; column 0 is their complement, so both ROC curves hold the same ranks)."""
  s = np.asarray(scores, np.float64)
  if s.ndim == 1:
    p1 = s if s.size == 0 or (s.min() >= 0 and s.max() <= 1) else 1.0 / (1.0 + np.exp(-s))
    p = np.stack([1.0 - p1, p1], 1)
  else:
    p = probabilities(s)
  return _labels(y, p.shape[0], p.shape[1]), p


def tied_ranks(a: np.ndarray) -> np.ndarray:
  """Ranks 1..N of ``a`` [N] along axis 0 (also [N, K], per column); tied values share the mean
  of their ranks (``scipy.stats.rankdata(method="average")``)."""
  a = np.asarray(a, np.float64)
  flat = a.reshape(a.shape[0], -1)
  out = np.empty_like(flat)
  for j in range(flat.shape[1]):
    col = flat[:, j]
    order = np.argsort(col, kind="mergesort")
    s = col[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]  # first index of each tie group
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    out[order, j] = np.repeat(mean_rank, ends - starts)
  return out.reshape(a.shape)


def roc_auc(y, scores) -> dict:
  """One-vs-rest ROC AUC of ``scores`` [N, K] (logits or probabilities) for labels ``y`` [N].

  Class c's AUC is the probability that a random example of class c scores higher on column c
  (of the probabilities, the softmax of logits) than a random example of another class, ties
  counting 1/2: the Mann-Whitney U statistic from tied ranks, U / (n_c · (N − n_c)), which is the
  area under the ROC curve with ties drawn as diagonal segments (scikit-learn's ``roc_auc_score``).

  Returns ``{"macro": float, "per_class": [K] floats}``: ``per_class[c]`` is NaN when class c has
  no example in ``y`` (or every example is of class c); ``macro`` is the mean over the other
  classes (NaN if none), equal to ``roc_auc_score(y, softmax(scores), multi_class="ovr",
  average="macro")`` when all K classes are present. 1-D ``scores`` [N] are a 2-class problem's
  scores of class 1; with 2 classes both per-class values equal the binary AUC.
  """
  y, p = _scores_2d(y, scores)
  n, k = p.shape
  ranks = tied_ranks(p)
  per_class = np.full(k, np.nan)
  for c in range(k):
    pos = y == c
    n_pos = int(pos.sum())
    if 0 < n_pos < n:
      u = ranks[pos, c].sum() - n_pos * (n_pos + 1) / 2.0
      per_class[c] = u / (n_pos * (n - n_pos))
  ok = np.isfinite(per_class)
  return {"macro": float(per_class[ok].mean()) if ok.any() else float("nan"),
          "per_class": per_class.tolist()}


def _binary_curve(positive: np.ndarray, score: np.ndarray) -> tuple:
  """(false positives [M], true positives [M], thresholds [M]) at each distinct score,
  thresholds decreasing: predicting positive where score >= threshold (sklearn's
  ``_binary_clf_curve``)."""
  order = np.argsort(-score, kind="mergesort")
  s, pos = score[order], positive[order].astype(np.float64)
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
  tps = np.cumsum(pos)[last]
  return 1.0 + last - tps, tps, s[last]


def roc_curve(positive, score) -> tuple:
  """(fpr [M+1], tpr [M+1], thresholds [M+1]) of binary labels ``positive`` [N] (bool) under
  ``score`` [N]: one point per distinct score, from (0, 0) at threshold +inf to (1, 1);
  ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``. A rate whose class is empty is
  NaN."""
  positive, score = np.asarray(positive, bool), np.asarray(score, np.float64)
  fps, tps, thr = _binary_curve(positive, score)
  fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
  with np.errstate(invalid="ignore", divide="ignore"):
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thr]


def precision_recall_curve(positive, score) -> tuple:
  """(precision [M+1], recall [M+1], thresholds [M]) of binary labels ``positive`` [N] under
  ``score`` [N], thresholds increasing and the curve closed by the point (recall 0, precision 1):
  ``sklearn.metrics.precision_recall_curve``. Recall is 1 everywhere when there is no positive."""
  positive, score = np.asarray(positive, bool), np.asarray(score, np.float64)
  fps, tps, thr = _binary_curve(positive, score)
  predicted = tps + fps
  precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
  recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(positive, score) -> float:
  """Σ_n (R_n − R_{n−1}) P_n over the precision-recall curve's points
  (``sklearn.metrics.average_precision_score``, no interpolation); NaN without positives."""
  positive = np.asarray(positive, bool)
  if not positive.any():
    return float("nan")
  precision, recall, _ = precision_recall_curve(positive, score)
  return float(-np.sum(np.diff(recall) * precision[:-1]))


def precision_recall(y, scores) -> dict:
  """Per-class (one-vs-rest) precision-recall of ``scores`` [N, K] (logits or probabilities) for
  labels ``y`` [N]: ``{"curves": [K] (precision, recall, thresholds) of column c's probability
  (``precision_recall_curve``), "average_precision": [K] (NaN for a class absent from y),
  "macro_ap": their mean over the classes present}``."""
  y, p = _scores_2d(y, scores)
  curves = [precision_recall_curve(y == c, p[:, c]) for c in range(p.shape[1])]
  ap = np.asarray([average_precision(y == c, p[:, c]) for c in range(p.shape[1])])
  ok = np.isfinite(ap)
  return {"curves": curves, "average_precision": ap.tolist(),
          "macro_ap": float(ap[ok].mean()) if ok.any() else float("nan")}


def reliability_table(y, probs, bins: int = 15) -> dict:
  """The reliability diagram's numbers: top-1 confidence max_k p[i, k] of ``probs`` [N, K]
  (logits are turned into probabilities) in ``bins`` equal-width bins (lo, hi] of [0, 1] (the
  first also holds 0; sklearn's ``calibration_curve(strategy="uniform")`` binning).

  Returns ``edges`` [bins+1], ``count`` [bins] examples per bin, ``accuracy`` [bins] (fraction of
  them whose top-1 class is y) and ``confidence`` [bins] (their mean confidence), both NaN for an
  empty bin.
  """
  if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
    raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
  p = probabilities(probs)
  y = _labels(y, p.shape[0], p.shape[1])
  conf = p.max(1)
  correct = (p.argmax(1) == y).astype(np.float64)
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.searchsorted(edges[1:-1], conf)  # (lo, hi]: a value on an edge goes below it
  count = np.bincount(which, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    accuracy = np.bincount(which, correct, bins) / count
    confidence = np.bincount(which, conf, bins) / count
  return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": confidence}


def expected_calibration_error(y, probs, bins: int = 15) -> float:
  """ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| over ``bins`` equal-width bins of top-1
  confidence (``reliability_table``; Guo et al. 2017, Eq. 3), a fraction in [0, 1]. ``y`` [N],
  ``probs`` [N, K] probabilities (logits are turned into probabilities). NaN when N = 0."""
  t = reliability_table(y, probs, bins)
  n = t["count"].sum()
  if n == 0:
    return float("nan")
  ok = t["count"] > 0
  return float(np.sum(t["count"][ok] / n * np.abs(t["accuracy"][ok] - t["confidence"][ok])))


def pca_plane(x) -> tuple:
  """The plane of the first two principal components of ``x`` [N, D] (trailing axes of images
  [N, H, W, C] are flattened to D).

  Returns ``mean`` [D], ``pcs`` [2, D] (orthonormal rows, the directions of largest variance;
  each row's largest-magnitude entry is positive, so the sign is fixed) and ``coords`` [N, 2]
  = (x − mean) · pcsᵀ. A grid point (u, v) maps back to input space as mean + u·pcs[0] +
  v·pcs[1]. With D = 1 (or rank < 2) the missing direction is a zero row.
  """
  a = np.asarray(x, np.float64)
  if a.ndim < 2 or a.shape[0] < 1:
    raise ValueError(f"x must be [N, D] with N >= 1, got shape {a.shape}")
  a = a.reshape(a.shape[0], -1)
  mean = a.mean(0)
  _, sv, vt = np.linalg.svd(a - mean, full_matrices=False)
  pcs = np.zeros((2, a.shape[1]))
  r = min(2, vt.shape[0])
  pcs[:r] = vt[:r]
  pcs[:r][sv[:r] <= sv[0] * 1e-12] = 0.0  # a direction without variance is no direction
  big = np.argmax(np.abs(pcs), axis=1)
  pcs *= np.where(pcs[np.arange(2), big] < 0, -1.0, 1.0)[:, None]
  return mean, pcs, (a - mean) @ pcs.T
