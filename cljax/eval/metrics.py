"""Continual-learning metrics over an accuracy matrix (ALGORITHMS.md §0).

``acc`` is the accuracy matrix a [T, J]: a[t, j] is the accuracy on evaluation task j's test data
after time step t. ``task_step`` [J] gives the step that introduces task j; only entries with
task_step[j] <= t count ("seen" tasks). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

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
