r"""Deep SLDA's findings (Hayes and Kanan, CVPR-W 2020) on real digits, several seeds.

  python experiments/studies/slda.py --workdir=/tmp/slda_study            # 3 seeds, mnist5k
  python experiments/studies/slda.py --workdir=DIR --dataset=fashion_mnist --max_train=10000

The paper's claims checked here:

* order robustness: streamed iid or class-incrementally, SLDA ends at nearly the same accuracy
  (its class means do not depend on the order, and its covariance barely does);
* after a base initialisation, a *fixed* covariance is close to a streamed (plastic) one.

Protocol, per seed (the seed draws the classes, the order and the network's initialisation): a CNN
is trained on ``base_classes`` random classes (``cljax.train.pretrain.train_classifier``, as
``experiments/configs/slda.py``); Deep SLDA is built on its frozen features with that base set
as ``base`` (``init`` fits class means and an OAS covariance, the reference's ``fit_base``,
tyler-hayes/Deep_SLDA ``experiment.py`` lines 103-129), then the other classes' training
examples are streamed in ``steps`` time steps, either class-incrementally (classes shuffled, a
step per group of classes) or iid (the same examples shuffled, equal steps); after each step the
test examples of every class seen so far are scored. Variants: covariance plastic / fixed with
the base initialisation, and, for contrast, the two that skip it (the base set streamed as the
first step instead: ``plastic, streamed base``; ``fixed, no base init``, whose Σ stays 0, a
nearest-class-mean classifier).

Writes DIR/results.json (``{"cells": [{seed, variant, ordering, final_accuracy, curve}],
"summary": [mean ± std per variant and ordering]}``), DIR/slda.png (final accuracy, ±1 std) and
prints the table. Full size (the paper): ImageNet-1k with an ImageNet ResNet-18 base-initialised
on 100 classes, streamed in increments of 100 classes, top-5; CORe50 with the four orderings.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.studies import seeds as seeds_lib  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = {  # name -> (covariance, base initialisation)
    "plastic": ("plastic", True),
    "fixed": ("fixed", True),
    "plastic, streamed base": ("plastic", False),
    "fixed, no base init": ("fixed", False),
}
ORDERINGS = ("class_incremental", "iid")


def _steps(rng, y, classes, steps, ordering):
  """The stream's time steps: lists of training indices of ``classes``."""
  if ordering == "class_incremental":
    order = rng.permutation(classes)
    return [rng.permutation(np.flatnonzero(np.isin(y, g))) for g in np.array_split(order, steps)]
  idx = rng.permutation(np.flatnonzero(np.isin(y, classes)))
  return np.array_split(idx, steps)


def run_seed(ds, seed: int, base_classes: int, steps: int, model: str, epochs: float,
             batch: int = 64, log=print) -> list:
  """All variants and orderings for one seed; returns their cells."""
  import jax  # pylint: disable=import-outside-toplevel
  from cljax import learners  # pylint: disable=import-outside-toplevel
  from cljax.train import pretrain  # pylint: disable=import-outside-toplevel
  x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
  xt, yt = ds.test.batch(np.arange(len(ds.test))), np.asarray(ds.test.y, np.int32)
  rng = np.random.default_rng(seed)
  classes = rng.permutation(ds.num_classes)
  base_cls, new_cls = np.sort(classes[:base_classes]), classes[base_classes:]
  in_base = np.isin(y, base_cls)
  t0 = time.perf_counter()
  m = pretrain.train_classifier(model, x[in_base], y[in_base], ds.num_classes,
                                 key=jax.random.key(seed), epochs=epochs)
  base = pretrain.BaseInit(m, x[in_base], y[in_base], base_cls.tolist(), "supervised", "",
                            None)
  log(f"[slda] seed {seed}: base classes {base_cls.tolist()}, {model} trained in "
      f"{time.perf_counter() - t0:.0f}s")
  cells = []
  for ordering in ORDERINGS:
    order_steps = _steps(np.random.default_rng(seed + 1000), y, new_cls, steps, ordering)
    for name, (cov, with_base) in VARIANTS.items():
      learner = learners.get("slda", num_classes=ds.num_classes, covariance=cov,
                             backbone=base.backbone(), base=base if with_base else None,
                             skip_base_step=False)
      state = learner.init(jax.random.key(seed), {"x": x[:batch], "y": y[:batch]})
      stream = order_steps if with_base else [np.flatnonzero(in_base)] + order_steps
      seen, curve = list(base_cls) if with_base else [], []
      for step in stream:
        for s in range(0, len(step), batch):
          rows = step[s:s + batch]
          pad = batch - len(rows)
          b = {"x": np.concatenate([x[rows], np.zeros((pad, *x.shape[1:]), x.dtype)]),
               "y": np.concatenate([y[rows], np.zeros(pad, np.int32)]),
               "valid": np.arange(batch) < len(rows)}
          state, _ = learner.update(state, b, None)
        state, _ = learner.end_of_step(state, None)
        seen = sorted(set(seen) | set(np.unique(y[step]).tolist()))
        sel = np.isin(yt, seen)
        pred = np.asarray(learner.predict(state, xt[sel])).argmax(1)
        curve.append(float((pred == yt[sel]).mean()))
      cells.append({"seed": seed, "variant": name, "ordering": ordering,
                    "final_accuracy": curve[-1], "curve": curve})
      log(f"[slda] seed {seed} {ordering:17s} {name:24s} final {curve[-1]:.4f}")
  return cells


def run_study(cfg: dict, log=print) -> dict:
  from cljax import data  # pylint: disable=import-outside-toplevel
  kw = {"max_train": cfg["max_train"]} if cfg["dataset"] == "fashion_mnist" and \
      cfg["max_train"] else {}
  ds = data.load(cfg["dataset"], **kw)
  t0, cells = time.perf_counter(), []
  for s in cfg["seeds"]:
    cells += run_seed(ds, int(s), cfg["base_classes"], cfg["steps"], cfg["model"],
                      cfg["base_epochs"], log=log)
  summary = seeds_lib.summarize(cells, ("variant", "ordering"), ("final_accuracy",))
  for r in summary:
    r["label"] = f"{r['variant']} / {'cls-inc' if r['ordering'] == 'class_incremental' else 'iid'}"
  return {"config": cfg, "cells": cells, "summary": summary, "wall_s": time.perf_counter() - t0}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  cli.setup()
  f = flags.FLAGS
  cfg = dict(dataset=f.dataset, max_train=f.max_train, model=f.model, base_classes=f.base_classes,
             base_epochs=f.base_epochs, steps=f.steps, seeds=[int(s) for s in f.seeds])
  os.makedirs(f.workdir, exist_ok=True)
  out = run_study(cfg, log=lambda m: print(m, flush=True))
  with open(os.path.join(f.workdir, "results.json"), "w") as fh:
    json.dump(out, fh, indent=1)
  png = seeds_lib.bar_plot(out["summary"], os.path.join(f.workdir, "slda.png"),
                           f"Deep SLDA, {cfg['dataset']}, {len(cfg['seeds'])} seeds",
                           label_key="label", metrics=("final_accuracy",))
  print(seeds_lib.table(out["summary"], ("variant", "ordering"), ("final_accuracy",)))
  print(f"[slda] wrote {os.path.join(f.workdir, 'results.json')}, {png} ({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Where results.json and slda.png go.", required=True)
  flags.DEFINE_enum("dataset", "mnist5k", ["mnist5k", "fashion_mnist", "digits"], "Data set.")
  flags.DEFINE_integer("max_train", 0, "fashion_mnist: training examples kept (0: all).")
  flags.DEFINE_string("model", "cnn", "Backbone trained on the base classes.")
  flags.DEFINE_integer("base_classes", 4, "Classes of the base initialisation.")
  flags.DEFINE_float("base_epochs", 8.0, "Epochs of the backbone's training.")
  flags.DEFINE_integer("steps", 3, "Time steps of the streamed classes.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  app.run(main)
