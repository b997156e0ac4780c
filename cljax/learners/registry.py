"""The registry of learners: every method is built the same way, by name.

    learner = cljax.learners.get("er", num_classes=10, memory_size=500)

A factory registers itself with ``@register(name, inputs=(...))``. Its keyword arguments are its
hyper-parameters; ``inputs`` names the ones an experiment fills from the stream or from base
initialisation (``INPUTS`` says what each means). Nothing is guessed: an experiment passes exactly
the declared inputs, and ``get`` rejects a hyper-parameter the factory does not take, listing the
valid ones.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

from cljax import learner as contract
from cljax.learner import Learner

# What an experiment can hand a learner, besides its configured hyper-parameters.
INPUTS = {
    "model": "name of the network (config.model), a cljax.models name",
    "model_kwargs": "keyword arguments of that network's constructor (config.model_kwargs)",
    "batch_size": "rows of one training pass (config.budget.batch_size)",
    "max_step_size": "examples in the stream's largest time step (sizes a step store)",
    "stream_size": "examples in the whole stream (sizes a keep-everything store)",
    "init_params": "parameters of the base-initialised network (a warm start)",
    "backbone": "frozen features of the base-initialised network: a pure x -> [B, d] function",
    "base": "the whole base initialisation (cljax.train.pretrain.BaseInit: network and base set)",
}


class Entry(NamedTuple):
  factory: Callable[..., Learner]
  inputs: tuple
  hparams: tuple  # every keyword the factory takes (inputs included)


_REGISTRY: dict[str, Entry] = {}


def _keywords(factory) -> tuple:
  params = inspect.signature(factory).parameters.values()
  if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
    raise TypeError(f"learner factory {factory!r} must list its hyper-parameters explicitly "
                    "(no *args/**kwargs), so that get() can check them")
  return tuple(p.name for p in params)


def register(name: str, inputs: tuple = ()):
  """Decorator registering ``factory(*, num_classes, **hparams) -> Learner`` under ``name``.

  ``inputs``: the keys of ``INPUTS`` the factory accepts (each must be one of its keywords).
  """
  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
      raise ValueError(f"learner {name!r} is already registered")
    kws = _keywords(factory)
    if "num_classes" not in kws:
      raise TypeError(f"learner {name!r}: the factory must take num_classes")
    bad = [i for i in inputs if i not in INPUTS or i not in kws]
    if bad:
      raise TypeError(f"learner {name!r}: declared inputs {bad} are not both keys of INPUTS "
                      f"{sorted(INPUTS)} and keywords of the factory")
    _REGISTRY[name] = Entry(factory, tuple(inputs), kws)
    return factory

  return wrap


def names() -> list[str]:
  """Sorted names of all registered learners."""
  return sorted(_REGISTRY)


def entry(name: str) -> Entry:
  """The registry entry of ``name``; an unknown name raises ValueError listing the valid ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown learner {name!r}; valid learners: {names()}")
  return _REGISTRY[name]


def hparam_names(name: str) -> list[str]:
  """Every keyword the factory of learner ``name`` accepts, ``num_classes`` and inputs included."""
  return list(entry(name).hparams)


def inputs(name: str) -> tuple:
  """The ``INPUTS`` learner ``name`` accepts from an experiment."""
  return entry(name).inputs


def check_hparams(name: str, hparams) -> None:
  """Raises ValueError naming unknown hyper-parameters of learner ``name`` and the valid ones."""
  valid = entry(name).hparams
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    raise ValueError(f"unknown hyper-parameter(s) {unknown} for learner {name!r}; valid: "
                     f"{sorted(valid)}")


def get(name: str, *, num_classes: int, checked: bool = True, **hparams) -> Learner:
  """Builds learner ``name`` for ``num_classes`` classes.

  Args:
    name: one of ``names()``.
    num_classes: K, the output size (labels lie in [0, K)).
    checked: True (default): every call checks its batch at the Python boundary
      (``cljax.learner.checked``). False: the bare jitted functions, for hot loops that check
      their own batches.
    **hparams: the learner's hyper-parameters (``hparam_names(name)``).

  Raises:
    ValueError: unknown name or hyper-parameter (listing the valid ones), or a bad value.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  check_hparams(name, hparams)
  e = entry(name)
  learner = e.factory(num_classes=num_classes, **hparams)
  learner = learner._replace(name=name, hparams=effective_hparams(e.factory, num_classes, hparams))
  return contract.checked(learner, num_classes) if checked else learner


def _is_setting(v) -> bool:
  """Plain data (what a config can hold): None, bool, numbers, str, and lists / tuples / dicts of
  them. Arrays, networks and functions handed to a factory are inputs, not settings."""
  if v is None or isinstance(v, (bool, int, float, str)):
    return True
  if isinstance(v, (list, tuple)):
    return all(_is_setting(u) for u in v)
  if isinstance(v, dict):
    return all(isinstance(k, str) and _is_setting(u) for k, u in v.items())
  return False


def effective_hparams(factory: Callable, num_classes: int, hparams: dict) -> dict:
  """The hyper-parameters ``factory(num_classes=..., **hparams)`` runs with: its bound signature
  with the defaults applied (``num_classes`` and the plain-valued inputs included; parameters,
  backbones, base sets and other non-data arguments left out). Written once, in the signature;
  recorded in results.json and the workdir record."""
  bound = inspect.signature(factory).bind(num_classes=num_classes, **hparams)
  bound.apply_defaults()
  return {k: v for k, v in bound.arguments.items() if _is_setting(v)}
