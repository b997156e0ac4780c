"""Early stopping inside one step's training, and the best model of the step.

Every learner that trains at step ends (``Learner.early_stopping``: finetune, finetune_kading, er,
offline, gdumb, ewc, mas, lwf, icarl, dietcl, er_diet, joint, l2p, siesta, cassle, ccic, dualnet)
takes an ``EarlyStopping`` in ``end_of_step``::

    stop = EarlyStopping.on(x_val, y_val, every=16, patience=3)    # a user's own loop
    state, info = learner.end_of_step(state, key, budget, early_stop=stop)
    info.passes                    # passes spent (<= budget): what the runner charges
    info.extra["passes_saved"]     # passes planned for the stopped phase - passes it ran
    info.extra["best_pass"]        # passes after which the kept model was scored (0: the start)
    info.extra["best_score"]       # its held-out score

``Loop.stopping`` (``cljax.train.loop``) runs the rule: the model is scored on the held-out data at
the step's start and after every ``every`` loop steps (rounded up to a multiple of the loop's
``chunk`` and ``accumulate``, where its programs and optimizer steps end) and after the last;
learners whose loop step costs more than one pass (L2P's prompt tokens, CCIC's views, DualNet's
look-aheads) convert ``every`` from passes to their steps, rounding up, so their scores can be
further apart than ``every`` passes (up to ``chunk`` x the step's cost); an evaluation improves when
its score is below the best so far by more than ``min_delta``; after ``patience`` evaluations in a
row without improvement the step stops spending its budget; the carry (parameters and optimizer
state) of the best evaluation is what the step keeps. The steps run are the steps an uninterrupted
call runs (same keys, same learning-rate schedule over the full budget), so a call that never stops
and whose last evaluation is its best equals the call without early stopping.

``score(logits_of) -> float`` is lower-is-better: ``on`` builds the usual one from arrays
(mean cross-entropy in nats, or the error rate); the experiment runner builds its own over the
stream's validation split (``eval.early_stop_every``), placing batches on its mesh.

What it does not change: the step's training loss (``info.loss``) covers every step run, those
after the best score included, so the runner's divergence check still sees a blow-up that early
stopping discarded (a rate that high is worth knowing about). Learners that retrain from their
initialisation every step (gdumb, offline, joint) score that initialisation as the step's start:
if no trained model beats it within ``patience`` scores, the untrained one is kept. Learners whose
optimizer state carries over steps (er, finetune, lwf, icarl, ewc, ccic) with ``accumulate`` > 1
may end a step inside a group of micro-batches; the next step completes it. iCaRL and CCIC are
scored by their network's own head while they train: a proxy for the class means or kNN votes
they predict with after the step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import numpy as np

from cljax.eval import metrics as metrics_lib

METRICS = ("loss", "error")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """When a step's training stops early (module docstring).

  score: ``score(logits_of) -> float``, lower is better; ``logits_of(x [B, ...]) -> [B, K]``
    logits of the model being scored. NaN counts as no improvement.
  every: passes between evaluations (>= 1; rounded up to the loop's chunk).
  patience: evaluations in a row without improvement that stop the step (>= 1).
  min_delta: an improvement must lower the best score by more than this (>= 0).
  """

  score: Callable[[Callable[[Any], Any]], float]
  every: int
  patience: int
  min_delta: float = 0.0

  def __post_init__(self):
    for name, lo in (("every", 1), ("patience", 1)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"early stopping: {name} must be an integer >= {lo}, got {v!r}")
    if not float(self.min_delta) >= 0:
      raise ValueError(f"early stopping: min_delta must be >= 0, got {self.min_delta!r}")

  @classmethod
  def on(cls, x, y, *, every: int, patience: int, min_delta: float = 0.0,
         metric: str = "loss", batch_size: int = 256) -> "EarlyStopping":
    """Early stopping on held-out arrays ``x`` [N, ...] and integer labels ``y`` [N].

    metric: ``loss`` (mean cross-entropy of the logits, nats) or ``error`` (1 - top-1 accuracy).
    batch_size: rows per ``logits_of`` call; the last batch is padded by repeating its first
      row (every call has one shape, so a jitted predict compiles once).
    """
    x, y = np.asarray(x), np.asarray(y)
    if metric not in METRICS:
      raise ValueError(f"unknown early-stopping metric {metric!r}; valid: {list(METRICS)}")
    if x.ndim < 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
      raise ValueError(f"early stopping needs x [N, ...] and y [N] with N >= 1, got shapes "
                       f"{x.shape} and {y.shape}")
    batches = list(padded_batches(x, int(batch_size)))

    def score(logits_of):
      logits = np.concatenate([np.asarray(logits_of(xb))[:n] for xb, n in batches])
      return held_out_score(logits, y, metric)

    return cls(score=score, every=every, patience=patience, min_delta=min_delta)


def padded_batches(x: np.ndarray, batch_size: int):
  """(x_b [batch_size, ...], n real rows) over ``x``; the last batch repeats its first row."""
  for i in range(0, x.shape[0], batch_size):
    xb = x[i:i + batch_size]
    n = xb.shape[0]
    if n < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[:1], batch_size - n, 0)])
    yield xb, n


def held_out_score(logits: np.ndarray, y: np.ndarray, metric: str = "loss") -> float:
  """Lower-is-better score of ``logits`` [N, K] for labels ``y`` [N]: mean cross-entropy
  (``loss``) or the error rate (``error``); NaN when a logit is not finite (a diverged model
  never counts as an improvement)."""
  if metric == "error":
    z = np.asarray(logits)
    if not np.isfinite(z).all():
      return float("nan")
    return float(1.0 - (z.argmax(1) == np.asarray(y)).mean())
  v = metrics_lib.cross_entropy(logits, y)
  return float("nan") if v is None else v


class Stopped(NamedTuple):
  """What early stopping did in one ``Loop.stopping`` call.

  passes: passes run (<= the budget; charged). best_pass: passes run when the kept carry was
  scored (0: the step's start). best_score: its score. evaluations: scores computed (the start
  included). stopped: patience ran out before the budget.
  """

  passes: int
  best_pass: int
  best_score: float
  evaluations: int
  stopped: bool


def improved(score: float, best: float, min_delta: float) -> bool:
  """Whether ``score`` beats ``best`` by more than ``min_delta`` (NaN never does; anything finite
  beats a NaN best)."""
  if math.isnan(score):
    return False
  return math.isnan(best) or score < best - min_delta


def extra(stopped: "Stopped | None", budget: int, cost: float = 1.0) -> dict:
  """``Info.extra`` figures of one early-stopped call of ``budget`` loop steps: ``passes_saved``
  (budget - steps run), ``best_pass`` and ``best_score`` (the held-out score of the model kept),
  as float32 scalars; empty without early stopping. ``cost``: passes per loop step, for
  learners whose steps cost more than one pass (L2P's prompt tokens, CCIC's augmented views)."""
  if stopped is None:
    return {}
  return {"passes_saved": np.float32((int(budget) - stopped.passes) * cost),
          "best_pass": np.float32(stopped.best_pass * cost),
          "best_score": np.float32(stopped.best_score)}
