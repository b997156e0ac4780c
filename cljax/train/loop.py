"""The one training loop: spend a number of passes of a jitted, fixed-shape step, in chunks.

Every budgeted learner (``end_of_step`` of finetune/er/offline, GDumb, EWC, MAS, DietCL, joint) and
base initialisation (supervised and MAE) train through ``Loop``::

    loop = Loop(step, chunk=8)                     # built once, in the factory
    carry, sums = loop(carry, data, key, passes)   # a host loop over jitted chunks

``step(carry, data, key, i, stop) -> (carry, metrics)`` is one optimizer step: ``carry`` what
training changes (parameters, optimizer state), ``data`` what it reads (buffers, a data set),
``key`` this step's key (``fold_in(key, i)``), ``i`` the step's index and ``stop`` the number of
steps of this call (both traced int32 arrays, e.g. for a schedule), ``metrics`` a [M] float32
array summed over the steps (e.g. the loss and its parts).

Steps with i >= stop are masked (computed, then discarded), so every call has the same shapes and
no budget ever recompiles. How a chunk's steps run (``unroll``):

* ``unroll=True``: each step is one jitted call of a one-step program, at top level, dispatched in
  order from the host (a chunk only groups the steps for ``per_step`` and ``progress``); calls
  wholly past ``stop`` are skipped. XLA:CPU runs convolutions about 6x slower inside while/scan
  bodies than at top level (a small CNN, batch 32: 29-36 ms per step at top level, 195 ms in a
  fori_loop; BUILD_NOTES.md), so convolutional models run this way. One step per program rather
  than a chunk of 8 unrolled steps: the demo's CNN step (ER, batch 32) compiles in a quarter of
  the time (8.3 s vs 30.2 s on 2 loaded cores, load 11-16), and no step is slower (13.1 vs
  18.5 ms a step in the same runs): a program's compile time grows with its unrolled steps,
  while a call's dispatch costs about 0.1 ms against a 10-30 ms step (notes/startup.md), so for
  any stream that runs fewer than some 10^4 steps per compile the one-step program is faster in
  total, and warm runs it costs nothing either.
* ``unroll=False``: the whole chunk is one ``lax.scan`` call: a ViT (no convolutions) compiles 7x
  faster and runs faster as a scan.

``loop.stopping(carry, data, key, passes, early_stop, logits_of)`` is the same call under early
stopping (``cljax.train.early_stop``): it scores the carry on held-out data every few passes, stops
after ``patience`` scores without improvement and returns the best-scored carry.

Data read per step from the host (a shuffled epoch order, mini-batches of a base set) comes through
``per_step(start) -> pytree`` with a leading axis of ``chunk``; the step then receives
``data = (shared, rows)`` with ``rows`` that step's slice.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.train.early_stop import EarlyStopping, Stopped, improved

Step = Callable[..., tuple]


class Loop:
  """A chunked, masked training loop around one step function (see the module docstring)."""

  def __init__(self, step: Step, *, chunk: int = 8, unroll: bool = True, accumulate: int = 1):
    """``accumulate``: micro-batches per optimizer step of ``step``'s optimizer
    (``cljax.optim.accumulate_gradients``): early stopping scores only where a group of them
    has moved the parameters (``stopping``)."""
    if int(chunk) < 1 or int(accumulate) < 1:
      raise ValueError(f"chunk and accumulate must be >= 1, got {chunk}, {accumulate}")
    self.step, self.chunk, self.unroll = step, int(chunk), bool(unroll)
    self.accumulate = int(accumulate)
    # Steps of one compiled program: one at top level, or the whole chunk in a scan.
    self.unit = 1 if self.unroll else self.chunk
    self.run_chunk = jax.jit(self._run_chunk)

  def _run_chunk(self, carry, data, key, start, stop, rows):
    """``self.unit`` steps from ``start`` (``rows``: theirs, leading axis ``self.unit``)."""
    def one(carry, i, row):
      d = data if rows is None else (data, row)
      new, m = self.step(carry, d, jax.random.fold_in(key, i), i, stop)
      active = i < stop
      carry = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, carry)
      return carry, jnp.where(active, jnp.asarray(m, jnp.float32), 0.0)

    idx = start + jnp.arange(self.unit, dtype=jnp.int32)
    if self.unroll:
      sums = None
      for c in range(self.unit):
        row = None if rows is None else jax.tree.map(lambda a, c=c: a[c], rows)
        carry, m = one(carry, idx[c], row)
        sums = m if sums is None else sums + m
      return carry, sums
    carry, ms = jax.lax.scan(lambda cr, xs: one(cr, *xs), carry, (idx, rows))
    return carry, ms.sum(0)

  def __call__(self, carry, data, key: jax.Array, passes: int,
               per_step: Optional[Callable[[int], Any]] = None,
               progress: Optional[Callable[[int, int, Any], None]] = None):
    """Runs ``passes`` steps; returns (carry, metric sums [M], or None when passes is 0).

    ``progress(done, passes, sums)`` is called on the host after every chunk (for logs:
    ``cljax.progress.Progress`` or ``Reporter``); learners pass on the ``progress`` their
    ``end_of_step`` was given.
    """
    passes = int(passes)
    return self._spend(carry, data, key, 0, passes, passes, per_step, progress, None)

  def stopping(self, carry, data, key: jax.Array, passes: int,
               early_stop: Optional[EarlyStopping], logits_of: Callable[[Any, Any], Any],
               per_step: Optional[Callable[[int], Any]] = None,
               progress: Optional[Callable[[int, int, Any], None]] = None) -> tuple:
    """``__call__`` under early stopping (``cljax.train.early_stop``): the carry is scored at
    the start, after every ``early_stop.every`` passes (rounded up to a multiple of ``chunk`` and
    ``accumulate``)
    and after the last; after ``early_stop.patience`` scores in a row without improvement no
    more steps run. The steps that run are ``__call__``'s (same keys, ``stop`` = ``passes``).

    logits_of: ``(carry, x [B, ...]) -> logits [B, K]`` of the model a carry holds.
    Returns (the best-scored carry, metric sums over the steps run or None, ``Stopped``);
    ``early_stop`` None: ``__call__``'s carry and sums, and None.
    """
    passes = int(passes)
    if early_stop is None:
      return (*self(carry, data, key, passes, per_step, progress), None)
    # Scores fall where programs end (chunk) and where optimizer steps do (accumulate): between
    # two optimizer steps the parameters do not move, and a score there would only spend patience.
    unit = math.lcm(self.chunk, self.accumulate)
    every = -(-int(early_stop.every) // unit) * unit

    def score(c):
      return float(early_stop.score(lambda x: logits_of(c, x)))
    best, best_score, best_pass = carry, score(carry), 0
    evaluations, bad, done, sums = 1, 0, 0, None
    while done < passes and bad < early_stop.patience:
      end = min(done + every, passes)
      carry, sums = self._spend(carry, data, key, done, end, passes, per_step, progress, sums)
      done = end
      s = score(carry)
      evaluations += 1
      if improved(s, best_score, float(early_stop.min_delta)):
        best, best_score, best_pass, bad = carry, s, done, 0
      else:
        bad += 1
    return best, sums, Stopped(passes=done, best_pass=best_pass, best_score=best_score,
                               evaluations=evaluations, stopped=done < passes)

  def _spend(self, carry, data, key, begin: int, end: int, passes: int, per_step, progress,
             sums):
    """Steps ``begin`` .. ``end`` - 1 of a call of ``passes`` (``begin`` a multiple of
    ``chunk``); adds their metrics to ``sums``. Returns (carry, sums)."""
    stop = np.int32(passes)
    for start in range(begin, end, self.chunk):
      rows = None if per_step is None else per_step(start)
      for u in range(0, min(self.chunk, passes - start), self.unit):  # later ones: all masked
        part = rows if self.unit == self.chunk else jax.tree.map(
            lambda a, u=u: _rows(a, u, self.unit), rows)
        carry, m = self.run_chunk(carry, data, key, np.int32(start + u), stop, part)
        sums = m if sums is None else sums + m
      if progress is not None:
        progress(min(start + self.chunk, passes), passes, sums)
    return carry, sums


def _rows(a, start: int, n: int):
  """Rows start .. start + n - 1 of ``a``: a numpy view, or one ``dynamic_slice`` program for a
  JAX array (a static slice would compile once per start)."""
  if isinstance(a, np.ndarray):
    return a[start:start + n]
  return jax.lax.dynamic_slice_in_dim(a, np.int32(start), n)


def apply_updates(tx: optax.GradientTransformation, params, opt, grads, lr=None,
                  edit: Optional[Callable] = None) -> tuple:
  """One optimizer update: (new params, new optimizer state).

  ``lr`` None: ``tx`` includes its learning rate (``cljax.optim.build``) and its updates are added.
  Else ``tx`` is a direction (``cljax.optim.direction``) and params move by ``-lr · update``;
  ``lr`` is a scalar or a params-shaped tree (per-layer rates). ``edit(updates) -> updates`` runs
  before the step (e.g. to freeze some rows).
  """
  upd, opt = tx.update(grads, opt, params)
  if edit is not None:
    upd = edit(upd)
  if lr is None:
    return jax.tree.map(jnp.add, params, upd), opt
  if isinstance(lr, (dict, list, tuple)):
    return jax.tree.map(lambda p, u, s: p - s * u, params, upd, lr), opt
  return jax.tree.map(lambda p, u: p - lr * u, params, upd), opt


def classifier_step(net, tx: optax.GradientTransformation, params, opt, x: jax.Array,
                    w: jax.Array, loss_of_logits: Callable, lr=None,
                    edit: Optional[Callable] = None) -> tuple:
  """One optimizer step of a classifier with the network in train mode.

  Args:
    net: a ``cljax.models.pure.Net``.
    x: [B, ...] inputs; w: [B] row weights (0 = padding: left out of batch-norm statistics; an
      all-zero batch leaves the running statistics unchanged).
    loss_of_logits: (params, logits [B, K]) -> scalar loss.
    lr, edit: see ``apply_updates``.

  Returns:
    (params, opt, loss): the new parameters keep the running statistics moved by the batch
    (torch's train-mode semantics, ``Net.with_stats``).
  """
  def f(p):
    logits, moved = net.apply_train(p, x, w > 0)
    return loss_of_logits(p, logits), moved

  (loss, moved), grads = jax.value_and_grad(f, has_aux=True)(params)
  new, opt = apply_updates(tx, params, opt, grads, lr, edit)
  return net.with_stats(new, moved, x.shape[1:], jnp.sum(w) > 0), opt, loss
