r"""DietCL against the budgeted baselines over label rates and budgets, several seeds (Zhang et
al., ICLR 2024, Sec. 5: DietCL is ahead at sparse labels; robust across budgets and label rates).

  python experiments/studies/dietcl_sweep.py --workdir=/tmp/dietcl_sweep   # ~the table in notes
  python experiments/studies/dietcl_sweep.py --workdir=DIR --budgets=20,40,80,160 \
      --label_rates=0.01,0.05,0.1 --seeds=0,1,2 --learners=dietcl,dietcl_ref,er,gdumb,ewc,mas
  python experiments/studies/dietcl_sweep.py --workdir=DIR --label_rates=0.05 \
      --learners=dietcl,dietcl_no_masked_ce,dietcl_no_balanced_buffer,dietcl_no_reconstruction,er
  python experiments/studies/dietcl_sweep.py --workdir=DIR --label_rates=0.05 \
      --learners=dietcl,er,l2p,cassle,dualnet,ccic    # the paper's other baselines (issue 16)

Every cell is one ``experiments/configs/dietcl.py`` run (Fashion-MNIST, class-incremental, 5
steps of 2 classes by default, vit_micro) with ``budget.passes_per_step``, ``stream.label_rate`` and
``seed`` from the grid and ``learners`` from ``--learners``: ``dietcl`` (the paper's allocation),
``dietcl_ref`` (the reference code's recipe), the baselines, and the ablations of the paper's
Table 2, each DietCL without one component (``ABLATIONS``: L_m as plain CE over all seen
classes, the buffer without per-task balance, no reconstruction loss), and DietCL without the
reference's regularisation (no Mixup/CutMix, no crops). With ``--mae`` (default)
the MAE base initialisation is trained once (the first cell; or ``--base=PATH``) and every other
cell loads it, so all cells start from the same pre-trained ViT. B̄ stays the config's.

Writes DIR/sweep.json (``{"cells": [{budget, label_rate, seed, learner, final_accuracy,
average_accuracy, budget_used, wall_s}], "summary": [mean ± std over seeds per (budget, label
rate, learner)], "config": ...}``), DIR/sweep.png (final accuracy against label rate, ±1 std, a
line per learner, a panel per budget) and prints the table. Each cell's own results.json stays
in DIR/b<budget>_l<rate>_s<seed>/.

Full size (the paper's scale) is out of reach here: ImageNet10K / CLOC / CGLM streams, an
ImageNet MAE ViT-B/16, budgets of 100-2,500 steps of 1,024 examples per time step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.studies import seeds as seeds_lib  # noqa: E402  pylint: disable=g-import-not-at-top

# The paper's Table 2 components, one removed at a time from the config's dietcl, and the
# reference code's regularisation (Mixup/CutMix, label smoothing, crops) removed.
ABLATIONS = {
    "dietcl_no_masked_ce": dict(lm_mask="none"),
    "dietcl_no_balanced_buffer": dict(balanced_buffer=False),
    "dietcl_no_reconstruction": dict(reconstruction=False),
    "dietcl_no_regularisation": dict(mixup_alpha=0.0, cutmix_alpha=0.0, augment=False),
}

F = {}  # flags, defined only when run as a script (other studies define --workdir too)


def _define_flags() -> None:
  F["workdir"] = flags.DEFINE_string("workdir", None, "Where sweep.json, sweep.png and the cells "
                                     "go.", required=True)
  F["budgets"] = flags.DEFINE_list("budgets", ["80"], "Passes per step.")
  F["rates"] = flags.DEFINE_list("label_rates", ["0.01", "0.05", "0.1"],
                                 "Fractions of labels kept.")
  F["seeds"] = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (stream, labels, keys).")
  F["learners"] = flags.DEFINE_string("learners", "dietcl,dietcl_ref,er,gdumb,ewc,mas",
                                      "Learners (run names) of every cell: any run of "
                                      "experiments/configs/dietcl.py (incl. joint, l2p, cassle, "
                                      "dualnet, ccic) or an ablation.")
  F["mae"] = flags.DEFINE_bool("mae", True, "MAE base initialisation (trained once, shared).")
  F["cps"] = flags.DEFINE_integer("classes_per_step", 2, "Classes per time step (2: 5 steps).")
  F["max_per_step"] = flags.DEFINE_integer("max_examples_per_step", 0,
                                          "Rows per step (0: the config's).")
  F["mae_epochs"] = flags.DEFINE_float("mae_epochs", 0.0, "MAE epochs (0: the config's).")
  F["base"] = flags.DEFINE_string("base", "", "With --mae: an MAE checkpoint folder every cell "
                                  "loads (e.g. a dietcl run's WORKDIR/base_init); '' trains one "
                                  "in the first cell.")

def cell_config(budget: int, label_rate: float, learners: str, mae: bool, base_ckpt: str,
                classes_per_step: int = 2, max_examples_per_step: int = 0,
                mae_epochs: float = 0.0, overrides: Optional[Callable] = None, seed: int = 0):
  """The dietcl config of one grid cell (see module docstring); ``overrides(config)`` may change
  it further (e.g. a smaller model in tests)."""
  from experiments.configs import dietcl as dietcl_cfg  # pylint: disable=import-outside-toplevel
  c = dietcl_cfg.get_config("" if mae else "scratch")
  for name, change in ABLATIONS.items():
    c.hparams[name] = dict(c.hparams.dietcl.to_dict(), learner="dietcl", **change)
  c.learners = learners
  c.seed = int(seed)
  c.budget.passes_per_step = int(budget)
  c.stream.label_rate = float(label_rate)
  c.stream.classes_per_step = int(classes_per_step)
  if max_examples_per_step:  # else the config's images a step
    c.stream.max_examples_per_step = int(max_examples_per_step)
  c.plots = False
  if mae:
    if mae_epochs:
      c.base_init.epochs = float(mae_epochs)
    if base_ckpt:
      c.base_init.checkpoint = base_ckpt
  if overrides is not None:
    overrides(c)
  return c


def run_sweep(workdir: str, budgets, rates, learners: str, mae: bool = True,
              classes_per_step: int = 2, max_examples_per_step: int = 0, mae_epochs: float = 0.0,
              overrides: Optional[Callable] = None, base_checkpoint: str = "", seeds=(0,),
              log=print) -> dict:
  """Runs the grid (module docstring); returns {"cells": [...], "summary": [...], "config"}."""
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  cells, base_ckpt, t0 = [], base_checkpoint, time.perf_counter()
  grid = [(int(b), float(r), int(s)) for r in rates for b in budgets for s in seeds]
  for i, (b, r, s) in enumerate(grid):
    cdir = os.path.join(workdir, f"b{b}_l{r:g}_s{s}")
    c = cell_config(b, r, learners, mae, base_ckpt, classes_per_step, max_examples_per_step,
                    mae_epochs, overrides, seed=s)
    res = experiment.run_experiment(c, cdir, log=log)
    if mae and not base_ckpt:  # later cells load the first cell's MAE checkpoint
      base_ckpt = os.path.join(cdir, "base_init")
    for name, run in res["runs"].items():
      cells.append({"budget": b, "label_rate": r, "seed": s, "learner": name,
                    "final_accuracy": run["final_accuracy"],
                    "average_accuracy": run["average_accuracy"],
                    "budget_used": sum(st["budget_used"] for st in run["steps"]),
                    "wall_s": run.get("wall_s")})
    el = time.perf_counter() - t0
    log(f"[sweep] {i + 1}/{len(grid)} budget {b} label rate {r:g} seed {s} done | "
        f"ETA {el / (i + 1) * (len(grid) - i - 1):.0f}s")
  summary = seeds_lib.summarize(cells, ("budget", "label_rate", "learner"),
                                ("final_accuracy", "average_accuracy", "budget_used"))
  out = {"cells": cells, "summary": summary,
         "config": {"budgets": [int(b) for b in budgets],
                    "label_rates": [float(r) for r in rates], "seeds": [int(s) for s in seeds],
                    "learners": learners, "mae": mae, "classes_per_step": classes_per_step,
                    "max_examples_per_step": max_examples_per_step,
                    "base_checkpoint": base_checkpoint},
         "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def table(out: dict) -> str:
  """Mean ± std over seeds per (label rate, budget, learner), a markdown table."""
  summary = out.get("summary") or seeds_lib.summarize(
      out["cells"], ("budget", "label_rate", "learner"),
      ("final_accuracy", "average_accuracy", "budget_used"))
  rows = sorted(summary, key=lambda r: (r["label_rate"], r["budget"]))
  return seeds_lib.table(rows, ("label_rate", "budget", "learner"),
                         ("final_accuracy", "average_accuracy"))


def plot(out: dict, path: str) -> str:
  """Final accuracy against label rate, ±1 std over seeds, a line per learner, a panel per
  budget."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  summary = out.get("summary") or seeds_lib.summarize(
      out["cells"], ("budget", "label_rate", "learner"), ("final_accuracy",))
  budgets = sorted({r["budget"] for r in summary})
  fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
  for ax, b in zip(axes[0], budgets):
    for name in dict.fromkeys(r["learner"] for r in summary):
      pts = sorted((r["label_rate"], r["final_accuracy_mean"], r["final_accuracy_std"])
                   for r in summary if r["learner"] == name and r["budget"] == b)
      ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                  marker="o", capsize=3, linestyle="-" if name.startswith("dietcl") else "--",
                  label=name)
    rates = sorted({r["label_rate"] for r in summary})
    ax.set_xscale("log")
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("label rate")
    ax.set_ylabel("final accuracy (mean ± std over seeds)")
    ax.set_title(f"DietCL vs baselines, {b} passes/step")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import cljax  # pylint: disable=import-outside-toplevel
  cljax.compile_cache(check=True)  # the one cache policy (cljax/__init__.py)
  try:
    budgets = [int(b) for b in F["budgets"].value]
    rates = [float(r) for r in F["rates"].value]
  except ValueError as e:
    raise app.UsageError(f"--budgets takes ints, --label_rates floats: {e}") from None
  if min(budgets) < 0 or not all(0.0 < r <= 1.0 for r in rates):
    raise app.UsageError(f"budgets must be >= 0 and label rates in (0, 1]; got {budgets}, "
                         f"{rates}")
  workdir = F["workdir"].value
  out = run_sweep(workdir, budgets, rates, F["learners"].value, F["mae"].value, F["cps"].value,
                  F["max_per_step"].value, F["mae_epochs"].value,
                  base_checkpoint=F["base"].value, seeds=[int(s) for s in F["seeds"].value],
                  log=lambda m: print(m, flush=True))
  png = plot(out, os.path.join(workdir, "sweep.png"))
  print(table(out))
  print(f"[sweep] wrote {os.path.join(workdir, 'sweep.json')}, {png} "
        f"({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
