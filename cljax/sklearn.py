"""Every registered learner as a scikit-learn classifier: ``fit``, ``partial_fit``, pipelines.

    from cljax.sklearn import StreamingClassifier
    clf = StreamingClassifier("slda").fit(X, y)            # streams X in the given order
    clf.partial_fit(X_new, y_new)                          # one more time step
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

A ``fit`` or ``partial_fit`` call is one time step of a stream: its rows go through the learner's
``update`` in batches of ``batch_size`` (in the given order; the last batch padded with rows
marked invalid, so every call has the same shapes), then ``end_of_step`` with the learner's own
default budget. ``fit`` starts afresh; the first ``partial_fit`` needs ``classes`` (every label
the stream may bring), as scikit-learn's own ``partial_fit`` learners do. Labels of any type are
mapped to the learner's integer classes through ``classes_``; the learner is built for
``len(classes_)`` classes, so later steps with new classes among them never recompile.

Inputs are validated by scikit-learn's own helpers (``validate_data``), so bad input reads as
scikit-learn's errors do. Keys come from ``seed`` and the number of batches seen: the same data
in the same order gives the same model.

``early_stopping=True`` (as ``SGDClassifier``'s and ``MLPClassifier``'s, for the learners that
train at step ends: ``cljax.learners.get(name).early_stopping``): each call holds out a stratified
``validation_fraction`` of its rows (``cljax.data.streams.split_validation``, seeded by ``seed``
and the call's number), never trains on them, and the step's training is scored on the held-out
rows of every call so far every ``validation_every`` passes; it stops after
``n_iter_no_change`` scores without the validation accuracy rising by more than ``tol`` (as
scikit-learn's, 1e-3 by default: a tie spends patience) and keeps its best model
(``cljax.train.early_stop``). ``passes_saved_`` and ``best_pass_`` list the figures of each call
that had held-out rows to score on: a call too small to hold any out (every class under about 5
rows at 0.1) trains on all its rows without early stopping, where scikit-learn would raise. The
held-out rows are kept (10 % of every call, in memory and in a pickle).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import cljax.learners
from cljax.data.streams import split_validation
from cljax.train.early_stop import EarlyStopping

_PREDICT_ROWS = 256  # rows of one jitted predict call (the last call padded): one compile


_LEARNERS: dict = {}


def _learner(name: str, num_classes: int, hparams: Optional[dict], rows: int = 0):
  """The bare learner ``name`` for ``num_classes`` classes, built once per process and setting.

  Learners are pure functions, so estimators with the same settings (clones in a grid search or
  a cross-validation, refits) share one and its compiled programs instead of compiling anew.
  A learner sized by its largest time step (``max_step_size`` input) gets room for ``rows``
  (the first call's rows, rounded up to a power of two, at least its default) unless
  ``hparams`` sets it."""
  hp = dict(hparams or {})
  if "max_step_size" in cljax.learners.inputs(name) and "max_step_size" not in hp:
    default = inspect.signature(cljax.learners.registry.entry(name).factory).parameters[
        "max_step_size"].default
    hp["max_step_size"] = max(int(default), 1 << max(int(rows) - 1, 0).bit_length())
  key = (name, int(num_classes), repr(sorted(hp.items())))
  if key not in _LEARNERS:
    _LEARNERS[key] = cljax.learners.get(name, num_classes=int(num_classes), checked=False, **hp)
  return _LEARNERS[key]


class _Key:
  """A typed PRNG key on the host (pickled as its key data)."""

  def __init__(self, data: np.ndarray, impl: str):
    self.data, self.impl = data, impl


def _to_host(tree: Any) -> Any:
  def one(a):
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return _Key(np.asarray(jax.random.key_data(a)), str(jax.random.key_impl(a)))
    return np.asarray(a)
  return jax.tree.map(one, tree)


def _to_device(tree: Any) -> Any:
  def one(a):
    if isinstance(a, _Key):
      return jax.random.wrap_key_data(jnp.asarray(a.data), impl=a.impl)
    return jnp.asarray(a)
  return jax.tree.map(one, tree, is_leaf=lambda a: isinstance(a, _Key))


class StreamingClassifier(ClassifierMixin, BaseEstimator):
  """A scikit-learn classifier over the cljax learner ``learner`` (see the module docstring).

  Args:
    learner: a ``cljax.learners.names()`` entry, e.g. "slda", "randumb", "er", "finetune".
    hparams: the learner's hyper-parameters, a dict passed to ``cljax.learners.get``.
    batch_size: rows per ``update`` call.
    seed: the PRNG seed of initialisation, training and the validation split.
    early_stopping, validation_fraction, n_iter_no_change, validation_every, tol: early stopping
      on held-out rows (module docstring); scikit-learn's names, ``validation_every`` the passes
      between scores.

  Attributes (after fitting): ``classes_`` [K] the labels, ``n_features_in_``, ``learner_`` the
  ``cljax.learner.Learner``, ``state_`` its state; with early stopping ``passes_saved_`` and
  ``best_pass_`` (one per call).
  """

  def __init__(self, learner: str = "slda", hparams: Optional[dict] = None,
               batch_size: int = 32, seed: int = 0, early_stopping: bool = False,
               validation_fraction: float = 0.1, n_iter_no_change: int = 5,
               validation_every: int = 16, tol: float = 1e-3):
    self.learner = learner
    self.hparams = hparams
    self.batch_size = batch_size
    self.seed = seed
    self.early_stopping = early_stopping
    self.validation_fraction = validation_fraction
    self.n_iter_no_change = n_iter_no_change
    self.validation_every = validation_every
    self.tol = tol

  # -- fitting ------------------------------------------------------------------------------

  def fit(self, X, y):
    """Starts afresh and learns X [N, d], y [N] as one time step, in the given order."""
    X, y = validate_data(self, X, y, dtype=np.float32, reset=True)
    check_classification_targets(y)
    self._start(np.unique(y), X.shape[1], len(X))
    return self._step(X, y)

  def partial_fit(self, X, y, classes=None):
    """Learns X [N, d], y [N] as the next time step. The first call needs ``classes``."""
    first = not hasattr(self, "classes_")
    X, y = validate_data(self, X, y, dtype=np.float32, reset=first)
    check_classification_targets(y)
    if first:
      if classes is None:
        raise ValueError("classes must be passed on the first call to partial_fit.")
      self._start(np.unique(np.asarray(classes)), X.shape[1], len(X))
    elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)),
                                                    self.classes_):
      raise ValueError(f"`classes={np.unique(np.asarray(classes))!r}` is not the same as on "
                       f"the first call to partial_fit, was: {self.classes_!r}")
    return self._step(X, y)

  def _start(self, classes: np.ndarray, n_features: int, rows: int) -> None:
    if int(self.batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
    if self.learner not in cljax.learners.names():
      raise ValueError(f"unknown learner {self.learner!r}; valid: {cljax.learners.names()}")
    if self.early_stopping and not 0.0 < float(self.validation_fraction) < 1.0:
      raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
    self.classes_ = classes
    self.learner_ = _learner(self.learner, len(classes), self.hparams, rows)
    if self.early_stopping and not self.learner_.early_stopping:
      raise ValueError(f"learner {self.learner!r} does not support early stopping (its "
                       "Learner.early_stopping is False); early_stopping=True works with the "
                       "learners that train at step ends, e.g. 'er', 'finetune', 'offline', "
                       "'gdumb', 'ewc', 'lwf', 'icarl'")
    self._max_rows = self.learner_.hparams.get("max_step_size")
    example = {"x": jnp.zeros((int(self.batch_size), n_features), jnp.float32),
               "y": jnp.zeros((int(self.batch_size),), jnp.int32)}
    self.state_ = self.learner_.init(jax.random.key(int(self.seed)), example)
    self._batches = 0
    self._steps = 0
    self._x_val = np.zeros((0, n_features), np.float32)
    self._y_val = np.zeros((0,), np.int32)
    self.passes_saved_, self.best_pass_ = [], []

  def _key(self) -> jax.Array:
    self._batches += 1
    return jax.random.fold_in(jax.random.key(int(self.seed)), self._batches)

  def _step(self, X: np.ndarray, y: np.ndarray):
    missing = np.setdiff1d(np.unique(y), self.classes_)
    if missing.size:
      raise ValueError(f"y holds labels {missing.tolist()} not in classes {self.classes_!r} "
                       "given on the first call to partial_fit")
    if self._max_rows is not None and len(X) > int(self._max_rows):
      raise ValueError(f"{len(X)} rows in one call, but {self.learner!r} was sized for time steps "
                       f"of at most {self._max_rows} rows by the first call; pass "
                       f"hparams={{'max_step_size': {len(X)}}} (or more) and fit again")
    yi = np.searchsorted(self.classes_, y).astype(np.int32)
    stop = None
    if self.early_stopping:
      (train,), (val,) = split_validation(yi, [np.arange(len(yi))], int(self.seed) + self._steps,
                                          float(self.validation_fraction))
      self._x_val = np.concatenate([self._x_val, X[val]])
      self._y_val = np.concatenate([self._y_val, yi[val]])
      X, yi = X[train], yi[train]
      if len(self._y_val):
        stop = EarlyStopping.on(self._x_val, self._y_val, every=int(self.validation_every),
                                patience=int(self.n_iter_no_change), min_delta=float(self.tol),
                                metric="error", batch_size=_PREDICT_ROWS)
    self._steps += 1
    b = int(self.batch_size)
    for s in range(0, len(X), b):
      xb, yb = X[s:s + b], yi[s:s + b]
      pad = b - len(xb)
      batch = {"x": jnp.asarray(np.pad(xb, ((0, pad), (0, 0)))),
               "y": jnp.asarray(np.pad(yb, (0, pad))),
               "valid": jnp.asarray(np.arange(b) < len(xb))}
      self.state_, _ = self.learner_.update(self.state_, batch, self._key())
    if stop is None:
      self.state_, _ = self.learner_.end_of_step(self.state_, self._key())
      return self
    self.state_, info = self.learner_.end_of_step(self.state_, self._key(), early_stop=stop)
    self.passes_saved_.append(float(info.extra["passes_saved"]))
    self.best_pass_.append(float(info.extra.get("best_pass", info.extra.get(
        "best_pass_buffer", np.nan))))
    return self

  # -- prediction ---------------------------------------------------------------------------

  def _scores(self, X) -> np.ndarray:
    check_is_fitted(self, "state_")
    X = validate_data(self, X, dtype=np.float32, reset=False)
    out = []
    for s in range(0, len(X), _PREDICT_ROWS):
      xb = X[s:s + _PREDICT_ROWS]
      padded = np.pad(xb, ((0, _PREDICT_ROWS - len(xb)), (0, 0)))
      out.append(np.asarray(self.learner_.predict(self.state_, jnp.asarray(padded)))[:len(xb)])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(self.classes_)))

  def decision_function(self, X) -> np.ndarray:
    """The learner's logits [N, K]; [N] (class 1 minus class 0) with two classes."""
    s = self._scores(X)
    return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

  def predict_proba(self, X) -> np.ndarray:
    """Softmax of the logits [N, K] (classes the learner has not seen get 0)."""
    s = self._scores(X)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)

  def predict(self, X) -> np.ndarray:
    """The label of the largest logit of each row [N]."""
    scores = self._scores(X)
    return self.classes_[scores.argmax(axis=1)]

  # -- pickling: the jitted functions are rebuilt from the registry ----------------------------

  def __getstate__(self):
    d = dict(self.__dict__)
    d.pop("learner_", None)
    if "state_" in d:
      d["state_"] = _to_host(d["state_"])
    return d

  def __setstate__(self, d):
    # Estimators pickled before early stopping existed: its defaults, no held-out rows yet.
    for k, v in (("early_stopping", False), ("validation_fraction", 0.1),
                 ("n_iter_no_change", 5), ("validation_every", 16), ("tol", 1e-3)):
      d.setdefault(k, v)
    if "state_" in d and "_x_val" not in d:
      d.update(_steps=0, _x_val=np.zeros((0, d["n_features_in_"]), np.float32),
               _y_val=np.zeros((0,), np.int32), passes_saved_=[], best_pass_=[])
    self.__dict__.update(d)
    if "state_" in d:
      hp = dict(self.hparams or {})
      if self._max_rows is not None:
        hp["max_step_size"] = self._max_rows
      self.learner_ = _learner(self.learner, len(self.classes_), hp)
      self.state_ = _to_device(self.state_)
