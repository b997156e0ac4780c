"""Networks as pure functions of (params, x): the one model wrapper every learner uses.

A ``Net`` turns a Flax NNX module into functions of a pure parameter dict, so they jit,
differentiate, donate and checkpoint like any function of arrays::

    net = Net.named("cnn", num_classes=10)          # a cljax.models name; built for x's shape
    params = net.init(key, x.shape[1:])             # the module's whole state as a pure dict
    logits = net.apply(params, x)                   # eval mode
    logits, moved = net.apply_train(params, x, mask)  # train mode: batch statistics moved
    feats = net.features(params, x)
    loss = net.call(params, x, "mae_loss", key)     # any other method of the module

``params`` holds the whole module state: weights and, for batch-norm models, the running
statistics (``stat_mask(params)`` marks them). Prediction uses the running statistics (a row's
output never depends on its batch); ``apply_train`` normalises with the batch's statistics over
the rows where ``mask`` is True and returns the params with the running statistics moved; a training
step differentiates the loss of its logits, applies its optimizer update and keeps the moved
statistics with ``with_stats``: torch's ``model.train()`` / ``model.eval()`` semantics. No gradient
ever flows into the running statistics.

The graph of a named network depends on its input shape, which every call reads from ``x`` (a
static shape), so the functions need no ``init`` to have run in this process: a restored state
predicts at once. Graphs are built abstractly (``nnx.eval_shape``) and cached per input shape.
``Net.of(module)`` wraps an existing module (a base-trained or pretrained network) whose graph is
fixed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cljax import models


class Graph(NamedTuple):
  """The static part of a network for one input shape."""

  graphdef: Any
  stat_paths: frozenset   # key paths (tuples) of the running-statistic leaves in params
  batch_norm: bool        # __call__ takes use_running_average
  takes_mask: bool        # __call__ takes a row mask for its batch statistics
  features_mode: bool     # .features takes use_running_average


def takes_arg(fn, name: str) -> bool:
  """Whether callable ``fn`` has a parameter called ``name`` (module call conventions)."""
  return fn is not None and name in inspect.signature(fn).parameters


def _path_key(path) -> tuple:
  return tuple(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))) for p in path)


def path_names(path) -> tuple:
  """A ``jax.tree_util`` key path as a tuple of plain names and indices."""
  return _path_key(path)


def _graph_of(module: nnx.Module) -> Graph:
  graphdef, _ = nnx.split(module)
  stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
  stat_paths = frozenset(_path_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(stats)[0])
  cls = type(module)
  return Graph(graphdef, stat_paths, takes_arg(cls.__call__, "use_running_average"),
               takes_arg(cls.__call__, "mask"),
               takes_arg(getattr(cls, "features", None), "use_running_average"))


class Net:
  """A network as pure functions (see the module docstring). Build with ``named`` or ``of``."""

  def __init__(self, description: str,
               build: Optional[Callable[[tuple, jax.Array], nnx.Module]] = None,
               module: Optional[nnx.Module] = None):
    if (build is None) == (module is None):
      raise ValueError("Net needs exactly one of build (a named network) or module (a fixed one)")
    self.description = description
    self._build = build
    self._fixed = None if module is None else (_graph_of(module),
                                               nnx.to_pure_dict(nnx.state(module)))

  @classmethod
  def named(cls, name: str, num_classes: int, **model_kwargs) -> "Net":
    """Network ``name`` of ``cljax.models`` with ``num_classes`` outputs, built for each input
    shape it is called on. Unknown names raise ValueError listing the valid ones."""
    if name not in models.names():
      raise ValueError(f"unknown model {name!r}; valid models: {models.names()}")
    kw = dict(model_kwargs)
    desc = f"model {name!r}" + (f" with {kw}" if kw else "")
    return cls(desc, build=lambda shape, key: models.create(name, shape, num_classes, key, **kw))

  @classmethod
  def of(cls, module: nnx.Module, description: Optional[str] = None) -> "Net":
    """A fixed network: ``module``'s graph, whatever the input shape."""
    return cls(description or type(module).__name__, module=module)

  @property
  def fixed_params(self) -> Optional[dict]:
    """The wrapped module's own parameters (``of``), or None for a named network."""
    return None if self._fixed is None else self._fixed[1]

  def graph(self, in_shape: Sequence[int]) -> Graph:
    """The static graph for examples of shape ``in_shape`` (cached)."""
    if self._fixed is not None:
      return self._fixed[0]
    return self._graph_cached(tuple(int(s) for s in in_shape))

  @functools.lru_cache(maxsize=None)
  def _graph_cached(self, in_shape: tuple) -> Graph:
    return _graph_of(nnx.eval_shape(lambda: self._build(in_shape, jax.random.key(0))))

  def init(self, key: jax.Array, in_shape: Sequence[int],
           init_params: Optional[dict] = None) -> dict:
    """Initial params for inputs of shape ``in_shape``: fresh from ``key``, or ``init_params``
    (a warm start, e.g. a base-initialised network) once checked to fit this network."""
    if self._fixed is not None:
      params = self._fixed[1]
    else:
      params = nnx.to_pure_dict(nnx.state(self._build(tuple(in_shape), key)))
    if init_params is None:
      return jax.tree.map(jnp.array, params)  # a copy: states may be donated
    if jax.tree.structure(init_params) != jax.tree.structure(params):
      raise ValueError(f"init_params do not fit {self.description} built for inputs "
                       f"{tuple(in_shape)} (different parameter tree)")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(init_params)[0],
                            jax.tree.leaves(params)):
      if tuple(jnp.shape(a)) != tuple(jnp.shape(b)):
        raise ValueError(f"init_params do not fit {self.description} built for inputs "
                         f"{tuple(in_shape)}: {'.'.join(map(str, _path_key(path)))} has shape "
                         f"{tuple(jnp.shape(a))}, expected {tuple(jnp.shape(b))}")
    return jax.tree.map(jnp.array, init_params)

  def stat_mask(self, params: dict, in_shape: Sequence[int]) -> Any:
    """A params-shaped tree of bools, True at running-statistic leaves."""
    paths = self.graph(in_shape).stat_paths
    return jax.tree_util.tree_map_with_path(lambda p, _: _path_key(p) in paths, params)

  def module(self, params: dict, in_shape: Sequence[int]) -> nnx.Module:
    """A fresh module holding ``params`` (running statistics behind stop_gradient)."""
    m = nnx.merge(self.graph(in_shape).graphdef, params, copy=True)
    nnx.update(m, jax.tree.map(jax.lax.stop_gradient, nnx.state(m, nnx.BatchStat)))
    return m

  def apply(self, params: dict, x: jax.Array) -> jax.Array:
    """Logits [B, K] in eval mode (running statistics)."""
    g = self.graph(x.shape[1:])
    kw = {"use_running_average": True} if g.batch_norm else {}
    return self.module(params, x.shape[1:])(x, **kw)

  def features(self, params: dict, x: jax.Array) -> jax.Array:
    """The module's ``features(x)`` in eval mode (e.g. pooled [B, F])."""
    g = self.graph(x.shape[1:])
    kw = {"use_running_average": True} if g.features_mode else {}
    return self.module(params, x.shape[1:]).features(x, **kw)

  def call(self, params: dict, x: jax.Array, method: str, *args, **kwargs) -> Any:
    """``module.method(x, *args, **kwargs)`` (e.g. a ViT's ``mae_loss``); params unchanged."""
    return getattr(self.module(params, x.shape[1:]), method)(x, *args, **kwargs)

  def apply_train(self, params: dict, x: jax.Array, mask: Optional[jax.Array] = None) -> tuple:
    """(logits [B, K], params with the running statistics moved by this batch) in train mode.

    ``mask`` [B] bool: rows that count in the batch statistics (when the module takes a mask);
    models without batch norm return ``params`` unchanged.
    """
    g = self.graph(x.shape[1:])
    if not g.batch_norm:
      return self.apply(params, x), params
    m = self.module(params, x.shape[1:])
    kw = {"mask": mask} if (mask is not None and g.takes_mask) else {}
    logits = m(x, use_running_average=False, **kw)
    return logits, jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(m)))

  def with_stats(self, params: dict, trained: dict, in_shape: Sequence[int], take=True) -> dict:
    """``params`` with the running statistics of ``trained`` where ``take`` ([] bool)."""
    paths = self.graph(in_shape).stat_paths
    if not paths:
      return params
    return jax.tree_util.tree_map_with_path(
        lambda p, a, b: jnp.where(take, b, a) if _path_key(p) in paths else a, params, trained)

  def __repr__(self) -> str:
    return f"Net({self.description})"
