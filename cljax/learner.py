"""The learner contract: a small record of pure functions over a state pytree.

Like optax's ``GradientTransformation``, every method is the same four functions::

    learner = cljax.learners.get("er", num_classes=10)
    state = learner.init(key, {"x": x, "y": y})             # example batch: shapes and dtypes
    state, info = learner.update(state, batch, key)         # ingest one batch of the stream
    state, info = learner.end_of_step(state, key)           # spend the rest of a time step
    logits = learner.predict(state, x)                      # [B, num_classes]

* ``init(key, example_batch) -> state``: the input shape and dtype come from ``example_batch["x"]``
  [B, ...]; nothing else about the data is given to a factory.
* ``update(state, batch, key) -> (state, info)``: one batch of incoming stream data. A batch is a
  dict with ``x`` [B, ...] and ``y`` [B] int labels in ``[0, num_classes)``; optionally ``valid``
  [B] bool (False on padding rows, which are ignored) and ``labeled`` [B] bool (False where the
  label is withheld), both all True when absent.
* ``end_of_step(state, key, budget=None, progress=None) -> (state, info)``: called once when a
  time step (a task, a chunk of the stream) ends. ``budget`` is the forward-backward passes it may
  still spend in this step, ``None`` for the learner's own default. ``progress`` is an optional
  host callback ``progress(done, total, metric_sums)`` (``cljax.progress.Reporter``) that a
  learner hands to the ``Loop`` it trains with, so long training shows rate and ETA. Learners with
  nothing to do return the state. Unlike ``update`` it runs on the host and may read state values
  there (counters deciding how many passes to spend), so it is not itself jitted; the work it
  spends runs in jitted, fixed-shape chunks. Learners whose ``early_stopping`` is True also take
  ``early_stop=`` a ``cljax.train.early_stop.EarlyStopping``: they score their model on held-out
  data every few passes, stop spending the budget when it stops improving and keep the best
  model of the step (``info.passes`` is what they spent; ``info.extra`` gains ``passes_saved``,
  ``best_pass`` and ``best_score``).
* ``predict(state, x) -> logits`` [B, num_classes] float32.
* ``info`` is an ``Info``: ``passes`` spent (forward-backward passes of the learner's training batch
  size; the runner charges them to the step's budget), ``loss`` (NaN when nothing was trained) and
  ``extra``, a dict of method-specific figures ([] arrays; the runner records their step means in
  results.json and the loggers as ``extra/<name>``). All are arrays (``update`` is jitted).

State is a typed pytree of arrays only (a NamedTuple per learner with documented fields:
parameters, optimizer state, buffers, statistics, counters) with fixed shapes, so a growing stream
never recompiles, and the whole state can be jitted, donated, sharded and checkpointed as one
object.

What the runner relies on beyond the four functions:

* ``Learner.budgeted`` (below): whether a step's spending is checked against the budget.
* Replay buffers inside a state are ``cljax.ops.buffers`` policy states; a state type that
  declares ``SHARDED_ROWS`` (the names of its item arrays) has those arrays split over the mesh's
  ``data`` axis (``cljax.ops.sharding.state_specs``, placed by ``cljax.train.mesh.place_state``);
  everything else is replicated.
* ``Learner.hparams``: the effective hyper-parameters, recorded by the registry from the factory's
  bound signature (defaults applied), written to results.json and the workdir record.

``cljax.learners.get`` returns these functions wrapped by ``checked``: every batch is checked at the
Python boundary (missing keys, shapes and dtype against ``init``'s example batch, NaN/Inf, labels
outside ``[0, num_classes)``) and a bad one raises ``BatchError`` with one line naming the problem,
before any jitted code runs. ``get(..., checked=False)`` gives the bare jitted functions for hot
loops whose caller has done its own checks (the runner does).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

State = Any
Batch = Mapping[str, Any]


class Info(NamedTuple):
  """What one ``update`` or ``end_of_step`` call did. All fields are arrays (or a dict of them).

  passes: [] float32, forward-backward passes spent, charged to the step's budget.
  loss: [] float32, mean training loss of the call (NaN when it trained nothing).
  extra: method-specific figures, name -> [] array (e.g. ``buffer_count``).
  """

  passes: Any
  loss: Any
  extra: Mapping[str, Any]


def info(passes=0.0, loss=float("nan"), **extra) -> Info:
  """An ``Info`` with float32 ``passes`` and ``loss``; keyword arguments become ``extra``."""
  return Info(jnp.asarray(passes, jnp.float32), jnp.asarray(loss, jnp.float32), dict(extra))


class Learner(NamedTuple):
  """A continual learner: pure functions over a state pytree (see the module docstring).

  name: the registry name; hparams: the effective hyper-parameters (for result records).
  budgeted: False for reference learners (offline, joint upper bounds) and one-step-per-example
    methods (REMIND) that spend what their method prescribes whatever ``budget`` says; the runner
    then does not flag their steps as over budget.
  early_stopping: True when ``end_of_step`` takes ``early_stop=`` (module docstring): learners
    that train at step ends.
  """

  name: str
  init: Callable[[jax.Array, Batch], State]
  update: Callable[[State, Batch, jax.Array], tuple]
  end_of_step: Callable[..., tuple]
  predict: Callable[[State, jax.Array], jax.Array]
  hparams: Mapping[str, Any] = {}
  budgeted: bool = True
  early_stopping: bool = False


def identity_end_of_step(state, key, budget=None, progress=None):
  """``end_of_step`` of a learner with nothing to do at the end of a time step."""
  del key, budget, progress
  return state, info()


def masks(batch: Batch) -> tuple:
  """(valid [B] bool, labeled [B] bool) of a batch, all True where the key is absent.

  ``labeled`` is returned already and-ed with ``valid``. For use inside jitted ``update``s: the
  batch's keys are static, so this costs nothing.
  """
  n = batch["y"].shape[0]
  valid = jnp.asarray(batch["valid"], bool) if "valid" in batch else jnp.ones((n,), bool)
  labeled = jnp.asarray(batch["labeled"], bool) if "labeled" in batch else jnp.ones((n,), bool)
  return valid, valid & labeled


class BatchError(ValueError):
  """A batch (or an ``end_of_step`` budget) that breaks the contract; the message is one line."""


def _shape(a) -> tuple:
  return tuple(np.shape(a))


def check_batch(batch: Batch, num_classes: int, example: Optional[tuple] = None,
                where: str = "batch") -> dict:
  """Checks one batch at the Python boundary and returns it with ``valid``/``labeled`` filled in.

  Args:
    batch: a dict with ``x`` [B, ...] and ``y`` [B] int; optional ``valid``/``labeled`` [B] bool.
    num_classes: labels of valid, labelled rows must lie in [0, num_classes).
    example: (shape of one input, dtype) from ``init``'s example batch, or None (not yet known).
    where: names the call in error messages.

  Raises:
    BatchError: one line naming the first problem found (missing key, shape, dtype, NaN/Inf,
      label range).
  """
  if not isinstance(batch, Mapping):
    raise BatchError(f"{where}: a batch must be a dict with 'x' and 'y', got {type(batch).__name__}")
  missing = [k for k in ("x", "y") if k not in batch]
  if missing:
    raise BatchError(f"{where}: missing key(s) {missing}; a batch needs 'x' [B, ...] and "
                     f"'y' [B] (got keys {sorted(batch)})")
  unknown = sorted(set(batch) - {"x", "y", "valid", "labeled"})
  if unknown:
    raise BatchError(f"{where}: unknown key(s) {unknown}; valid keys: "
                     "['labeled', 'valid', 'x', 'y']")
  x, y = (v if hasattr(v, "dtype") else np.asarray(v) for v in (batch["x"], batch["y"]))
  xs, ys = _shape(x), _shape(y)
  if len(xs) < 2:
    raise BatchError(f"{where}: x must be [B, ...] with a batch axis, got shape {xs}")
  n = xs[0]
  if ys != (n,):
    raise BatchError(f"{where}: y must have shape ({n},) to match x {xs}, got {ys}")
  if example is not None:
    shape, dtype = example
    if xs[1:] != tuple(shape):
      raise BatchError(f"{where}: x has examples of shape {xs[1:]}, but init's example batch had "
                       f"{tuple(shape)}")
    if np.dtype(x.dtype) != np.dtype(dtype):
      raise BatchError(f"{where}: x has dtype {np.dtype(x.dtype)}, but init's example batch had "
                       f"{np.dtype(dtype)}; convert it (e.g. x.astype(np.float32))")
  if not np.issubdtype(np.dtype(y.dtype), np.integer):
    raise BatchError(f"{where}: y must hold integer labels, got dtype {np.dtype(y.dtype)}")
  out = {"x": x, "y": y}
  for k in ("valid", "labeled"):
    if k in batch:
      v = batch[k]
      if _shape(v) != (n,) or np.dtype(v.dtype) != np.bool_:
        raise BatchError(f"{where}: {k} must be bool of shape ({n},), got "
                         f"{np.dtype(v.dtype)} {_shape(v)}")
      out[k] = v
    else:
      out[k] = np.ones((n,), bool)
  valid = np.asarray(out["valid"])
  if np.issubdtype(np.dtype(x.dtype), np.floating):
    xa = np.asarray(x)
    # Fast path: a sum is finite when every term is (one pass, no copy); only a non-finite sum
    # (a NaN/Inf somewhere, maybe in a padding row, or an overflow) pays for the exact check.
    if not np.isfinite(np.add.reduce(xa, axis=None)):
      rows = ~np.isfinite(xa.reshape(n, -1)).all(1) & valid
      if rows.any():
        raise BatchError(f"{where}: x holds NaN or Inf (first in row {int(np.argmax(rows))}); "
                         "clean the input before it reaches the learner")
  yl = np.asarray(y)[valid & np.asarray(out["labeled"])]
  if yl.size and (yl.min() < 0 or yl.max() >= num_classes):
    bad = int(yl.max() if yl.max() >= num_classes else yl.min())
    raise BatchError(f"{where}: label {bad} outside [0, {num_classes}); the learner was built "
                     f"with num_classes={num_classes}")
  return out


def check_budget(budget, where: str = "end_of_step") -> Optional[int]:
  """``budget`` as an int >= 0, or None; anything else raises ``BatchError``."""
  if budget is None:
    return None
  if isinstance(budget, (bool, np.bool_)) or not (
      isinstance(budget, (int, np.integer)) or (np.ndim(budget) == 0 and hasattr(budget, "dtype")
                                                  and np.issubdtype(budget.dtype, np.integer))):
    raise BatchError(f"{where}: budget must be an int >= 0 (forward-backward passes) or None "
                     f"(the learner's default), got {budget!r}")
  b = int(budget)
  if b < 0:
    raise BatchError(f"{where}: budget must be >= 0 passes or None (the learner's default), "
                     f"got {b}")
  return b


def checked(learner: Learner, num_classes: int) -> Learner:
  """``learner`` with every call checked at the Python boundary (see ``check_batch``).

  The example batch given to ``init`` fixes the shape and dtype later batches must have; a state
  restored without calling ``init`` in this process is still checked for everything else.
  """
  example: list = []

  def init(key, example_batch):
    b = check_batch(example_batch, num_classes, None, f"{learner.name}.init")
    example[:] = [(_shape(b["x"])[1:], b["x"].dtype)]
    return learner.init(key, b)

  def update(state, batch, key):
    b = check_batch(batch, num_classes, example[0] if example else None,
                    f"{learner.name}.update")
    return learner.update(state, b, key)

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    where = f"{learner.name}.end_of_step"
    budget = check_budget(budget, where)
    if early_stop is None:
      return learner.end_of_step(state, key, budget, progress=progress)
    if not learner.early_stopping:
      raise BatchError(f"{where}: this learner does not take early_stop (its "
                       "Learner.early_stopping is False); call it without early_stop")
    return learner.end_of_step(state, key, budget, progress=progress, early_stop=early_stop)

  def predict(state, x):
    xs = _shape(x)
    where = f"{learner.name}.predict"
    if example and xs[1:] != tuple(example[0][0]):
      raise BatchError(f"{where}: x has examples of shape {xs[1:]}, but init's example batch "
                       f"had {tuple(example[0][0])}")
    if len(xs) < 2:
      raise BatchError(f"{where}: x must be [B, ...] with a batch axis, got shape {xs}")
    if np.issubdtype(np.dtype(x.dtype), np.floating) and not np.isfinite(np.asarray(x)).all():
      raise BatchError(f"{where}: x holds NaN or Inf")
    return learner.predict(state, x)

  return learner._replace(init=init, update=update, end_of_step=end_of_step, predict=predict)


def default_passes(epochs: float, rows: int, batch_size: int) -> int:
  """Passes of ``batch_size`` rows that make ``epochs`` epochs over ``rows`` rows (ceil)."""
  return int(math.ceil(float(epochs) * int(rows) / int(batch_size)))
