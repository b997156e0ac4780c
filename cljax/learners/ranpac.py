"""RanPAC: random projections and a Gram-matrix ridge head on frozen features (McDonnell, Gong,
Parvaneh, Abbasnejad, van den Hengel, "RanPAC: Random Projections and Pre-trained Models for
Continual Learning", NeurIPS 2023; reference RanPAC/RanPAC).

    learner = cljax.learners.get("ranpac", num_classes=10)          # M = 10,000, λ by validation
    state, _ = learner.update(state, batch, key)                    # jit; G += HᵀH, C += HᵀY
    state, _ = learner.end_of_step(state, key)                      # λ chosen, W solved
    logits = learner.predict(state, x)                              # [B, K]

On frozen features x [B, d] (the backbone's, or the flattened inputs):

* random projection h = ReLU(x W_rand), W_rand [d, M] ~ N(0, 1) fixed (``RanPAC.py`` lines
  246-260, ``setup_RP``; ``inc_net.py`` lines 30-37, ``CosineLinear.forward`` with ``use_RP``),
  M = ``projection_dim`` (paper and ``args/*_publish.csv``: M = 10,000); 0 uses x itself (the
  paper's "decorrelation only" variant, M = d);
* Gram statistics G = Σ hᵀh [M, M] and C = Σ hᵀy [M, K] (one-hot y), streamed exactly: a batch
  adds its own sums, so G and C after any stream equal those of all rows at once (``RanPAC.py``
  lines 116-123; the reference adds a whole task at a time);
* at the end of a step, W = (G + λI)⁻¹ C (``RanPAC.py`` line 125) and scores h W (the
  ``CosineLinear`` with ``use_RP`` is a plain linear map of h; its σ = 1 scale does not change
  the ranking).

λ (``ridge="auto"``, the paper's rule; ``RanPAC.py`` lines 138-150, ``optimise_ridge_parameter``):
for each time step, the λ in 10^-8, ..., 10^8 whose W fitted on 80% of the step's rows has the
least squared error on the other 20%; W itself is then solved with all rows so far. The reference
splits the task's rows, in loader order, into a first 80% and a last 20%; a stream has no "last
20%" known in advance, so here every fifth row of the step (stream positions 4, 9, 14, ...) is a
validation row, the same 80 / 20 proportions (and every class represented when a step arrives
class by class). The step's fit and validation statistics are sums too (G_fit, C_fit, G_val,
C_val; the fit ones are the step's G and C less the validation ones), so the rule needs no
stored rows: squared error = tr(Wᵀ G_val W) − 2 tr(Wᵀ C_val) + n_val
(``cljax.ops.analytic.select_ridge``). A float ``ridge`` skips the search (and the step
statistics). A step with no validation row keeps the previous λ.

Until the first ``end_of_step`` (or after updates since the last one) ``predict`` solves W on the
fly with the current λ (``ridge_init`` before any search), so predictions are always of the
current statistics; ``end_of_step`` caches W.

State and cost: G, and with ``ridge="auto"`` G at the step's start and the step's G_val, each
M x M float32 (400 MB each at M = 10,000: 1.2 GB; run small M on a CPU); 2·M²·B FLOPs per batch
(4·M²·B with the search: G and G_val); each step end
17 Cholesky solves of M x M for the search plus one for W. On a mesh the batch's projected
features are gathered and applied alike on every device (as SLDA), so N devices give the
one-device statistics; partial states over disjoint rows merge by adding their sums
(``cljax.ops.analytic.merge_sums``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.ops import analytic
from cljax.ops import sharding

RIDGES = 10.0 ** np.arange(-8, 9)  # RanPAC.py line 139
VAL_EVERY = 5  # every fifth row of a step validates: the reference's 80 / 20 split


class State(NamedTuple):
  """RanPAC's state (K classes, M projected features).

  projection: [d, M] float32 fixed W_rand, or None (``projection_dim`` = 0, M = d).
  gram: [M, M] float32 G = Σ hᵀh over every row so far.
  targets: [M, K] float32 C = Σ hᵀy.
  counts: [K] int32 examples of each class (unseen classes score −inf).
  step_start, step_start_targets: G and C as they were when this step began; step_val,
    step_val_targets: G and C of this step's validation rows. The step's fit statistics are
    G − G_start − G_val (one product per batch fewer than keeping them apart). [M, M] and
    [M, K]; [0, 0] and [0, K] with a fixed ``ridge``.
  step_rows: [] int32 rows of this step so far (every ``VAL_EVERY``-th one validates).
  step_val_rows: [] int32 validation rows of this step.
  ridge: [] float32 λ in use.
  weights: [M, K] float32 cached W = (G + λI)⁻¹ C.
  stale: [] bool, True when the statistics changed since ``weights`` was solved.
  """

  projection: Optional[jax.Array]
  gram: jax.Array
  targets: jax.Array
  counts: jax.Array
  step_start: jax.Array
  step_start_targets: jax.Array
  step_val: jax.Array
  step_val_targets: jax.Array
  step_rows: jax.Array
  step_val_rows: jax.Array
  ridge: jax.Array
  weights: jax.Array
  stale: jax.Array


def update(state: State, batch, key, *, backbone: Optional[Callable]) -> tuple:
  """The batch's valid, labelled rows projected and added to G and C (and to the step's fit or
  validation statistics)."""
  del key
  x = analytic.features(batch["x"], backbone)
  m = state.gram.shape[0]
  d = m if state.projection is None else state.projection.shape[0]
  if x.shape[1] != d:
    raise ValueError(f"ranpac.update: batch['x'] gives features of dim {x.shape[1]}, but the "
                     f"state expects {d}")
  _, mask = contract.masks(batch)
  y = batch["y"]
  # Applied whole on every device (as SLDA): N devices give the one-device statistics.
  x, y, mask = sharding.replicate((x, y, mask))
  h = analytic.expand(x, state.projection)
  k = state.targets.shape[1]
  _, used_f = analytic.masked_targets(y, mask, k)
  used = used_f > 0
  gram, targets = analytic.gram_update(state.gram, state.targets, h, y, used)
  # Stream position of each used row within the step: every VAL_EVERY-th validates.
  pos = state.step_rows + jnp.cumsum(used.astype(jnp.int32)) - 1
  val = used & (pos % VAL_EVERY == VAL_EVERY - 1)
  new = state._replace(gram=gram, targets=targets,
                       counts=state.counts + jax.nn.one_hot(y, k, dtype=jnp.int32).T @
                       used.astype(jnp.int32),
                       step_rows=state.step_rows + used.sum().astype(jnp.int32),
                       stale=jnp.ones((), jnp.bool_))
  if state.step_val.shape[0]:  # ridge="auto": the step's validation statistics
    vg, vq = analytic.gram_update(state.step_val, state.step_val_targets, h, y, val)
    new = new._replace(step_val=vg, step_val_targets=vq,
                       step_val_rows=state.step_val_rows + val.sum().astype(jnp.int32))
  return new, contract.info(examples=used.sum().astype(jnp.int32))


def solve(state: State) -> jax.Array:
  """W [M, K] = (G + λI)⁻¹ C with the state's λ."""
  return analytic.ridge_solve(state.gram, state.targets, state.ridge)


def end_of_step(state: State, *, search: bool) -> tuple:
  """λ chosen on the step's split statistics (``search``; kept when the step had no validation
  row), W solved with every row so far, the step's statistics reset.

  Returns (state, ridge [] float32)."""
  ridge = state.ridge
  if search:
    fit_g = state.gram - state.step_start - state.step_val
    fit_q = state.targets - state.step_start_targets - state.step_val_targets
    lam, _ = analytic.select_ridge(fit_g, fit_q, state.step_val, state.step_val_targets,
                                   state.step_val_rows, jnp.asarray(RIDGES, jnp.float32))
    ridge = jnp.where(state.step_val_rows > 0, lam, state.ridge)
  state = state._replace(ridge=ridge)
  w = lax.cond(state.stale, solve, lambda s: s.weights, state)
  zero = jnp.zeros_like
  if search:
    state = state._replace(step_start=state.gram, step_start_targets=state.targets)
  return state._replace(weights=w, stale=jnp.zeros((), jnp.bool_),
                        step_val=zero(state.step_val), step_val_targets=zero(state.step_val_targets),
                        step_rows=zero(state.step_rows), step_val_rows=zero(state.step_val_rows)), ridge


def predict(state: State, x, *, backbone: Optional[Callable]) -> jax.Array:
  """Scores [B, K] = h W (W solved on the fly while stale); −inf for classes never seen."""
  h = analytic.expand(analytic.features(x, backbone), state.projection)
  w = lax.cond(state.stale, solve, lambda s: s.weights, state)
  s = jnp.dot(h, w, precision=lax.Precision.HIGHEST)
  return jnp.where(state.counts > 0, s, -jnp.inf)


@register("ranpac", inputs=("backbone",))
def ranpac(*, num_classes: int, projection_dim: int = 10_000,
           ridge: Union[str, float] = "auto", ridge_init: float = 1.0,
           backbone: Optional[Callable] = None, donate: bool = False) -> Learner:
  """Builds RanPAC's head (module docstring).

  Args:
    num_classes: K.
    projection_dim: M, random ReLU features (paper: 10,000); 0: no projection (M = d).
    ridge: "auto" (λ chosen per step by the paper's validation rule) or a fixed λ > 0.
    ridge_init: λ before the first search (``predict`` before any ``end_of_step``).
    backbone: optional frozen feature extractor x [B, ...] -> [B, d], applied inside jit.
    donate: donate the state to ``update`` (G updated in place; the caller must not keep the
      state passed in).
  """
  if int(projection_dim) < 0:
    raise ValueError(f"ranpac: projection_dim must be >= 0 (0: no projection), got "
                     f"{projection_dim}")
  search = ridge == "auto"
  if not search and not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool)
                         and ridge > 0):
    raise ValueError(f"ranpac: ridge must be 'auto' or a float > 0, got {ridge!r}")
  if not float(ridge_init) > 0:
    raise ValueError(f"ranpac: ridge_init must be > 0, got {ridge_init!r}")
  lam0 = float(ridge_init) if search else float(ridge)

  def init(key, example_batch):
    d = analytic.feature_dim(example_batch["x"], backbone)
    proj = analytic.projection(key, d, int(projection_dim), "normal") if projection_dim else None
    m = int(projection_dim) or d
    ms = m if search else 0
    f32 = lambda *s: jnp.zeros(s, jnp.float32)
    i32 = jnp.zeros((), jnp.int32)
    return State(proj, f32(m, m), f32(m, num_classes), jnp.zeros((num_classes,), jnp.int32),
                 f32(ms, ms), f32(ms, num_classes), f32(ms, ms), f32(ms, num_classes), i32, i32,
                 jnp.asarray(lam0, jnp.float32), f32(m, num_classes), jnp.zeros((), jnp.bool_))

  step_jit = jax.jit(functools.partial(end_of_step, search=search))

  def end(state, key, budget=None, progress=None):
    """Chooses λ and solves W (no training: 0 passes, whatever the budget)."""
    del key, budget, progress
    state, lam = step_jit(state)
    return state, contract.info(ridge=lam)

  return Learner("ranpac", init,
                 jax.jit(functools.partial(update, backbone=backbone),
                         donate_argnums=(0,) if donate else ()),
                 end, jax.jit(functools.partial(predict, backbone=backbone)))
