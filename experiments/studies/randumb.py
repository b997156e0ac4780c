r"""RanDumb online vs offline LDA on the same embedding, 3 seeds, mnist5k and Fashion-MNIST.

  python experiments/studies/randumb.py --workdir=/tmp/randumb_study
  python experiments/studies/randumb.py --workdir=DIR --datasets=mnist5k --seeds=0 \
      --embed_dim=1024
  python experiments/studies/randumb.py --workdir=DIR --fashion_rows=5000,1000  # smaller Fashion

For each data set and seed, ``experiments/configs/randumb.py`` runs (one example per update;
randumb, randumb_pooled, randumb_relu, slda) through ``experiments/studies/seeds.py``. Then, on
the final ``randumb`` state restored from its checkpoint, the same random Fourier embedding of the
whole training set is classified offline three ways:

* ``offline_pooled``: class means + pooled within-class covariance + scikit-learn's OAS
  (assume-centred residuals), no ridge, log priors; float64 NumPy. The estimator
  ``randumb_pooled`` streams (``covariance="pooled"``).
* ``offline_sklearn``: ``LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS())``,
  the reference code's classifier (drimpossible/RanDumb ``src/main.py`` lines 86-89: per-class
  OAS averaged by the priors), the estimator ``randumb`` streams (``covariance="per_class"``,
  the default). Issue 23's criterion: online within 0.3 points of it at D = 2,048 on mnist5k.
* ``reference_code``: the reference end to end, ``RBFSampler(gamma="scale", random_state=seed)``
  fitted on the whole training set (γ from all of it, its own draws) + that LDA.

``update ex/s`` is ``randumb.update`` alone, one example per call, donated state, timed over
``--timed`` examples after a warm-up (the runner's ex/s in seeds.json includes evaluation, the
head refresh and checkpoints). Writes DIR/randumb.json (rewritten after every seed) and prints a
markdown table.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import numpy as np
import threadpoolctl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

F = {}


def _define_flags() -> None:
  F["workdir"] = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
  F["datasets"] = flags.DEFINE_list("datasets", ["mnist5k", "fashion_mnist"], "Data sets.")
  F["seeds"] = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  F["embed_dim"] = flags.DEFINE_integer("embed_dim", 0, "D (0: the config's).")
  F["timed"] = flags.DEFINE_integer("timed", 1000, "Examples timed for update ex/s.")
  F["fashion_rows"] = flags.DEFINE_list(
      "fashion_rows", [], "TRAIN,TEST rows of the stratified Fashion-MNIST subset (empty: the "
      "config's 10000,2000).")


def offline_accuracies(phi_train, y, phi_test, y_test, x_train, x_test, embed_dim: int,
                       seed: int) -> dict:
  """The three offline references of the module docstring (accuracies on the test set)."""
  from sklearn.covariance import OAS  # pylint: disable=import-outside-toplevel
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA  # pylint: disable=import-outside-toplevel
  from sklearn.kernel_approximation import RBFSampler  # pylint: disable=import-outside-toplevel
  f, ft = np.asarray(phi_train, np.float64), np.asarray(phi_test, np.float64)
  classes = np.unique(y)
  mu = np.stack([f[y == k].mean(0) for k in classes])
  idx = np.searchsorted(classes, y)
  cov = OAS(assume_centered=True).fit(f - mu[idx]).covariance_
  w = np.linalg.solve(cov, mu.T)
  b = -0.5 * np.sum(mu * w.T, 1) + np.log(np.bincount(idx) / len(y))
  pooled = float((classes[(ft @ w + b).argmax(1)] == y_test).mean())
  sk = LDA(solver="lsqr", covariance_estimator=OAS()).fit(f, y)
  sklearn_acc = float((sk.predict(ft) == y_test).mean())
  xf, xtf = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
  emb = RBFSampler(gamma="scale", n_components=embed_dim, random_state=seed).fit(xf)
  ref = LDA(solver="lsqr", covariance_estimator=OAS()).fit(emb.transform(xf), y)
  return {"offline_pooled": pooled, "offline_sklearn": sklearn_acc,
          "reference_code": float((ref.predict(emb.transform(xtf)) == y_test).mean())}


def study(workdir: str, datasets, seeds, embed_dim: int = 0, timed: int = 1000,
          log=print, fashion_rows=None) -> dict:
  """``fashion_rows``: (train, test) rows of the Fashion-MNIST subset, None for the config's."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cljax.models.pure import Net  # pylint: disable=import-outside-toplevel
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  from cljax.app import settings  # pylint: disable=import-outside-toplevel
  from cljax.app.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from experiments.configs import randumb as cfg  # pylint: disable=import-outside-toplevel
  from experiments.studies import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
  rows = []
  for ds in datasets:
    config = cfg.get_config(ds)
    if embed_dim:
      for run in ("randumb", "randumb_relu"):
        config.hparams[run].embed_dim = int(embed_dim)
    if fashion_rows and ds == "fashion_mnist":
      config.dataset_kwargs = dict(max_train=int(fashion_rows[0]), max_test=int(fashion_rows[1]))
    config.plots = False
    dsdir = os.path.join(workdir, ds)
    out = seeds_lib.run_seeds(config, seeds, dsdir, log=log)
    for s in out["seeds"]:
      c = config.copy_and_resolve_references()
      c.seed = s
      st = settings.from_config(c)
      stream = experiment.make_stream(st.stream)
      train, test = stream.dataset.train, stream.dataset.test
      x = train.batch(np.arange(len(train)))
      y = np.asarray(train.y, np.int32)
      xt = test.batch(np.arange(len(test)))
      yt = np.asarray(test.y, np.int32)
      learner = experiment.build_learner(st.learner("randumb"), stream.dataset.num_classes,
                                         experiment.learner_inputs(st, stream))
      like = learner.init(jax.random.key(0), {"x": x[:1], "y": y[:1]})
      with Checkpointer(os.path.join(dsdir, f"seed{s}", "checkpoints", "randumb")) as ck:
        _, state, _ = ck.restore_latest(like)
      d = int(state.embed["gaussian"].shape[1])
      net = Net.named("random_fourier", stream.dataset.num_classes, dim=d)
      phi = jax.jit(lambda p, a, net=net: net.features(p, a))
      feats = lambda a, state=state, phi=phi: np.concatenate(  # noqa: E731
          [np.asarray(phi(state.embed, jnp.asarray(a[i:i + 500])))
           for i in range(0, len(a), 500)])
      # update alone: one example per call, the state donated (as in the config)
      st = learner.init(jax.random.key(1), {"x": x[:1], "y": y[:1]})
      one = lambda i: {"x": x[i:i + 1], "y": y[i:i + 1]}  # noqa: E731
      st, _ = learner.update(st, one(0), jax.random.key(0))
      jax.block_until_ready(st)
      n = min(timed, len(x) - 1)
      t0 = time.perf_counter()
      for i in range(1, n + 1):
        st, _ = learner.update(st, one(i), jax.random.key(0))
      jax.block_until_ready(st)
      ups = n / (time.perf_counter() - t0)
      online = float((np.asarray(learner.predict(state, xt)).argmax(1) == yt).mean())
      # One BLAS thread for scikit-learn: its idle threads spin after a fit and slowed the next
      # seed's timed updates 10x on 2 cores.
      with threadpoolctl.threadpool_limits(1):
        ref = offline_accuracies(feats(x), y, feats(xt), yt, x, xt, d, s)
      runs = {c["learner"]: c for c in out["cells"] if c["seed"] == s}
      rows.append({"dataset": ds, "seed": s, "embed_dim": d, "online": online, **ref,
                   "online_final_accuracy": runs["randumb"]["final_accuracy"],
                   "pooled_final_accuracy": runs["randumb_pooled"]["final_accuracy"],
                   "relu_final_accuracy": runs["randumb_relu"]["final_accuracy"],
                   "slda_final_accuracy": runs["slda"]["final_accuracy"],
                   "update_ex_per_s": ups,
                   "runner_ex_per_s": runs["randumb"]["examples_per_s"]})
      log(f"[randumb] {ds} seed {s}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in rows[-1].items() if isinstance(v, float)))
      # after every row: a long study stopped part way keeps what it measured
      with open(os.path.join(workdir, "randumb.json"), "w") as f:
        json.dump({"rows": rows}, f, indent=1)
  return {"rows": rows}


def table(result: dict) -> str:
  """Markdown: per data set, mean ± std over seeds of every figure."""
  cols = [("online", "randumb online (per-class OAS)"),
          ("pooled_final_accuracy", "randumb pooled online"),
          ("offline_pooled", "offline pooled OAS"),
          ("offline_sklearn", "offline sklearn LDA"), ("reference_code", "reference code"),
          ("relu_final_accuracy", "RanPAC relu (final)"), ("slda_final_accuracy",
                                                           "SLDA raw (final)"),
          ("update_ex_per_s", "update ex/s"), ("runner_ex_per_s", "runner ex/s")]
  lines = ["| data set | D | " + " | ".join(c[1] for c in cols) + " |",
           "|---|---:|" + "---:|" * len(cols)]
  for ds in sorted({r["dataset"] for r in result["rows"]}):
    rs = [r for r in result["rows"] if r["dataset"] == ds]
    cells = []
    for key, _ in cols:
      v = np.asarray([r[key] for r in rs], float)
      fmt = "{:,.0f}" if key.endswith("per_s") else "{:.4f}"
      cells.append(f"{fmt.format(v.mean())} ± {fmt.format(v.std())}")
    lines.append(f"| {ds} | {rs[0]['embed_dim']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  rows = F["fashion_rows"].value
  if rows and (len(rows) != 2 or not all(r.isdigit() and int(r) > 0 for r in rows)):
    print(f"error: --fashion_rows={','.join(rows)}: give two positive integers TRAIN,TEST "
          "(e.g. --fashion_rows=5000,1000)", file=sys.stderr)
    sys.exit(2)
  import cljax  # pylint: disable=import-outside-toplevel
  cljax.compile_cache(check=True)  # the one cache policy (cljax/__init__.py)
  os.makedirs(F["workdir"].value, exist_ok=True)
  t0 = time.perf_counter()
  result = study(F["workdir"].value, F["datasets"].value, [int(s) for s in F["seeds"].value],
                 F["embed_dim"].value, F["timed"].value, log=lambda m: print(m, flush=True),
                 fashion_rows=F["fashion_rows"].value or None)
  print(table(result))
  print(f"[randumb] {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
