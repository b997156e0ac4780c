"""The learner protocol and the registry of learners.

A learner is a small record of pure functions over a state pytree, in the style of optax's
``GradientTransformation``::

    learner = cljax.learners.get("er", num_classes=10, memory_size=200)
    state = learner.init(key, example_batch)
    state, metrics = learner.update(state, batch, key)          # jit-compiled
    logits = learner.predict(state, x)                          # jit-compiled
    state, metrics = learner.end_of_step(state, key, budget)    # optional, jit-compiled

Batches are dicts of arrays with a fixed leading size B:

* ``x``       [B, ...] float32 inputs (images [B, H, W, C] or features [B, d]);
* ``y``       [B] int32 labels in [0, num_classes);
* ``valid``   [B] bool, False on the padding rows of a ragged last batch (they must be ignored);
* ``labeled`` [B] bool, False where the label is withheld (sparse-label streams).

``update`` ingests one batch of incoming stream data. ``end_of_step`` (may be None) is called once
after the last batch of a time step with an int32 ``budget``: the forward-backward passes (of the
learner's training batch size) it may still spend in this step, or -1 for "use your own default".
``end_of_step`` may be a host function that loops over jitted, fixed-shape pieces (XLA:CPU runs
convolutions several times slower inside while loops). Both return ``metrics`` with at least ``passes`` (float32 scalar): the forward-backward passes
actually spent, which the runner adds up into each step's ``budget_used``.

State holds arrays only (parameters, optimizer state, buffers, statistics, counters) with fixed
shapes, so the stream never triggers a recompile and the whole state checkpoints as one pytree.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax

State = Any
Batch = dict


class Learner(NamedTuple):
  """A continual learner: pure functions over a state pytree (see module docstring)."""

  name: str
  init: Callable[[jax.Array, Batch], State]
  update: Callable[[State, Batch, jax.Array], tuple[State, dict]]
  predict: Callable[[State, jax.Array], jax.Array]
  end_of_step: Optional[Callable[[State, jax.Array, jax.Array], tuple[State, dict]]] = None
  hparams: dict = {}


_REGISTRY: dict[str, Callable[..., Learner]] = {}


def register(name: str):
  """Decorator registering ``factory(**hparams) -> Learner`` under ``name``."""

  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"learner {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return wrap


def names() -> list[str]:
  """Sorted names of all registered learners."""
  _load_builtin()
  return sorted(_REGISTRY)


def hparam_names(name: str) -> list[str]:
  """The keyword arguments the factory of learner ``name`` accepts."""
  _load_builtin()
  factory = _factory(name)
  if hasattr(factory, "valid_hparams"):  # factories that forward **kwargs list what they accept
    return list(factory.valid_hparams)
  return [p for p, v in inspect.signature(factory).parameters.items()
          if v.kind != v.VAR_KEYWORD]


def get(name: str, **hparams) -> Learner:
  """Builds the registered learner ``name`` with the given hyper-parameters.

  Raises:
    ValueError: for an unknown name (listing the valid ones) or an unknown hyper-parameter
      (listing the ones the learner accepts).
  """
  _load_builtin()
  factory = _factory(name)
  valid = hparam_names(name)
  params = inspect.signature(factory).parameters
  if hasattr(factory, "valid_hparams") or not any(
      p.kind == p.VAR_KEYWORD for p in params.values()):
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
      raise ValueError(
          f"unknown hyper-parameter(s) {unknown} for learner {name!r}; valid: {sorted(valid)}")
  return factory(**hparams)


def _factory(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown learner {name!r}; valid learners: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def _load_builtin():
  # Importing the package registers every built-in learner exactly once.
  import cljax.learners  # noqa: F401  pylint: disable=import-outside-toplevel
