"""Masked-autoencoder (MAE, He et al. 2022) pre-training of a registry ViT on unlabeled images.

DietCL (Zhang et al., ICLR 2024) starts its stream from an MAE-pretrained ViT (ImageNet-1k for the
ImageNet10K stream). ``train_mae`` does that pre-training for any ``cljax.models`` ViT
(``vit_micro`` ... ``vit_base``) and returns a ``PureModel`` whose params have exactly the
structure of ``_common.pure_model(model, ...)``, so every learner's ``init_params`` (``dietcl``,
``joint``, ``er``, ``gdumb``, ``ewc``, ``mas`` with the same model) accepts them; the experiment's
``base_init.kind = "mae"`` and ``experiments/pretrain.py`` call it.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cljax.learners import _common, dietcl


def train_mae(model: str, x: np.ndarray, num_classes: int, *, key: jax.Array,
              epochs: float = 10.0, batch_size: int = 256, lr: float = 1e-3,
              mask_ratio: float = 0.75, model_kwargs: Optional[dict] = None,
              log: Optional[Callable[[str], None]] = None, weight_decay: float = 0.05,
              warmup_fraction: float = 0.05, norm_pix: bool = True,
              chunk: int = 8) -> _common.PureModel:
  """MAE pre-training of ``model`` on x [N, H, W, C] float32 (labels are never read).

  Args:
    model: a ``cljax.models`` ViT name (``vit_micro``, ``vit_tiny``, ``vit_small``, ``vit_base``).
    x: unlabeled images [N, H, W, C] float32.
    num_classes: K of the head built with the model (untrained here; learners train it).
    key: PRNG key: initialization, shuffling order and masks.
    epochs: passes over x (fractions allowed); steps = ceil(epochs · N / batch_size), >= 1.
    batch_size: images per step (capped at N).
    lr: peak learning rate (not scaled by batch size); linear warmup over ``warmup_fraction`` of
      the steps, then cosine decay to 0 (MAE's schedule).
    mask_ratio, norm_pix: MAE masking ratio (0.75) and per-patch normalised pixel targets.
    model_kwargs: options of the model (``patch``, config overrides such as ``depth``).
    log: progress lines (loss, examples/s, ETA), about 20 per run.
    weight_decay: AdamW (betas 0.9, 0.95) decoupled decay on matrices only (``dietcl.decay_mask``).
    chunk: optimizer steps per jitted call (a ``lax.scan``; the ViT has no convolutions).

  Returns:
    ``_common.PureModel`` with the MAE-trained params (the decoder included).
  """
  x = np.asarray(x)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"train_mae needs images [N, H, W, C] with N >= 1; got shape {x.shape}")
  k_init, k_shuf, k_mask = jax.random.split(key, 3)
  pm = _common.pure_model(model, x.shape[1:], num_classes, k_init, model_kwargs)
  if not hasattr(nnx.merge(pm.graphdef, pm.params, copy=True), "mae_loss"):
    raise ValueError(f"train_mae: model {model!r} has no MAE decoder; valid: "
                     f"{list(dietcl.VIT_MODELS)}")
  bs = int(min(batch_size, len(x)))
  total = max(1, math.ceil(float(epochs) * len(x) / bs))
  warmup = int(warmup_fraction * total)
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))
  tx = optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=dietcl.decay_mask)

  def loss_fn(p, xb, k):
    return nnx.merge(pm.graphdef, p, copy=True).mae_loss(xb, k, mask_ratio, norm_pix)

  @jax.jit
  def run_chunk(params, opt, data, idx, start, stop):
    """Steps start .. start + chunk - 1 on rows idx [chunk, bs]; steps >= stop are no-ops."""
    def body(carry, row):
      params, opt = carry
      i, ids = row
      loss, g = jax.value_and_grad(loss_fn)(params, data[ids], jax.random.fold_in(k_mask, i))
      upd, new_opt = tx.update(g, opt, params)
      active = i < stop
      keep = lambda a, b: jnp.where(active, a, b)  # noqa: E731
      return ((jax.tree.map(keep, optax.apply_updates(params, upd), params),
               jax.tree.map(keep, new_opt, opt)), jnp.where(active, loss, 0.0))

    (params, opt), losses = jax.lax.scan(body, (params, opt), (start + jnp.arange(chunk), idx))
    return params, opt, losses.sum()

  # One index stream of shuffled epochs, cut into [chunk, bs] blocks (a ragged last block is
  # padded with row 0 and masked, so every call has the same shape: no recompiles).
  rng = np.random.default_rng(int(jax.random.randint(k_shuf, (), 0, 2**31 - 1)))
  n_ep = math.ceil(total * bs / len(x))
  order = np.concatenate([rng.permutation(len(x)) for _ in range(n_ep)])
  n_chunks = math.ceil(total / chunk)
  order = np.resize(order, n_chunks * chunk * bs).reshape(n_chunks, chunk, bs).astype(np.int32)
  data = jnp.asarray(x, jnp.float32)
  params, opt = pm.params, tx.init(pm.params)
  every = max(1, n_chunks // 20)
  t0, window, window_steps = time.perf_counter(), 0.0, 0
  for c in range(n_chunks):
    params, opt, lsum = run_chunk(params, opt, data, order[c], jnp.int32(c * chunk),
                                  jnp.int32(total))
    done = min((c + 1) * chunk, total)
    window += float(lsum)
    window_steps += done - c * chunk
    if log and ((c + 1) % every == 0 or c == n_chunks - 1):
      el = time.perf_counter() - t0
      log(f"[mae] {model} step {done}/{total} (epoch {done * bs / len(x):.2f}) | "
          f"loss {window / max(window_steps, 1):.4f} | {done * bs / el:,.0f} ex/s | "
          f"ETA {el / done * (total - done):.0f}s")
      window, window_steps = 0.0, 0
  return pm._replace(params=params)


def mae_eval_loss(pm: _common.PureModel, x: np.ndarray, key: jax.Array, mask_ratio: float = 0.75,
                  batch_size: int = 256) -> float:
  """Mean MAE loss of ``pm.params`` on x [N, H, W, C] (fixed masks from ``key``), for checks."""
  f = jax.jit(lambda p, xb, k: nnx.merge(pm.graphdef, p, copy=True).mae_loss(xb, k, mask_ratio))
  losses = [float(f(pm.params, jnp.asarray(x[s:s + batch_size]), jax.random.fold_in(key, s)))
            for s in range(0, len(x), batch_size)]
  return float(np.mean(losses))
