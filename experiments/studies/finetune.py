r"""Käding et al. (ACCV-W 2016) incremental fine-tuning: the three studies on real data.

  python experiments/studies/finetune.py --workdir=/tmp/ft_study     # the paper's 9 draws
  python experiments/studies/finetune.py --workdir=DIR --repeats=2 --studies=lambda \
      --lambdas=0,1 --dataset=fashion_mnist

Scenario 2 of the paper (new classes arrive): a network is base-initialised on ``base_classes``
random classes (``cljax.train.pretrain.train_classifier``; the head rows of the other classes are
then reset to fresh random rows, since in the paper those output neurons do not exist yet), then
the remaining classes arrive one at a time, each in update sets of ``update_size`` examples.
The learner (``finetune_kading``: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch 64, all
earlier data kept, growing head) starts from the base network (``init_params``) and takes the
base set as its first time step without training on it (``pretrained_first_step``): the base set
becomes earlier data. After every update set (one time step) it is evaluated on the test
examples of all classes seen so far. The study drives it through the learner contract only
(``cljax.learners.get``, ``init`` / ``update`` / ``end_of_step`` / ``predict``).

Studies, each over ``repeats`` random class draws (9 by default, as the paper evaluates over 9
random class draws):

* ``iterations``: SGD iterations per update ∈ {1/10, 1/4, 1/2, 1, 2} epochs over all data seen
  so far, and a small constant (``const_iterations``); λ = ``default_lambda``.
* ``lambda``: old/new mixing λ ∈ {0, 0.25, 0.5, 0.75, 1}; ``default_epochs`` per update.
* ``noise``: label noise ∈ {0, 0.05, 0.1, 0.2} (a fraction of every new update set replaced by
  examples of other classes, labels kept; ``make_stream(label_noise=...)``); defaults otherwise.

Writes DIR/results.json (``{study: {setting: {final_accuracy, std, curve, curve_std, ...}}}``),
DIR/<study>.png (mean accuracy over update steps per setting, ±1 std shaded) and prints a table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import cljax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

STUDIES = ("iterations", "lambda", "noise")

DEFAULTS = dict(
    dataset="mnist5k", max_train=0, model="mlp", base_classes=4, base_epochs=5.0,
    update_size=100, per_class=0, repeats=9, seed=0, studies=list(STUDIES),
    epochs=[0.1, 0.25, 0.5, 1.0, 2.0], const_iterations=10,
    lambdas=[0.0, 0.25, 0.5, 0.75, 1.0], noises=[0.0, 0.05, 0.1, 0.2],
    default_lambda=0.75, default_epochs=1.0, lr=1e-3)

_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json and the plots go.",
                               required=True)
_DATASET = flags.DEFINE_enum("dataset", DEFAULTS["dataset"], ["mnist5k", "fashion_mnist"],
                             "Data set (fashion_mnist needs Debian's dataset-fashion-mnist).")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 0, "fashion_mnist: keep this many training "
                                  "examples (0: all 60k).")
_MODEL = flags.DEFINE_string("model", DEFAULTS["model"], "cljax model name (mlp or cnn).")
_BASE = flags.DEFINE_integer("base_classes", DEFAULTS["base_classes"],
                             "Classes of the base-initialisation set.")
_BASE_EPOCHS = flags.DEFINE_float("base_epochs", DEFAULTS["base_epochs"], "Base training epochs.")
_UPDATE = flags.DEFINE_integer("update_size", DEFAULTS["update_size"],
                               "Examples per update set.")
_PER_CLASS = flags.DEFINE_integer("per_class", 0, "Training examples used per new class "
                                  "(0: all of them).")
_REPEATS = flags.DEFINE_integer("repeats", DEFAULTS["repeats"], "Random class draws per setting "
                                "(the paper's 9).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first class draw (draw r uses seed + r).")
_STUDIES = flags.DEFINE_list("studies", list(STUDIES), f"Subset of {list(STUDIES)}.")
_EPOCHS = flags.DEFINE_list("epochs", [str(e) for e in DEFAULTS["epochs"]],
                            "Iterations study: epochs over all data seen per update.")
_CONST = flags.DEFINE_integer("const_iterations", DEFAULTS["const_iterations"],
                              "Iterations study: the constant setting (0: leave out).")
_LAMBDAS = flags.DEFINE_list("lambdas", [str(v) for v in DEFAULTS["lambdas"]],
                             "λ study: old-data fractions.")
_NOISES = flags.DEFINE_list("noises", [str(v) for v in DEFAULTS["noises"]],
                            "Noise study: label-noise fractions.")
_DEF_LAMBDA = flags.DEFINE_float("default_lambda", DEFAULTS["default_lambda"],
                                 "λ of the iterations and noise studies.")
_LR = flags.DEFINE_float("lr", DEFAULTS["lr"], "SGD learning rate of the updates (paper: 1e-3).")
_DEF_EPOCHS = flags.DEFINE_float("default_epochs", DEFAULTS["default_epochs"],
                                 "Epochs per update of the lambda and noise studies.")


def _fmt(v: float) -> str:
  """Setting key: '0.75', '1', '0.1' (shortest exact decimal)."""
  return f"{float(v):g}"


def settings(cfg: dict) -> dict:
  """{study: [(key, iterations, epochs_per_step, λ, noise)]} of the configured grid."""
  out = {}
  if "iterations" in cfg["studies"]:
    rows = [(_fmt(e), "epochs", float(e), cfg["default_lambda"], 0.0) for e in cfg["epochs"]]
    if cfg["const_iterations"]:
      c = int(cfg["const_iterations"])
      rows.append((f"const{c}", c, cfg["default_epochs"], cfg["default_lambda"], 0.0))
    out["iterations"] = rows
  if "lambda" in cfg["studies"]:
    out["lambda"] = [(_fmt(l), "epochs", cfg["default_epochs"], float(l), 0.0)
                     for l in cfg["lambdas"]]
  if "noise" in cfg["studies"]:
    out["noise"] = [(_fmt(n), "epochs", cfg["default_epochs"], cfg["default_lambda"], float(n))
                    for n in cfg["noises"]]
  return out


def _update_sets(stream, per_class: int, size: int) -> tuple[list, list]:
  """The new classes' update sets and the classes seen after each evaluation point.

  Returns ``sets`` [(x indices [n], labels [n])] (steps 1.. of the stream, each cut into sets of
  ``size``) and ``classes_after`` [1 + len(sets)] arrays: point 0 is the base network.
  """
  sets, seen = [], list(stream.tasks[0])
  classes_after = [np.asarray(seen)]
  for t in range(1, stream.num_steps):
    idx, lab = stream.steps[t], stream.labels[t]
    if per_class:
      idx, lab = idx[:per_class], lab[:per_class]
    seen = seen + list(stream.tasks[t])
    for s in range(0, len(idx), size):
      sets.append((idx[s:s + size], lab[s:s + size]))
      classes_after.append(np.asarray(seen))
  return sets, classes_after


def _fresh_head(params: dict, fresh: dict, keep: np.ndarray) -> dict:
  """params with the head rows (kernel columns, biases) of classes not in keep from fresh.

  The base network was trained with a softmax over all K outputs, which pushes the rows of the
  not-yet-seen classes down; the paper adds those output neurons with a random initialisation.
  """
  k = params["head"]["kernel"].shape[-1]
  m = np.isin(np.arange(k), keep)
  head = {"kernel": jnp.where(m[None, :], params["head"]["kernel"], fresh["head"]["kernel"]),
          "bias": jnp.where(m, params["head"]["bias"], fresh["head"]["bias"])}
  return {**params, "head": {**params["head"], **head}}


def _padded(x: np.ndarray, y: np.ndarray, size: int) -> dict:
  """A batch of ``size`` rows: x [n, ...], y [n] (n <= size) padded with invalid rows."""
  n = len(y)
  pad = size - n
  return {"x": x[np.r_[np.arange(n), np.zeros(pad, int)]],
          "y": np.r_[y, np.zeros(pad, np.int32)].astype(np.int32),
          "valid": np.r_[np.ones(n, bool), np.zeros(pad, bool)],
          "labeled": np.ones(size, bool)}


def run_one(learner, x_base, y_base, train_x, update_sets, test_x, test_y, classes_after, key,
            update_size: int) -> np.ndarray:
  """One fine-tuning run; accuracy [1 + len(update_sets)] over the seen classes' test examples.

  ``learner``: ``finetune_kading`` built with ``init_params`` = the base network and
  ``pretrained_first_step=True``, driven through the learner contract only. Its first time step
  is the base set (fed through ``update`` in batches of ``update_size``): it trains nothing and
  files the base set as earlier data (its classes seen, its examples counted as data seen).
  Point 0 is then the base network; point u the network after update set u (one time step each).
  ``classes_after[u]`` are the classes seen after point u.
  """
  k0 = jax.random.fold_in(key, 0)
  state = learner.init(k0, {"x": x_base[:update_size], "y": y_base[:update_size]})
  for i, s in enumerate(range(0, len(y_base), update_size)):
    state, _ = learner.update(state, _padded(x_base[s:s + update_size],
                                             y_base[s:s + update_size], update_size),
                              jax.random.fold_in(k0, i + 1))
  state, info = learner.end_of_step(state, k0)
  assert float(info.passes) == 0.0, "the base set is filed, not trained on"

  def acc(st, classes):
    pred = np.asarray(learner.predict(st, test_x)).argmax(1)
    m = np.isin(test_y, classes)
    return float((pred[m] == test_y[m]).mean())

  curve = [acc(state, classes_after[0])]
  for u, (idx, lab) in enumerate(update_sets):
    k = jax.random.fold_in(key, u + 1)
    state, _ = learner.update(state, _padded(train_x[idx], lab, update_size), k)
    state, _ = learner.end_of_step(state, jax.random.fold_in(k, 1))
    curve.append(acc(state, classes_after[u + 1]))
  return np.asarray(curve)


def base_capacity(train_y: np.ndarray, base_classes: int, update_size: int) -> int:
  """Rows of the learner's step store: room for any base set (the ``base_classes`` largest
  classes of the training set) and any update set, the same for every class draw (one shape)."""
  counts = np.sort(np.bincount(np.asarray(train_y)))[::-1]
  return int(max(counts[:base_classes].sum(), update_size))


def run_study(cfg: dict, log: Callable[[str], None] = print) -> dict:
  """Runs the configured studies (see module docstring); returns the results dict."""
  from cljax import data  # pylint: disable=import-outside-toplevel
  from cljax import learners as L  # pylint: disable=import-outside-toplevel
  from cljax.models.pure import Net  # pylint: disable=import-outside-toplevel
  from cljax.train import pretrain  # pylint: disable=import-outside-toplevel

  kw = {"max_train": cfg["max_train"]} if cfg["dataset"] == "fashion_mnist" and \
      cfg["max_train"] else {}
  ds = data.load(cfg["dataset"], **kw)
  k_classes = ds.num_classes
  train_x = ds.train.batch(np.arange(len(ds.train)))
  test_x, test_y = ds.test.batch(np.arange(len(ds.test))), ds.test.y
  grid = settings(cfg)
  runs_total = sum(len(v) for v in grid.values()) * cfg["repeats"]
  log(f"[study] {cfg['dataset']}: {len(ds.train)} train / {len(ds.test)} test, model "
      f"{cfg['model']}, base {cfg['base_classes']} classes, update sets of "
      f"{cfg['update_size']}, {cfg['repeats']} class draws, {runs_total} runs")
  curves = {s: {row[0]: [] for row in rows} for s, rows in grid.items()}
  step_rows = base_capacity(ds.train.y, cfg["base_classes"], cfg["update_size"])
  t0, done = time.perf_counter(), 0
  for r in range(cfg["repeats"]):
    seed = cfg["seed"] + r
    streams = {}

    def stream(noise):
      if noise not in streams:
        streams[noise] = data.make_stream(
            ds, "class_incremental", classes_per_step=1, first_step_classes=cfg["base_classes"],
            seed=seed, label_noise=noise)
      return streams[noise]

    clean = stream(0.0)
    base_idx = clean.steps[0]
    x_base, y_base = train_x[base_idx], clean.labels[0]
    key = jax.random.key(seed)
    pm = pretrain.train_classifier(cfg["model"], x_base, y_base, k_classes,
                                    key=jax.random.fold_in(key, 1), epochs=cfg["base_epochs"])
    fresh = Net.named(cfg["model"], k_classes).init(jax.random.fold_in(key, 2), x_base.shape[1:])
    base_params = _fresh_head(pm.params, fresh, clean.tasks[0])
    base_acc = pretrain.accuracy(pm, test_x[np.isin(test_y, clean.tasks[0])],
                                  test_y[np.isin(test_y, clean.tasks[0])])
    learners = {}  # (iterations, epochs, λ) -> learner of this draw's base network
    log(f"[study] draw {r + 1}/{cfg['repeats']} (seed {seed}): base classes "
        f"{clean.tasks[0].tolist()}, base test accuracy {base_acc:.3f}, new classes in order "
        f"{[int(t[0]) for t in clean.tasks[1:]]}")
    for study, rows in grid.items():
      for key_s, iters, epochs, lam, noise in rows:
        st = stream(noise)
        sets, classes_after = _update_sets(st, cfg["per_class"], cfg["update_size"])
        lk = (iters, epochs, lam)
        if lk not in learners:
          # A learner per draw and setting (its base network is init_params, λ a setting), so
          # compiles dominate: chunk=1 (one SGD step per jitted call) compiles a program 8x
          # smaller than the default and gives the same numbers.
          learners[lk] = L.get(
              "finetune_kading", num_classes=k_classes, model=cfg["model"],
              max_step_size=step_rows, stream_size=len(ds.train), iterations=iters,
              epochs_per_step=epochs, lr=cfg["lr"], old_fraction=lam, init_params=base_params,
              pretrained_first_step=True, chunk=1)
        ts = time.perf_counter()
        curve = run_one(learners[lk], x_base, y_base, train_x, sets, test_x, test_y,
                        classes_after, jax.random.fold_in(key, 3), cfg["update_size"])
        curves[study][key_s].append(curve)
        done += 1
        el = time.perf_counter() - t0
        log(f"[study] {done}/{runs_total} {study}={key_s} draw {r + 1}: final "
            f"{curve[-1]:.3f} ({len(sets)} updates, {time.perf_counter() - ts:.1f}s) | "
            f"ETA {el / done * (runs_total - done):.0f}s")
  results = {"config": cfg}
  for study, per in curves.items():
    results[study] = {}
    for key_s, cs in per.items():
      c = np.stack(cs)  # [repeats, points]
      results[study][key_s] = {
          "final_accuracy": float(c[:, -1].mean()), "std": float(c[:, -1].std()),
          "curve": c.mean(0).tolist(), "curve_std": c.std(0).tolist(),
          "mean_accuracy": float(c[:, 1:].mean()), "finals": c[:, -1].tolist()}
  results["wall_s"] = time.perf_counter() - t0
  return results


def table(results: dict) -> str:
  lines = [f"{'study':<11}{'setting':>9}{'final acc':>11}{'± std':>8}{'mean acc':>10}"]
  for study in STUDIES:
    for key_s, r in results.get(study, {}).items():
      lines.append(f"{study:<11}{key_s:>9}{r['final_accuracy']:>11.4f}{r['std']:>8.4f}"
                   f"{r['mean_accuracy']:>10.4f}")
  return "\n".join(lines)


def plot(results: dict, workdir: str) -> list:
  """One PNG per study: mean accuracy over update steps per setting, ±1 std shaded."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  titles = {"iterations": "SGD iterations per update (epochs over data seen)",
            "lambda": "old-data fraction λ", "noise": "label noise"}
  paths = []
  for study in STUDIES:
    if study not in results:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for key_s, r in results[study].items():
      m, s = np.asarray(r["curve"]), np.asarray(r["curve_std"])
      xs = np.arange(len(m))
      ax.plot(xs, m, label=key_s)
      ax.fill_between(xs, m - s, m + s, alpha=0.15)
    ax.set_xlabel("update step (0 = base network)")
    ax.set_ylabel("accuracy over seen classes")
    ax.set_title(titles[study])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, f"{study}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def main_cfg(cfg: dict, workdir: str, log=print) -> dict:
  os.makedirs(workdir, exist_ok=True)
  results = run_study(cfg, log)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  paths = plot(results, workdir)
  log(table(results))
  log(f"[study] wrote {os.path.join(workdir, 'results.json')}, {', '.join(paths)} "
      f"({results['wall_s']:.0f}s)")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = sorted(set(_STUDIES.value) - set(STUDIES))
  if bad:
    raise app.UsageError(f"unknown studies {bad}; valid: {list(STUDIES)}")
  cfg = dict(
      dataset=_DATASET.value, max_train=_MAX_TRAIN.value, model=_MODEL.value,
      base_classes=_BASE.value, base_epochs=_BASE_EPOCHS.value, update_size=_UPDATE.value,
      per_class=_PER_CLASS.value, repeats=_REPEATS.value, seed=_SEED.value,
      studies=list(_STUDIES.value), epochs=[float(v) for v in _EPOCHS.value],
      const_iterations=_CONST.value, lambdas=[float(v) for v in _LAMBDAS.value],
      noises=[float(v) for v in _NOISES.value], default_lambda=_DEF_LAMBDA.value,
      default_epochs=_DEF_EPOCHS.value, lr=_LR.value)
  # Compiles are the slow part on a loaded CPU; every learner of the grid compiles to the same
  # programs (λ and the base network live in the state, not in the programs), so the persistent
  # cache makes all but the first few free.
  cljax.compile_cache(check=True)
  main_cfg(cfg, _WORKDIR.value, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
  app.run(main)
