"""Choosing DietCL's threshold B̄ by validation on the first time steps, as the paper does.

Zhang et al. (ICLR 2024) pick B̄ (the budget below which a step's passes are split equally among
the three sources; passes above it go to buffer-only fine-tuning) by validation on the first 3
steps of the stream (≈400-450 steps of 1024 on ImageNet10K). ``select_threshold`` does that:

* from each of the first ``num_steps`` steps, a stratified ``val_fraction`` of the *labelled* rows
  of every class is held out (``validation_mask``); held-out rows are removed from the step
  entirely (neither label nor image reaches training), so the score is on unseen examples of the
  training distribution, never on the test set;
* ``dietcl`` runs those steps on the remaining rows once per candidate B̄, with the same budget per
  step, seed and every other hyper-parameter;
* the score of a candidate is the accuracy, after the last of those steps, on all held-out rows
  (all classes seen so far: it rewards learning the new classes and keeping the old ones); the best
  candidate wins, ties going to the earlier candidate in ``candidates``.

A candidate B̄ >= the budget gives the all-joint allocation, so candidates above the budget all
score the same; only thresholds in [0, budget] are distinct choices.

Use it before a run (``experiments/configs/dietcl.py`` with ``--config=...dietcl.py:tune`` calls it
and writes the winner into ``hparams.dietcl.threshold``).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cljax.learner import get


def validation_mask(labels: np.ndarray, labeled: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
  """Held-out rows [n] bool: per class, round(fraction · its labelled rows) of them, at least 1
  where the class has 2 or more labelled rows (so every class with a spare label is scored) and
  never all of them (so every class keeps a training label)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
  out = np.zeros(len(labels), bool)
  for c in np.unique(labels[labeled]):
    idx = np.flatnonzero(labeled & (labels == c))
    k = min(max(int(round(fraction * len(idx))), 1 if len(idx) >= 2 else 0), len(idx) - 1)
    out[rng.choice(idx, k, replace=False)] = True
  return out


def _batches(x: np.ndarray, y: np.ndarray, labeled: np.ndarray, bs: int):
  """Fixed-size batches of the runner's form (padding rows invalid)."""
  for s in range(0, len(y), bs):
    n = min(bs, len(y) - s)
    pad = bs - n
    yield {"x": np.concatenate([x[s:s + n], np.zeros((pad,) + x.shape[1:], x.dtype)]),
           "y": np.r_[y[s:s + n], np.zeros(pad, np.int32)].astype(np.int32),
           "valid": np.r_[np.ones(n, bool), np.zeros(pad, bool)],
           "labeled": np.r_[labeled[s:s + n], np.zeros(pad, bool)]}


def _predict(learner, state, x: np.ndarray, bs: int = 256) -> np.ndarray:
  """Predicted classes [N] in fixed-size padded batches (one compiled shape)."""
  out = []
  for s in range(0, len(x), bs):
    xb = x[s:s + bs]
    pad = np.zeros((bs - len(xb),) + x.shape[1:], x.dtype)
    out.append(np.asarray(learner.predict(state, np.concatenate([xb, pad]))).argmax(1)[:len(xb)])
  return np.concatenate(out)


def _split(stream, steps: int, val_fraction: float, seed: int):
  """Training rows per step [(x, y, labeled)] and the held-out rows (x, y, step) of all steps."""
  src = stream.dataset.train
  rng = np.random.default_rng(seed)
  train, val_x, val_y = [], [], []
  for t in range(steps):
    idx, lab, y = stream.steps[t], stream.labeled[t], stream.labels[t]
    held = validation_mask(y, lab, val_fraction, rng)
    train.append((src.batch(idx[~held]), y[~held], lab[~held]))
    val_x.append(src.batch(idx[held]))
    val_y.append(y[held])
  if sum(len(v) for v in val_y) == 0:
    raise ValueError("select_threshold: no labelled rows to hold out in the first steps")
  val_step = np.concatenate([np.full(len(v), t) for t, v in enumerate(val_y)])
  return train, np.concatenate(val_x), np.concatenate(val_y), val_step


def _score(learner, train, vx, vy, val_step, budget: int, bs: int, seed: int) -> list:
  """Runs ``learner`` over the training steps; accuracy on the held-out rows of the steps so far
  after each step."""
  x0 = train[0][0][:bs]
  state = learner.init(jax.random.key(seed), {"x": x0, "y": train[0][1][:len(x0)]})
  acc = []
  for t, (x, y, lab) in enumerate(train):
    used = 0.0
    for i, b in enumerate(_batches(x, y, lab, bs)):
      state, m = learner.update(state, b, jax.random.key(1000 * t + i))
      used += float(m["passes"])
    state, _ = learner.end_of_step(state, jax.random.fold_in(jax.random.key(seed), t),
                                   jnp.int32(max(int(budget) - int(used), 0)))
    sel = val_step <= t
    acc.append(float((_predict(learner, state, vx[sel]) == vy[sel]).mean()))
  return acc


def select_threshold(stream, candidates: Sequence[int], *, budget: int, num_steps: int = 3,
                     val_fraction: float = 0.2, stream_batch_size: int = 32, seed: int = 0,
                     repeats: int = 1,
                     log: Optional[Callable[[str], None]] = None, **dietcl_kwargs) -> dict:
  """Runs ``dietcl`` on the first ``num_steps`` steps of ``stream`` for every candidate B̄.

  Args:
    stream: a ``cljax.data.Stream`` (the run's stream; only its first steps are read).
    candidates: thresholds B̄ to try, in passes (ints >= 0).
    budget: passes per time step (as the run's ``budget.passes_per_step``).
    num_steps: steps used (the paper: 3); capped at the stream's length.
    val_fraction: share of each class's labelled rows held out per step.
    stream_batch_size: rows per ``update`` call.
    seed: held-out draw, learner init and keys (the same for every candidate).
    repeats: draws (seeds seed, seed + 1, ...) of held-out rows and keys; scores are their
      mean. Sparse labels make the held-out set small (5 % of 800 rows, 20 % held out: 8 rows a
      step), so one draw is noisy.
    log: one line per candidate.
    **dietcl_kwargs: every other ``dietcl`` hyper-parameter (``num_classes`` defaults to the
      data set's; ``max_step_size`` to the stream's largest step; ``init_params`` may be an
      MAE-pretrained ViT).

  Returns:
    ``{"best": B̄, "scores": {B̄: accuracy}, "table": [{"threshold", "accuracy",
    "step_accuracy", "seconds"}], "num_steps", "val_rows" (summed over draws), "budget",
    "repeats"}``.
  """
  cands = [int(c) for c in candidates]
  if not cands or min(cands) < 0:
    raise ValueError(f"candidates must be a non-empty list of thresholds >= 0, got {candidates}")
  if int(budget) < 0:
    raise ValueError(f"budget must be >= 0 passes per step, got {budget}")
  if "threshold" in dietcl_kwargs or dietcl_kwargs.get("allocation", "paper") != "paper":
    raise ValueError("select_threshold sets the threshold of allocation='paper'; do not pass "
                     "threshold or another allocation")
  steps = min(int(num_steps), stream.num_steps)
  table = {c: {"threshold": c, "accuracy": 0.0, "step_accuracy": np.zeros(steps), "seconds": 0.0}
           for c in cands}
  val_rows = 0
  for r in range(int(repeats)):
    train, vx, vy, val_step = _split(stream, steps, val_fraction, seed + r)
    val_rows += len(vy)
    kw = {"num_classes": stream.dataset.num_classes, "max_step_size": stream.max_step_size,
          **dietcl_kwargs}
    for cand in cands:
      t0 = time.perf_counter()
      acc = _score(get("dietcl", threshold=cand, **kw), train, vx, vy, val_step, budget,
                   stream_batch_size, seed + r)
      row = table[cand]
      row["step_accuracy"] += np.asarray(acc) / repeats
      row["seconds"] += time.perf_counter() - t0
      if log:
        log(f"[threshold] B̄={cand} draw {r + 1}/{repeats}: validation accuracy {acc[-1]:.4f} "
            f"after {steps} steps (per step {[round(a, 4) for a in acc]}, "
            f"{time.perf_counter() - t0:.0f}s)")
  table = list(table.values())
  for row in table:
    row["step_accuracy"] = row["step_accuracy"].tolist()
    row["accuracy"] = row["step_accuracy"][-1]
  best = max(table, key=lambda r: r["accuracy"])["threshold"]  # max keeps the first of ties
  return {"best": best, "scores": {r["threshold"]: r["accuracy"] for r in table},
          "table": table, "num_steps": steps, "val_rows": int(val_rows), "budget": int(budget),
          "repeats": int(repeats)}
