r"""DietCL's robustness study (Zhang et al., ICLR 2024, Sec. 5): budget x label rate, against ER.

  python experiments/studies/dietcl_sweep.py --workdir=/tmp/dietcl_sweep
  python experiments/studies/dietcl_sweep.py --workdir=DIR --budgets=20,40,80,160 \
      --label_rates=0.01,0.05,0.1 --learners=dietcl,er,gdumb --mae=false

Every cell is one ``experiments/configs/dietcl.py`` run (mnist5k, class-incremental, 5 steps of 2
classes by default, vit_micro) with ``budget.passes_per_step`` and ``stream.label_rate`` set from
the grid and ``learners`` from ``--learners``. With ``--mae`` (default) the MAE base
initialisation is trained once (the first cell, in DIR/b.._l../base_init; or ``--base=PATH``
given) and every other cell loads that checkpoint (``base_init.checkpoint``), so all cells start
from the same pre-trained ViT. B̄ stays the config's (fixed, as the paper's B̄ across budgets).

Writes DIR/sweep.json (``{"cells": [{budget, label_rate, learner, final_accuracy,
average_accuracy, budget_used, wall_s}], "config": ...}``), DIR/sweep.png (final accuracy against
budget, one line per learner and label rate) and prints the table. Each cell's own results.json
and plots stay in DIR/b<budget>_l<rate>/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

F = {}  # flags, defined only when run as a script (other studies define --workdir too)


def _define_flags() -> None:
  F["workdir"] = flags.DEFINE_string("workdir", None, "Where sweep.json, sweep.png and the cells "
                                     "go.", required=True)
  F["budgets"] = flags.DEFINE_list("budgets", ["20", "40", "80"], "Passes per step.")
  F["rates"] = flags.DEFINE_list("label_rates", ["0.05", "0.1"], "Fractions of labels kept.")
  F["learners"] = flags.DEFINE_string("learners", "dietcl,er", "Learners of every cell.")
  F["mae"] = flags.DEFINE_bool("mae", True, "MAE base initialisation (trained once, shared).")
  F["cps"] = flags.DEFINE_integer("classes_per_step", 2, "Classes per time step (2: 5 steps).")
  F["max_per_step"] = flags.DEFINE_integer("max_examples_per_step", 0, "Rows per step (0: all).")
  F["mae_epochs"] = flags.DEFINE_float("mae_epochs", 0.0, "MAE epochs (0: the config's).")
  F["base"] = flags.DEFINE_string("base", "", "With --mae: an MAE checkpoint folder every cell "
                                  "loads (e.g. a dietcl run's WORKDIR/base_init); '' trains one "
                                  "in the first cell.")

def cell_config(budget: int, label_rate: float, learners: str, mae: bool, base_ckpt: str,
                classes_per_step: int = 2, max_examples_per_step: int = 0,
                mae_epochs: float = 0.0, overrides: Optional[Callable] = None):
  """The dietcl config of one grid cell (see module docstring); ``overrides(config)`` may change
  it further (e.g. a smaller model in tests)."""
  from experiments.configs import dietcl as dietcl_cfg  # pylint: disable=import-outside-toplevel
  c = dietcl_cfg.get_config("" if mae else "scratch")
  c.learners = learners
  c.budget.passes_per_step = int(budget)
  c.stream.label_rate = float(label_rate)
  c.stream.classes_per_step = int(classes_per_step)
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
              overrides: Optional[Callable] = None, base_checkpoint: str = "",
              log=print) -> dict:
  """Runs the grid (module docstring); returns {"cells": [...], "config": {...}}."""
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  cells, base_ckpt, t0 = [], base_checkpoint, time.perf_counter()
  grid = [(int(b), float(r)) for r in rates for b in budgets]
  for i, (b, r) in enumerate(grid):
    cdir = os.path.join(workdir, f"b{b}_l{r:g}")
    c = cell_config(b, r, learners, mae, base_ckpt, classes_per_step, max_examples_per_step,
                    mae_epochs, overrides)
    res = experiment.run_experiment(c, cdir, log=log)
    if mae and not base_ckpt:  # later cells load the first cell's MAE checkpoint
      base_ckpt = os.path.join(cdir, "base_init")
    for name, run in res["runs"].items():
      cells.append({"budget": b, "label_rate": r, "learner": name,
                    "final_accuracy": run["final_accuracy"],
                    "average_accuracy": run["average_accuracy"],
                    "budget_used": sum(s["budget_used"] for s in run["steps"]),
                    "wall_s": run.get("wall_s")})
    el = time.perf_counter() - t0
    log(f"[sweep] {i + 1}/{len(grid)} budget {b} label rate {r:g} done | "
        f"ETA {el / (i + 1) * (len(grid) - i - 1):.0f}s")
  out = {"cells": cells, "config": {"budgets": [int(b) for b in budgets],
                                    "label_rates": [float(r) for r in rates],
                                    "learners": learners, "mae": mae,
                                    "classes_per_step": classes_per_step,
                                    "max_examples_per_step": max_examples_per_step,
                                    "base_checkpoint": base_checkpoint},
         "wall_s": time.perf_counter() - t0}
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def table(out: dict) -> str:
  lines = [f"{'label rate':>10} {'budget':>7} {'learner':<8} {'final':>7} {'average':>8} "
           f"{'passes':>7}"]
  for c in sorted(out["cells"], key=lambda c: (c["label_rate"], c["budget"], c["learner"])):
    lines.append(f"{c['label_rate']:>10g} {c['budget']:>7d} {c['learner']:<8} "
                 f"{c['final_accuracy']:>7.4f} {c['average_accuracy']:>8.4f} "
                 f"{c['budget_used']:>7.0f}")
  return "\n".join(lines)


def plot(out: dict, path: str) -> str:
  """Final accuracy against budget (passes per step), a line per (learner, label rate)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  series = sorted({(c["learner"], c["label_rate"]) for c in out["cells"]})
  for name, rate in series:
    pts = sorted((c["budget"], c["final_accuracy"]) for c in out["cells"]
                 if c["learner"] == name and c["label_rate"] == rate)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
            linestyle="-" if name == "dietcl" else "--", label=f"{name}, {rate:g} labels")
  ax.set_xscale("log")
  budgets = sorted({c["budget"] for c in out["cells"]})
  ax.set_xticks(budgets, [str(b) for b in budgets])
  ax.minorticks_off()
  ax.set_xlabel("budget (passes per step)")
  ax.set_ylabel("final accuracy")
  ax.set_title("DietCL robustness: budget x label rate (mnist5k)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get("CLJAX_JAX_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["CLJAX_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
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
                  base_checkpoint=F["base"].value, log=lambda m: print(m, flush=True))
  png = plot(out, os.path.join(workdir, "sweep.png"))
  print(table(out))
  print(f"[sweep] wrote {os.path.join(workdir, 'sweep.json')}, {png} "
        f"({out['wall_s']:.0f}s)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
