r"""The prompt and SSL baselines (L2P, CaSSLe, DualNet, CCIC) on the strongest ViT that pre-trains
on 2 CPU cores in minutes, beside the same ViT random and MAE-pretrained (issue 23, item 5).

  python experiments/studies/backbones.py --workdir=/tmp/backbones
  python experiments/studies/backbones.py --workdir=DIR --backbones=sup2 --learners=l2p --seeds=0

The stream and budget are the DietCL config's (``experiments/configs/dietcl.py``: mnist5k,
class-incremental 5 x 2 classes, 5 % labels, ``vit_micro`` patch 7, 80 passes of 48 rows a
step). Backbones, each trained once into DIR/<backbone>/base_init (``cljax.app.experiment``'s
base initialisation; loaded, not retrained, on a second run):

* ``random``: no base initialisation (the learners' own random init);
* ``mae4``: the config's: MAE, 4 epochs on the 60,000 Fashion-MNIST training images;
* ``sup2``: supervised classification of the 60,000 Fashion-MNIST training images (10 classes,
  labels of another domain: the role ImageNet-21k plays for L2P's ViT), 2 epochs, Adam 1e-3,
  batch 256, random crops (padding 2).

For each backbone: the linear-probe accuracy of its frozen features (``features``: mean token after
the final LayerNorm) on mnist5k (scikit-learn ``LogisticRegression`` on the 4,000 training images'
standardised features, accuracy on the 1,000 test images: the strength of the representation the
learners start from), then the learners through ``experiments/studies/seeds.py`` with that base
initialisation. Writes DIR/backbones.json and prints two markdown tables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

BACKBONES = {
    "random": "ViT-micro, random",
    "mae4": "ViT-micro, MAE 4 ep Fashion-MNIST",
    "sup2": "ViT-micro, supervised 2 ep Fashion-MNIST",
}
F = {}


def _define_flags() -> None:
  F["workdir"] = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
  F["backbones"] = flags.DEFINE_list("backbones", list(BACKBONES), f"Of {list(BACKBONES)}.")
  F["learners"] = flags.DEFINE_list("learners", ["l2p", "cassle", "dualnet", "ccic", "er"],
                                    "Learners of the DietCL config.")
  F["seeds"] = flags.DEFINE_list("seeds", ["0"], "Seeds.")
  F["probe_only"] = flags.DEFINE_bool("probe_only", False, "Backbones and probes only.")


def config_for(backbone: str):
  """The DietCL config with ``backbone``'s base initialisation (module docstring)."""
  from experiments.configs import dietcl  # pylint: disable=import-outside-toplevel
  if backbone not in BACKBONES:
    raise ValueError(f"unknown backbone {backbone!r}; valid: {list(BACKBONES)}")
  c = dietcl.get_config("scratch" if backbone == "random" else "")
  if backbone == "mae4":
    c.base_init.dataset = "fashion_mnist"  # no silent fallback to the stream's images
  elif backbone == "sup2":
    c.base_init.kind = "supervised"
    c.base_init.dataset = "fashion_mnist"
    c.base_init.epochs = 2.0
    c.base_init.lr = 1e-3
    c.base_init.batch_size = 256
    c.base_init.optimizer = "adam"
    c.base_init.augment = "crop"
    c.base_init.crop_padding = 2
  c.hparams.ccic.lr = 1e-4  # the reference's (mammoth ccic.yaml); the config sets 1e-3
  c.plots = False
  return c


def linear_probe(features, x, y, xt, yt, batch: int = 500) -> float:
  """Test accuracy of a logistic regression on frozen ``features`` (x [N, ...] -> [N, d])."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  f = lambda a: np.concatenate([np.asarray(features(a[i:i + batch]))  # noqa: E731
                                for i in range(0, len(a), batch)])
  sc = StandardScaler().fit(f(x))
  clf = LogisticRegression(max_iter=2000).fit(sc.transform(f(x)), y)
  return float(clf.score(sc.transform(f(xt)), yt))


def study(workdir: str, backbones, learners, seeds, probe_only=False, log=print) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from cljax import data as data_lib  # pylint: disable=import-outside-toplevel
  from cljax.app import base_init as base_lib  # pylint: disable=import-outside-toplevel
  from cljax.app import experiment, settings  # pylint: disable=import-outside-toplevel
  from cljax.models.pure import Net  # pylint: disable=import-outside-toplevel
  from experiments.studies import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
  out = {"backbones": {}, "cells": []}
  for bk in backbones:
    c = config_for(bk)
    bdir = os.path.join(workdir, bk)
    st = settings.from_config(c, log)
    stream = experiment.make_stream(st.stream)
    train, test = stream.dataset.train, stream.dataset.test
    x, y = train.batch(np.arange(len(train))), np.asarray(train.y)
    xt, yt = test.batch(np.arange(len(test))), np.asarray(test.y)
    t0 = time.perf_counter()
    if bk == "random":
      net = Net.named(c.model, stream.dataset.num_classes, **dict(c.model_kwargs))
      params = net.init(jax.random.key(int(c.seed)), x.shape[1:])
      base_dir, base_acc = "", None
    else:
      # The app counts a supervised base initialisation as asked for only with base classes
      # (base_init.classes > 0, which also reshapes the stream) or a checkpoint; with
      # base_init.dataset alone it trains nothing. ``active`` is forced here for building the
      # checkpoint; the base set is still base_init.dataset's (base_init._base_data reads it
      # first), and the learners' runs load the checkpoint.
      b = st.base_init
      if b.kind == "supervised":
        b = dataclasses.replace(b, classes=1)
      base = base_lib.build(b, stream, bdir, data_lib.load, log)
      net, params = base.net, base.params
      base_dir, base_acc = base.path, base.test_accuracy
    pre_s = time.perf_counter() - t0
    feats = jax.jit(lambda a, net=net, params=params: net.features(params, a))
    probe = linear_probe(feats, x, y, xt, yt)
    out["backbones"][bk] = {"label": BACKBONES[bk], "probe_accuracy": probe,
                            "base_test_accuracy": base_acc, "pretrain_s": pre_s,
                            "checkpoint": base_dir}
    log(f"[backbones] {bk}: linear probe {probe:.4f} on mnist5k ({pre_s:.0f}s to train/load)")
    if not probe_only:
      c.learners = ",".join(learners)
      if base_dir:
        c.base_init.checkpoint = base_dir
      res = seeds_lib.run_seeds(c, [int(s) for s in seeds], os.path.join(bdir, "runs"), log=log)
      for cell in res["cells"]:
        out["cells"].append({**cell, "backbone": bk})
    with open(os.path.join(workdir, "backbones.json"), "w") as f:
      json.dump(out, f, indent=1, default=str)
  return out


def tables(out: dict) -> str:
  lines = ["| backbone | linear probe on mnist5k (4,000 / 1,000) | pre-training s |",
           "|---|---:|---:|"]
  for bk, r in out["backbones"].items():
    lines.append(f"| {r['label']} | {r['probe_accuracy']:.3f} | {r['pretrain_s']:.0f} |")
  if out["cells"]:
    lines += ["", "| run | n | final accuracy | average accuracy | passes / step |",
              "|---|---:|---:|---:|---:|"]
    keys = sorted({(c["backbone"], c["learner"]) for c in out["cells"]},
                  key=lambda k: (k[1], list(BACKBONES).index(k[0])))
    for bk, ln in keys:
      cs = [c for c in out["cells"] if c["backbone"] == bk and c["learner"] == ln]
      cell = lambda m, cs=cs: (f"{np.mean([c[m] for c in cs]):.3f} ± "  # noqa: E731
                               f"{np.std([c[m] for c in cs]):.3f}")
      lines.append(f"| {ln} ({out['backbones'][bk]['label']}) | {len(cs)} | "
                   f"{cell('final_accuracy')} | {cell('average_accuracy')} | "
                   f"{np.mean([c['passes_per_step'] for c in cs]):.1f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = [b for b in F["backbones"].value if b not in BACKBONES]
  if bad:
    print(f"error: --backbones: unknown {bad}; valid: {list(BACKBONES)}", file=sys.stderr)
    sys.exit(2)
  import cljax  # pylint: disable=import-outside-toplevel
  cljax.compile_cache(check=True)  # the one cache policy (cljax/__init__.py)
  os.makedirs(F["workdir"].value, exist_ok=True)
  t0 = time.perf_counter()
  out = study(F["workdir"].value, F["backbones"].value, F["learners"].value,
              F["seeds"].value, F["probe_only"].value, log=lambda m: print(m, flush=True))
  print(tables(out))
  print(f"[backbones] {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
