"""The README's Python examples, run exactly as written (with the data they leave to the reader)."""

import pathlib
import re

import numpy as np
import pytest
import sklearn.datasets
import sklearn.neighbors

import cljax.learners

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _block(marker: str) -> str:
  found = [b for b in BLOCKS if marker in b]
  assert len(found) == 1, f"README has {len(found)} python blocks with {marker!r}"
  return found[0]


def _digits():
  x, y = sklearn.datasets.load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y.astype(np.int32)


def test_own_loop_example_runs_as_written():
  import jax  # pylint: disable=import-outside-toplevel
  x, y = _digits()
  steps = [(x[np.isin(y, c)][:200], y[np.isin(y, c)][:200]) for c in ([0, 1], [2, 3])]
  env = {
      "x0": x[:32], "y0": y[:32], "time_steps": steps, "key": jax.random.key(1),
      "batches": lambda xs, ys: [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, 192, 32)],
      "x_test": x[:64],
  }
  exec(_block('cljax.learners.get("er"'), env)  # pylint: disable=exec-used
  assert env["logits"].shape == (64, 10)
  assert float(env["info"].passes) > 0  # end_of_step spent its default budget


def test_early_stopping_example_runs_as_written(capsys):
  import jax  # pylint: disable=import-outside-toplevel
  x, y = _digits()
  learner = cljax.learners.get("gdumb", num_classes=10)
  state = learner.init(jax.random.key(0), {"x": x[:32], "y": y[:32]})
  state, _ = learner.update(state, {"x": x[:400], "y": y[:400]}, jax.random.key(1))
  env = {"learner": learner, "state": state, "key": jax.random.key(2), "x_val": x[1400:],
         "y_val": y[1400:]}
  exec(_block("EarlyStopping.on(x_val, y_val"), env)  # pylint: disable=exec-used
  spent, saved, best = (float(v) for v in capsys.readouterr().out.split())
  assert spent + saved == 200 and 0 <= best <= spent
  # The model kept is the one whose held-out loss was best.
  kept = env["stop"].score(lambda v: learner.predict(env["state"], v))
  assert float(env["info"].extra["best_score"]) == pytest.approx(kept, rel=1e-5)


def test_writing_a_learner_example_registers_and_equals_nearest_centroid():
  env = {}
  if "nearest_mean" not in cljax.learners.names():
    exec(_block('@register("nearest_mean")'), env)  # pylint: disable=exec-used
  import jax  # pylint: disable=import-outside-toplevel
  learner = cljax.learners.get("nearest_mean", num_classes=10)
  assert learner.hparams == {"num_classes": 10}
  x, y = _digits()
  state = learner.init(jax.random.key(0), {"x": x[:8], "y": y[:8]})
  for s in range(0, 1400, 100):
    state, _ = learner.update(state, {"x": x[s:s + 100], "y": y[s:s + 100]}, jax.random.key(s))
  pred = np.asarray(learner.predict(state, x[1400:])).argmax(1)
  ref = sklearn.neighbors.NearestCentroid().fit(x[:1400], y[:1400]).predict(x[1400:])
  assert (pred == ref).mean() == 1.0


def test_sklearn_example_runs_as_written(capsys):
  exec(_block("from cljax.sklearn import StreamingClassifier"), {})  # pylint: disable=exec-used
  cv, score = (float(v) for v in capsys.readouterr().out.split())
  assert cv > 0.85 and score > 0.9, (cv, score)
