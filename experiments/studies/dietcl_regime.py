r"""Where DietCL's premise holds on 2 cores: DietCL minus ER (the reference's ER, ``er_diet``) in
final accuracy along the axes the paper's argument rests on, one axis at a time around the
default point of ``experiments/configs/dietcl.py`` (Fashion-MNIST, 5 steps of 2 classes, 2,000
images a step, 1 % labels, 32 passes of 64, MAE 10 epochs on the 50,000 training images the
stream does not use, ``vit_micro`` patch 7).

  nice -n 10 python experiments/studies/dietcl_regime.py --workdir=/tmp/dietcl_regime
  python experiments/studies/dietcl_regime.py --workdir=DIR --cells=default,rate_0.1 \
      --bases=default=OTHER/base_init      # some cells; reuse a config run's MAE checkpoint

Axes (``CELLS``; each cell is one ``cljax.app.experiment.run_experiment`` of the config with
``learners = dietcl,er`` and a few fields changed):

* label rate: 1 % (default), 3 %, 10 % of the step's images;
* budget: 8, 32 (default), 128 passes of 64 a step: 1/4, 1 and 4 passes over a step's images;
* base initialisation: none (random ViT), MAE 2 and 10 (default) epochs on the in-domain
  disjoint images, MAE 10 epochs on the 4,000 mnist5k digits (out of domain);
* model: 16 patches (patch 7) against 49 patches (patch 4), both after 2 MAE epochs in-domain
  (a 49-patch MAE of 10 epochs did not fit the compute of this study);
* unlabelled images a step: 500, 2,000, 12,000 (the whole 60,000-image Fashion stream), with
  10 labels a class kept (label rate 20 / images a step) and the budget fixed at 32 passes. A
  stream of all 60,000 images leaves no disjoint in-domain images, so this axis runs from the
  out-of-domain base (its 2,000-image point is the base axis' ``ood`` cell). The 12,000-image
  cell is slow on CPU (each incoming batch is inserted into 12,000-row step stores: 23
  examples/s under load 25) and did not finish in the session that added this study;
* classes a step: 2 (5 steps; the ``ood`` cell) against 5 (2 steps, 5,000 images a step, 80
  passes: one pass, 10 labels a class), out-of-domain base;
* stream: class-incremental against data-incremental (``iid``, 5 steps of 2,000 images over all
  10 classes), out-of-domain base;
* seeds: the ``ood`` point over seeds 0, 1, 2 (same base checkpoint; the stream, its labels and
  the learners' keys change), the spread that tells which differences are noise.

Base checkpoints are trained once per family (``BASES``) in the first cell that needs one and
loaded by the others. An in-domain base excludes the images of the stream it is trained for;
the cells that share it use the same seed and at most as many images a step, and a stream's
steps are prefixes of the same permutations (``cljax.data.streams``), so their images are a
subset of the excluded ones: no cell's stream was seen by its base.

Writes DIR/regime.json (``{"cells": [{cell, axis, value, seed, learner, final_accuracy,
average_accuracy, diagonal, wall_s}], "diff": [...]}``), DIR/regime.png (DietCL - ER per axis)
and prints the table. Scaled down from the paper by construction: see the config's docstring.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

LEARNERS = "dietcl,er"


def _set(**fields) -> Callable:
  """A config edit setting dotted ``fields`` (``stream__label_rate`` for ``stream.label_rate``)."""
  def edit(c):
    for k, v in fields.items():
      node = c
      *path, last = k.split("__")
      for p in path:
        node = node[p]
      node[last] = v
  return edit


# Base families: (config edit, cells it is valid for). "default" is the config's own.
BASES = {
    "default": _set(),
    "mae2": _set(base_init__epochs=2.0),
    "mae2_p4": _set(base_init__epochs=2.0, model_kwargs={"patch": 4}),
    "ood": _set(base_init__dataset="mnist5k"),
    "none": _set(base_init__kind="supervised", base_init__dataset=""),  # inactive: classes 0
}

# name: (axis, value shown, base family, config edit, seed)
CELLS = {
    "default": ("label rate", "1 %", "default", _set(), 0),
    "rate_0.03": ("label rate", "3 %", "default", _set(stream__label_rate=0.03), 0),
    "rate_0.1": ("label rate", "10 %", "default", _set(stream__label_rate=0.1), 0),
    "budget_8": ("passes over a step", "1/4", "default", _set(budget__passes_per_step=8,
                                                             hparams__dietcl__threshold=6), 0),
    "budget_32": ("passes over a step", "1", "default", _set(), 0),
    "budget_128": ("passes over a step", "4", "default",
                   _set(budget__passes_per_step=128, hparams__dietcl__threshold=102), 0),
    "base_none": ("base initialisation", "none", "none", _set(), 0),
    "base_mae2": ("base initialisation", "MAE 2 ep in-domain", "mae2", _set(), 0),
    "base_mae10": ("base initialisation", "MAE 10 ep in-domain", "default", _set(), 0),
    "ood": ("base initialisation", "MAE 10 ep digits (ood)", "ood", _set(), 0),
    "model_p7": ("model (MAE 2 ep)", "16 patches", "mae2", _set(), 0),
    "model_p4": ("model (MAE 2 ep)", "49 patches", "mae2_p4", _set(), 0),
    "images_500": ("unlabelled images a step (ood base)", "500", "ood",
                   _set(stream__max_examples_per_step=500, stream__label_rate=0.04), 0),
    "images_2000": ("unlabelled images a step (ood base)", "2,000", "ood", _set(), 0),
    "images_12000": ("unlabelled images a step (ood base)", "12,000", "ood",
                     _set(stream__max_examples_per_step=12000,
                          stream__label_rate=20 / 12000), 0),
    "cps_2": ("classes a step (ood base)", "2", "ood", _set(), 0),
    "cps_5": ("classes a step (ood base)", "5", "ood",
              _set(stream__classes_per_step=5, stream__max_examples_per_step=5000,
                   budget__passes_per_step=80, hparams__dietcl__threshold=64), 0),
    "stream_ci": ("stream (ood base)", "class-incremental", "ood", _set(), 0),
    "stream_iid": ("stream (ood base)", "data-incremental (iid)", "ood",
                   _set(stream__ordering="iid", stream__num_steps=5,
                        stream__max_examples_per_step=2000), 0),
    "ood_s1": ("seeds (ood base)", "seed 1", "ood", _set(), 1),
    "ood_s2": ("seeds (ood base)", "seed 2", "ood", _set(), 2),
}
# Cells that are the same run as another (same family, edit and seed): computed once.
ALIASES = {"budget_32": "default", "base_mae10": "default", "model_p7": "base_mae2",
           "images_2000": "ood", "cps_2": "ood", "stream_ci": "ood"}


def cell_config(name: str, base_ckpt: str = "", overrides: Optional[Callable] = None):
  """The config of cell ``name`` (module docstring); ``base_ckpt`` a checkpoint folder to load;
  ``overrides(config)`` a last edit (smaller models in tests)."""
  from experiments.configs import dietcl as dietcl_cfg  # pylint: disable=import-outside-toplevel
  _, _, family, edit, seed = CELLS[name]
  c = dietcl_cfg.get_config()
  c.learners = LEARNERS
  c.plots = False
  c.seed = int(seed)
  BASES[family](c)
  edit(c)
  if base_ckpt and family != "none":
    c.base_init.checkpoint = base_ckpt
  if overrides is not None:
    overrides(c)
  return c


def _diagonal(run: dict) -> list:
  """Accuracy on each task right after the step that introduced it (the A matrix's diagonal)."""
  a = run.get("accuracy_matrix") or []
  return [None if i >= len(r) else r[i] for i, r in enumerate(a)]


def run_regime(workdir: str, cells, base_checkpoints: Optional[dict] = None,
               overrides: Optional[Callable] = None, log=print,
               reuse: Optional[dict] = None) -> dict:
  """Runs ``cells`` (names of ``CELLS``) in order; returns {"cells": [...], "diff": [...]}.
  ``reuse``: {cell: results.json of a run of exactly that cell's config} read instead of run."""
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  bases = dict(base_checkpoints or {})
  done: dict = {}
  for cell, path in (reuse or {}).items():
    with open(path) as f:
      done[cell] = json.load(f)
  rows, t0 = [], time.perf_counter()
  for i, name in enumerate(cells):
    axis, value, family, _, seed = CELLS[name]
    src = ALIASES.get(name, name)
    if src not in done:
      cdir = os.path.join(workdir, src)
      res = experiment.run_experiment(cell_config(src, bases.get(family, ""), overrides), cdir,
                                      log=log)
      if family != "none" and family not in bases:
        bases[family] = os.path.join(cdir, "base_init")
      done[src] = res
    res = done[src]
    for learner, run in res["runs"].items():
      if learner not in LEARNERS.split(","):
        continue
      rows.append({"cell": name, "axis": axis, "value": value, "seed": seed, "learner": learner,
                   "base": res.get("base_init", {}).get("dataset", "none"),
                   "final_accuracy": run["final_accuracy"],
                   "average_accuracy": run["average_accuracy"], "diagonal": _diagonal(run),
                   "wall_s": run.get("wall_s")})
    log(f"[regime] {i + 1}/{len(cells)} {name} done ({time.perf_counter() - t0:.0f}s)")
  out = {"cells": rows, "diff": differences(rows), "bases": bases,
         "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "regime.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def differences(rows) -> list:
  """Per cell: DietCL and ER final accuracy and DietCL - ER."""
  by = {}
  for r in rows:
    by.setdefault(r["cell"], {})[r["learner"]] = r
  out = []
  for cell, runs in by.items():
    if "dietcl" in runs and "er" in runs:
      d, e = runs["dietcl"], runs["er"]
      out.append({"cell": cell, "axis": d["axis"], "value": d["value"], "seed": d["seed"],
                  "dietcl": d["final_accuracy"], "er": e["final_accuracy"],
                  "diff": d["final_accuracy"] - e["final_accuracy"]})
  return out


def table(out: dict) -> str:
  lines = ["| axis | value | seed | DietCL | ER (reference) | DietCL - ER |",
           "|---|---|---:|---:|---:|---:|"]
  for r in out["diff"]:
    lines.append(f"| {r['axis']} | {r['value']} | {r['seed']} | {r['dietcl']:.3f} | "
                 f"{r['er']:.3f} | {r['diff']:+.3f} |")
  return "\n".join(lines)


def plot(out: dict, path: str) -> str:
  """DietCL - ER (final accuracy) per axis, one panel each; the seed spread as a band."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  axes_names = list(dict.fromkeys(r["axis"] for r in out["diff"] if not r["axis"].startswith(
      "seeds")))
  seeds = [r["diff"] for r in out["diff"] if r["cell"] in ("ood", "ood_s1", "ood_s2")]
  n = max(len(axes_names), 1)
  fig, axs = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False, sharey=True)
  for ax, name in zip(axs[0], axes_names):
    pts = [r for r in out["diff"] if r["axis"] == name]
    ax.plot(range(len(pts)), [p["diff"] for p in pts], marker="o")
    ax.axhline(0.0, color="k", lw=0.8)
    if len(seeds) > 1:
      ax.axhspan(min(seeds), max(seeds), color="0.85", zorder=0)
    ax.set_xticks(range(len(pts)), [p["value"] for p in pts], rotation=30, ha="right",
                  fontsize=7)
    ax.set_title(name, fontsize=8)
  axs[0][0].set_ylabel("DietCL - ER final accuracy")
  fig.suptitle("DietCL minus the reference's ER (grey: seeds 0-2 range at the ood point)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


F = {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import cljax  # pylint: disable=import-outside-toplevel
  cljax.compile_cache(check=True)  # the one cache policy (cljax/__init__.py)
  cells = F["cells"].value or list(CELLS)
  bad = [c for c in cells if c not in CELLS]
  if bad:
    raise app.UsageError(f"unknown cells {bad}; valid: {list(CELLS)}")
  bases = dict(b.split("=", 1) for b in F["bases"].value)
  bad = [f for f in bases if f not in BASES]
  if bad:
    raise app.UsageError(f"unknown base families {bad}; valid: {list(BASES)}")
  workdir = F["workdir"].value
  reuse = dict(r.split("=", 1) for r in F["reuse"].value)
  out = run_regime(workdir, cells, bases, log=lambda m: print(m, flush=True), reuse=reuse)
  png = plot(out, os.path.join(workdir, "regime.png"))
  print(table(out))
  print(f"[regime] wrote {os.path.join(workdir, 'regime.json')}, {png} ({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  F["workdir"] = flags.DEFINE_string("workdir", None, "Where regime.json, regime.png and the "
                                     "cells go.", required=True)
  F["cells"] = flags.DEFINE_list("cells", [], "Cells to run (default: all of CELLS).")
  F["bases"] = flags.DEFINE_list("bases", [], "FAMILY=checkpoint folder to load for a base "
                                 "family of BASES (e.g. default=<a seed-0 dietcl config run>/"
                                 "base_init), instead of training it.")
  F["reuse"] = flags.DEFINE_list("reuse", [], "CELL=results.json of a run of that cell's exact "
                                 "config (e.g. default=<dietcl config run>/results.json, "
                                 "learners dietcl,er among its runs).")
  app.run(main)
