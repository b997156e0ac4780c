r"""cljax learners against scikit-learn's own streaming classifiers, each by ``partial_fit``.

The same class-incremental stream (pairs of classes, one ``partial_fit`` call a step, rows
shuffled within a step by ``--seed``) through scikit-learn's ``SGDClassifier``, ``Perceptron``,
``PassiveAggressiveClassifier`` and ``GaussianNB`` and through cljax's
``cljax.sklearn.StreamingClassifier`` over ``slda``, ``randumb`` and ``er``; final accuracy on the
whole test set and examples/s over the whole stream, cold (the first estimator of its setting in
the process: cljax compiles its programs) and warm (a second, fresh estimator of the same setting:
``StreamingClassifier`` shares compiled learners between estimators, as in a grid search or a
cross-validation), all in one run:

    python experiments/bench/sklearn_streaming.py                       # digits, mnist5k
    python experiments/bench/sklearn_streaming.py --datasets=digits,mnist5k,fashion_features \
        --out=/tmp/sk.json

``fashion_features``: EfficientNet-Lite0's pooled 1,280-d features of Fashion-MNIST at 64 px
(``cljax.data.load("features", ...)``, ``--fashion_rows`` train / test rows; extracted once and
cached). Inputs are standardised with the first step's statistics (what a stream can know).
"""

from __future__ import annotations

import json
import time

from absl import app, flags
import numpy as np
from sklearn.linear_model import PassiveAggressiveClassifier, Perceptron, SGDClassifier
from sklearn.naive_bayes import GaussianNB

import cljax.data
from cljax.sklearn import StreamingClassifier

DATASETS = flags.DEFINE_string("datasets", "digits,mnist5k", "comma-separated: digits, mnist5k, "
                            "fashion_features")
SEED = flags.DEFINE_integer("seed", 0, "stream order seed")
ROWS = flags.DEFINE_string("fashion_rows", "6000,2000", "train,test rows of fashion_features")
OUT = flags.DEFINE_string("out", "", "write the table as JSON here")


def estimators() -> dict:
  return {
      "sklearn SGDClassifier": lambda: SGDClassifier(random_state=0),
      "sklearn Perceptron": lambda: Perceptron(random_state=0),
      "sklearn PassiveAggressive": lambda: PassiveAggressiveClassifier(random_state=0),
      "sklearn GaussianNB": GaussianNB,
      "cljax slda": lambda: StreamingClassifier("slda", batch_size=256),
      "cljax randumb": lambda: StreamingClassifier("randumb", hparams={"embed_dim": 4096},
                                                   batch_size=256),
      "cljax er": lambda: StreamingClassifier("er", hparams={"memory_size": 500}),
  }


def load(name: str) -> tuple:
  """(x_train [N, d] float32, y_train [N], x_test, y_test)."""
  if name == "fashion_features":
    tr, te = (int(v) for v in ROWS.value.split(","))
    ds = cljax.data.load("features", source="fashion_mnist",
                         source_kwargs={"max_train": tr, "max_test": te}, resolution=64)
  else:
    ds = cljax.data.load(name)
  def arrays(src):
    x = src.batch(np.arange(len(src)))
    return x.reshape(len(x), -1).astype(np.float32), np.asarray(src.y)
  return (*arrays(ds.train), *arrays(ds.test))


def stream(x, y, seed: int) -> list:
  """Class-incremental steps of two classes, rows shuffled within each step."""
  rng = np.random.default_rng(seed)
  classes = np.unique(y)
  steps = []
  for c in classes.reshape(-1, 2):
    idx = np.flatnonzero(np.isin(y, c))
    steps.append(rng.permutation(idx))
  return steps


def main(argv):
  del argv
  rows = []
  for name in DATASETS.value.split(","):
    xtr, ytr, xte, yte = load(name)
    steps = stream(xtr, ytr, SEED.value)
    mu, sd = xtr[steps[0]].mean(0), xtr[steps[0]].std(0) + 1e-3
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    classes = np.unique(ytr)
    for est_name, make in estimators().items():
      walls, accs = [], []
      for _ in ("cold", "warm"):
        est = make()
        t0 = time.perf_counter()
        for idx in steps:
          est.partial_fit(xtr[idx], ytr[idx], classes=classes)
        walls.append(time.perf_counter() - t0)
        accs.append(float((est.predict(xte) == yte).mean()))
      assert accs[0] == accs[1], (est_name, accs)  # the same stream, the same model
      rows.append(dict(dataset=name, estimator=est_name, accuracy=accs[0],
                       examples_per_s_cold=len(ytr) / walls[0],
                       examples_per_s_warm=len(ytr) / walls[1], wall_s=walls))
      print(f"{name:18s} {est_name:28s} accuracy {accs[0]:.4f}  "
            f"{len(ytr) / walls[0]:10,.0f} ex/s cold  {len(ytr) / walls[1]:10,.0f} ex/s warm",
            flush=True)
  print("\n| data | estimator | final accuracy | examples/s cold | examples/s warm |\n"
        "|---|---|---:|---:|---:|")
  for r in rows:
    print(f"| {r['dataset']} | {r['estimator']} | {r['accuracy']:.3f} | "
          f"{r['examples_per_s_cold']:,.0f} | {r['examples_per_s_warm']:,.0f} |")
  if OUT.value:
    with open(OUT.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
