"""cljax learners as scikit-learn estimators (``cljax.sklearn.StreamingClassifier``).

scikit-learn's own estimator checks run on the closed-form learners (no check may fail) and on the
SGD learners; pipelines, stratified k-fold and grid search run on real digits.
"""

import pickle

import numpy as np
import pytest
import sklearn.datasets
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from cljax.sklearn import StreamingClassifier

# Small settings so each check compiles small programs (the checks fit many shapes).
SGD = dict(model_kwargs={"hidden": (32,)}, chunk=1, epochs_per_step=20.0)


def _digits():
  x, y = sklearn.datasets.load_digits(return_X_y=True)
  return x.astype(np.float32) / 16.0, y


@parametrize_with_checks([StreamingClassifier("slda")])
def test_slda_passes_sklearn_estimator_checks(estimator, check):
  check(estimator)


@parametrize_with_checks([StreamingClassifier("ncm")])
def test_ncm_passes_sklearn_estimator_checks(estimator, check):
  check(estimator)


@pytest.mark.slow  # about 13 s on 2 cores
@parametrize_with_checks([StreamingClassifier("acil", hparams={"expansion_dim": 0})])
def test_acil_passes_sklearn_estimator_checks(estimator, check):
  check(estimator)


@pytest.mark.slow
@parametrize_with_checks([StreamingClassifier("randumb", hparams={"embed_dim": 256})])
def test_randumb_passes_sklearn_estimator_checks(estimator, check):
  check(estimator)


@pytest.mark.slow
@parametrize_with_checks([StreamingClassifier("er", hparams=SGD),
                          StreamingClassifier("finetune", hparams=SGD)])
def test_sgd_learners_pass_sklearn_estimator_checks(estimator, check):
  check(estimator)


def test_slda_equals_sklearn_lda_on_digits_and_partial_fit_equals_fit():
  x, y = _digits()
  clf = StreamingClassifier("slda", hparams={"shrinkage": 1e-4}).fit(x[:1400], y[:1400])
  ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=None).fit(x[:1400], y[:1400])
  agree = (clf.predict(x[1400:]) == ref.predict(x[1400:])).mean()
  assert agree > 0.97, agree
  # streaming the same rows in three calls ends where one fit does (SLDA is exact)
  part = StreamingClassifier("slda", hparams={"shrinkage": 1e-4})
  for s, e in ((0, 500), (500, 1000), (1000, 1400)):
    part.partial_fit(x[s:e], y[s:e], classes=np.arange(10))
  np.testing.assert_allclose(part.decision_function(x[1400:]), clf.decision_function(x[1400:]),
                             rtol=1e-4, atol=1e-3)


def test_string_labels_grow_within_classes_and_pickle_round_trips():
  x, y = _digits()
  names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                    "nine"])
  clf = StreamingClassifier("slda")
  first = np.isin(y, [0, 1])
  clf.partial_fit(x[first], names[y[first]], classes=names)
  assert set(clf.predict(x[first])) <= {"zero", "one"}
  later = np.isin(y, [2, 3])
  clf.partial_fit(x[later], names[y[later]])  # new classes inside `classes`: same programs
  seen = np.isin(y, [0, 1, 2, 3])
  assert (clf.predict(x[seen]) == names[y[seen]]).mean() > 0.9
  again = pickle.loads(pickle.dumps(clf))
  np.testing.assert_array_equal(again.predict_proba(x[:50]), clf.predict_proba(x[:50]))
  with pytest.raises(ValueError, match="not in classes"):
    clf.partial_fit(x[:5], np.array(["ten"] * 5))
  with pytest.raises(ValueError, match="classes must be passed on the first call"):
    StreamingClassifier("slda").partial_fit(x[:5], y[:5])
  with pytest.raises(ValueError, match="unknown learner 'sdla'; valid: "):
    StreamingClassifier("sdla").fit(x[:5], y[:5])


def test_pipeline_under_stratified_kfold_on_digits():
  x, y = _digits()
  pipe = Pipeline([("scale", StandardScaler()), ("pca", PCA(32, random_state=0)),
                   ("slda", StreamingClassifier("slda"))])
  scores = cross_val_score(pipe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
  assert scores.shape == (5,) and scores.min() > 0.88, scores


@pytest.mark.slow  # several seconds: the full suite runs it
def test_grid_search_over_an_er_hyper_parameter():
  x, y = _digits()
  grid = GridSearchCV(StreamingClassifier("er", hparams=dict(SGD, lr=1e-5)),
                      {"hparams": [dict(SGD, lr=1e-5), dict(SGD, lr=3e-3)]},
                      cv=StratifiedKFold(3, shuffle=True, random_state=0))
  grid.fit(x[:900], y[:900])
  assert grid.best_params_["hparams"]["lr"] == 3e-3  # a learning rate that learns wins
  assert grid.best_score_ > 0.85, grid.cv_results_["mean_test_score"]


@pytest.mark.slow  # two offline fits: the full suite runs it
def test_early_stopping_holds_rows_out_and_saves_passes():
  """As SGDClassifier's: a stratified 10 % of each call never reaches training (the offline
  learner keeps every row it trains on: its memory shows which), and the step stops early."""
  xa, ya = _digits()
  x, y = xa[:1000], ya[:1000]
  held = sum(int(round(0.1 * n)) for n in np.bincount(y))
  clf = StreamingClassifier("offline", hparams={"stream_size": 2000, "epochs_per_step": 20.0},
                            early_stopping=True).fit(x, y)
  assert int(clf.state_.mem.count) == 1000 - held
  assert len(clf.passes_saved_) == 1 and clf.passes_saved_[0] > 0
  plain = StreamingClassifier("offline", hparams={"stream_size": 2000, "epochs_per_step": 20.0})
  assert int(plain.fit(x, y).state_.mem.count) == 1000
  # partial_fit: each call holds out its own rows; the score covers every call's.
  clf.partial_fit(x[:300], y[:300])
  assert len(clf.passes_saved_) == 2
  assert clf.score(xa[1000:], ya[1000:]) > 0.85  # rows it never saw


def test_early_stopping_needs_a_learner_that_trains_at_step_ends():
  x, y = _digits()
  with pytest.raises(ValueError, match="learner 'slda' does not support early stopping"):
    StreamingClassifier("slda", early_stopping=True).fit(x[:100], y[:100])
  with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\)"):
    StreamingClassifier("er", early_stopping=True, validation_fraction=1.0).fit(x[:100], y[:100])


def test_an_estimator_pickled_before_early_stopping_existed_still_learns():
  x, y = _digits()
  clf = StreamingClassifier("slda").fit(x[:200], y[:200])
  state = clf.__getstate__()
  for k in ("early_stopping", "validation_fraction", "n_iter_no_change", "validation_every",
            "tol", "_steps", "_x_val", "_y_val", "passes_saved_", "best_pass_"):
    state.pop(k)
  old = StreamingClassifier.__new__(StreamingClassifier)
  old.__setstate__(state)
  assert old.get_params()["early_stopping"] is False
  old.partial_fit(x[200:400], y[200:400])
  assert old.score(x[1000:], y[1000:]) > 0.85
