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

Each jitted call runs ``chunk`` steps; steps with i >= stop are masked (computed, then discarded),
so every call has the same shapes and no budget ever recompiles. The chunk's steps are unrolled
(``unroll=True``) or a ``lax.scan`` (``unroll=False``). Why both: XLA:CPU runs convolutions about
6x slower inside while/scan bodies than unrolled at top level (a small CNN, batch 32: 29-36 ms per
step unrolled, 195 ms in a fori_loop; BUILD_NOTES.md), while a ViT (no convolutions) compiles 7x
faster and runs faster as a scan. Convolutional models unroll; ViTs scan.

Data read per step from the host (a shuffled epoch order, mini-batches of a base set) comes through
``per_step(start) -> pytree`` with a leading axis of ``chunk``; the step then receives
``data = (shared, rows)`` with ``rows`` that step's slice.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import optax

Step = Callable[..., tuple]


class Loop:
  """A chunked, masked training loop around one step function (see the module docstring)."""

  def __init__(self, step: Step, *, chunk: int = 8, unroll: bool = True):
    if int(chunk) < 1:
      raise ValueError(f"chunk must be >= 1, got {chunk}")
    self.step, self.chunk, self.unroll = step, int(chunk), bool(unroll)
    self.run_chunk = jax.jit(self._run_chunk)

  def _run_chunk(self, carry, data, key, start, stop, rows):
    def one(carry, i, row):
      d = data if rows is None else (data, row)
      new, m = self.step(carry, d, jax.random.fold_in(key, i), i, stop)
      active = i < stop
      carry = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, carry)
      return carry, jnp.where(active, jnp.asarray(m, jnp.float32), 0.0)

    idx = start + jnp.arange(self.chunk, dtype=jnp.int32)
    if self.unroll:
      sums = None
      for c in range(self.chunk):
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

    ``progress(done, passes, sums)`` is called on the host after every chunk (for logs). Without
    one, a loop inside ``reporting(...)`` (the runner wraps every ``end_of_step`` in it) logs
    rate and ETA once it has run for a while (``_Reporter``).
    """
    passes = int(passes)
    sums = None
    stop = jnp.int32(passes)
    if progress is None and _REPORTING.get() is not None and passes > self.chunk:
      progress = _Reporter(*_REPORTING.get())
    for start in range(0, passes, self.chunk):
      rows = None if per_step is None else per_step(start)
      carry, m = self.run_chunk(carry, data, key, jnp.int32(start), stop, rows)
      sums = m if sums is None else sums + m
      if progress is not None:
        progress(min(start + self.chunk, passes), passes, sums)
    return carry, sums


_REPORTING: contextvars.ContextVar = contextvars.ContextVar("cljax_loop_reporting", default=None)


@contextlib.contextmanager
def reporting(log: Callable[[str], None], prefix: str, after_s: float = 10.0,
              every_s: float = 10.0) -> Iterator[None]:
  """Every ``Loop`` run inside this context without its own ``progress`` logs ``prefix pass
  i/n | R passes/s | ETA s`` once it has run ``after_s`` seconds, then every ``every_s``: long
  training inside a learner's ``end_of_step`` (offline retraining on everything seen, a large
  budget) shows progress without the learner knowing about logs."""
  token = _REPORTING.set((log, prefix, float(after_s), float(every_s)))
  try:
    yield
  finally:
    _REPORTING.reset(token)


class _Reporter:
  """Time-based ``progress`` for ``Loop``. Chunks are dispatched asynchronously, so the clock
  only means something after a sync: it waits on the latest chunk about every second (the
  first two chunks time one chunk), a stall of one chunk per second at most."""

  def __init__(self, log, prefix: str, after_s: float, every_s: float):
    self.log, self.prefix, self.after, self.every = log, prefix, after_s, every_s
    self.t0 = time.perf_counter()
    self.last_print = self.t0
    self.chunks = 0
    self.sync_every = 1
    self.printed = False

  def __call__(self, done: int, total: int, sums) -> None:
    self.chunks += 1
    if done < total and self.chunks % self.sync_every:
      return
    jax.block_until_ready(sums)
    now = time.perf_counter()
    el = now - self.t0
    self.sync_every = max(1, int(self.chunks / max(el, 1e-6)))  # about one sync per second
    if done < total and (el < self.after or now - self.last_print < self.every):
      return
    if done == total and not self.printed:  # short loops stay silent
      return
    self.last_print, self.printed = now, True
    self.log(f"{self.prefix} pass {done}/{total} | {done / el:,.1f} passes/s | "
             f"ETA {el / done * (total - done):.0f}s")


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


class Progress:
  """``progress`` callback for ``Loop``: about ``lines`` log lines with rate and ETA."""

  def __init__(self, log: Callable[[str], None], prefix: str, rows_per_step: int,
               lines: int = 20, metric: str = "loss"):
    self.log, self.prefix, self.rows, self.lines, self.metric = log, prefix, rows_per_step, \
        lines, metric
    self.t0 = time.perf_counter()
    self.last = 0

  def __call__(self, done: int, total: int, sums) -> None:
    every = max(1, total // self.lines)
    if done < total and done - self.last < every:
      return
    self.last = done
    el = time.perf_counter() - self.t0
    rate = done * self.rows / el if el > 0 else float("nan")
    eta = el / done * (total - done) if done else float("nan")
    # sums None: a loop without a metric (e.g. feature extraction) logs rate and ETA only
    metric = "" if sums is None else f"{self.metric} {float(sums[0]) / done:.4f} | "
    self.log(f"{self.prefix} step {done}/{total} | {metric}{rate:,.0f} ex/s | ETA {eta:.0f}s")
