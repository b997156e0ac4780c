"""Base initialisation: supervised training of a model on a base set, saved with orbax.

REMIND, Deep SLDA and ExStream start from a network trained on the first classes of the stream
(ImageNet: 100 classes); incremental fine-tuning warm-starts from one. ``train_classifier`` does
that training; the experiment runner then hands learners either the parameters (``init_params``)
or a frozen feature extractor (``backbone``).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cljax.learners import _common


def train_classifier(model: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                     key: jax.Array, epochs: float = 5.0, batch_size: int = 64,
                     lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                     model_kwargs: Optional[dict] = None,
                     log: Optional[Callable[[str], None]] = None) -> _common.PureModel:
  """Trains ``model`` on x [N, ...] float32, y [N] int for ``epochs`` shuffled epochs.

  Returns the ``PureModel`` with trained ``params``. The step is one jitted call per mini-batch
  (a host loop: XLA:CPU convolutions are slow inside while loops, see BUILD_NOTES.md).
  """
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(f"train_classifier: {len(x)} inputs and {len(y)} labels")
  k_init, k_shuf = jax.random.split(key)
  pm = _common.pure_model(model, x.shape[1:], num_classes, k_init, model_kwargs)
  tx = _common.optimizer(optimizer, lr, weight_decay=weight_decay)
  bs = min(batch_size, len(x))

  @jax.jit
  def step(params, opt, xb, yb):
    loss, grads = jax.value_and_grad(
        lambda p: _common.cross_entropy(pm.apply(p, xb), yb, jnp.ones(yb.shape[0])))(params)
    upd, opt = tx.update(grads, opt, params)
    return jax.tree.map(lambda p, u: p + u, params, upd), opt, loss

  params, opt = pm.params, tx.init(pm.params)
  steps_per_epoch = len(x) // bs
  total = max(1, math.ceil(epochs * steps_per_epoch))
  rng = np.random.default_rng(int(jax.random.randint(k_shuf, (), 0, 2**31 - 1)))
  t0, done, loss = time.perf_counter(), 0, jnp.zeros(())
  while done < total:
    perm = rng.permutation(len(x))
    for s in range(steps_per_epoch):
      if done >= total:
        break
      idx = perm[s * bs:(s + 1) * bs]
      params, opt, loss = step(params, opt, x[idx], y[idx].astype(np.int32))
      done += 1
    if log:
      el = time.perf_counter() - t0
      log(f"[base_init] {done}/{total} steps | loss {float(loss):.4f} | "
          f"{done * bs / el:,.0f} ex/s | ETA {el / done * (total - done):.0f}s")
  return pm._replace(params=params)


def save_params(path: str, params) -> None:
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ck:
    ck.save(path, params)


def load_params(path: str, like) -> dict:
  """Restores parameters saved by ``save_params`` into the structure of ``like``."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no base-init checkpoint at {path}")
  with ocp.StandardCheckpointer() as ck:
    return ck.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def accuracy(pm: _common.PureModel, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  f = jax.jit(pm.apply)
  pred = np.concatenate([np.asarray(f(pm.params, x[s:s + batch_size])).argmax(1)
                         for s in range(0, len(x), batch_size)])
  return float((pred == y).mean())
