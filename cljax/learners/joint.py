"""Joint upper bound of DietCL's comparison (Zhang et al., ICLR 2024): self-supervised training on
all unlabeled data, then fine-tuning on all labels, with the same total budget, split 80 / 20.

Semantics (a reference, like ``offline`` in ``sgd.py``, not a streaming method):

* ``update`` keeps every row seen so far: unlabeled rows in one store, labelled rows in another
  (capacity ``stream_size`` each); 0 passes.
* ``end_of_step`` at step t restarts from the initialization (or ``init_params``, e.g. an
  MAE-pretrained ViT) and spends the *cumulative* budget B_0 + ... + B_t (the budgets the runner
  gave every step so far), so after the last step it has spent exactly what a streaming method
  spent over the whole run, all of it on all the data:

  - ``round(ssl_fraction · total)`` passes (0.8) of MAE reconstruction (``vit.mae_loss``, mask ratio
    0.75, normalised pixels) on batches of ``batch_size`` rows drawn from all unlabeled rows seen;
  - the rest (0.2) cross-entropy fine-tuning on batches drawn from all labelled rows seen, logits
    masked to the classes seen, with layer-wise lr decay (MAE fine-tuning practice);

  each phase a fresh AdamW (DietCL's optimizer pieces: ``dietcl.adamw``, ``dietcl.make_chunk``,
  half-cosine lr per phase). With no unlabeled row yet the SSL passes are still charged (weight 0).
* It therefore spends more than one step's budget at every step but the first: ``passes`` reports
  what it really spent (the cumulative budget), and ``respect_budget`` is False so the runner does
  not warn. Only the final step's accuracy is the upper bound; earlier A(t) points are those of
  joint training on the data seen up to t with the budget spent up to t.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from cljax.learner import Learner, register
from cljax.learners import _common, dietcl
from cljax.ops import buffers


@register("joint")
def joint(*, num_classes: int, stream_size: int, model: Optional[str] = None,
          model_kwargs: Optional[dict] = None, vit: str = "tiny", patch: Optional[int] = None,
          vit_kwargs: Optional[dict] = None, batch_size: int = 64, lr: float = 1e-4,
          finetune_lr_scale: float = 1.0, weight_decay: float = 0.05, betas=(0.9, 0.95),
          layer_decay: float = 0.65, mask_ratio: float = 0.75, norm_pix: bool = True,
          ssl_fraction: float = 0.8, epochs_per_step: float = 1.0, chunk: int = 8,
          unroll: int = 1, init_params: Optional[dict] = None) -> Learner:
  """Builds the joint upper bound (see module docstring).

  Args:
    num_classes: K, the head's fixed maximum number of classes.
    stream_size: examples in the whole stream (the runner passes it): capacity of each store.
    model, model_kwargs, vit, patch, vit_kwargs: the ViT, as for ``dietcl`` (``dietcl.vit_spec``).
    batch_size: rows per pass, in both phases.
    lr: peak lr per 256 examples (scaled linearly to ``batch_size``); the fine-tuning phase uses
      lr × ``finetune_lr_scale``.
    weight_decay, betas: AdamW (DietCL's reference code: 0.05, (0.9, 0.95)).
    layer_decay: layer-wise lr decay of the fine-tuning phase (the SSL phase uses none).
    mask_ratio, norm_pix: MAE masking ratio and per-patch normalised targets.
    ssl_fraction: share of the cumulative budget spent on MAE (0.8), the rest on fine-tuning.
    epochs_per_step: a step's budget when the runner sets none: epochs over that step's rows.
    chunk, unroll: steps per jitted call and the ``lax.scan`` unroll inside it.
    init_params: restart point of every step (e.g. ``cljax.train.mae.train_mae`` params).
  """
  for k, v in (("stream_size", stream_size), ("batch_size", batch_size),
               ("num_classes", num_classes), ("chunk", chunk)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  if not 0.0 <= float(ssl_fraction) <= 1.0:
    raise ValueError(f"ssl_fraction must be in [0, 1], got {ssl_fraction}")
  vit_config, vit_kw = dietcl.vit_spec("joint", model, model_kwargs, vit, patch, vit_kwargs)
  peak_lr = lr * batch_size / 256
  tx = dietcl.adamw(weight_decay, betas)
  net = dietcl.LazyViT("joint", vit_config, vit_kw, num_classes, layer_decay, init_params)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    params = net.build(key, x)
    shape = x.shape[1:]
    return {"params": params, "init_params": params,
            "seen": jnp.zeros((num_classes,), bool),
            "lab": buffers.init(stream_size, shape, num_classes),
            "unl": buffers.init(stream_size, shape, num_classes),
            "step_rows": jnp.zeros((), jnp.int32),   # rows of the current step (default budget)
            "total_budget": jnp.zeros((), jnp.int32)}  # passes given to all steps so far

  def update(state, batch, key):
    """Stores the batch's labelled and unlabeled rows; no training (0 passes)."""
    del key
    state = dietcl.store_rows(state, batch, num_classes, "lab", "unl")
    return {**state, "step_rows": state["step_rows"] + jnp.sum(batch["valid"]).astype(jnp.int32)
            }, {"passes": jnp.float32(0.0)}

  def _ssl_loss(params, state, key):
    kx, km = jax.random.split(key)
    xu, _, wu = dietcl.sample_rows(state["unl"], kx, batch_size)
    return net.vit.mae_loss(params, xu, km, mask_ratio, norm_pix, wu), ()

  def _ft_loss(params, state, key):
    xl, yl, wl = dietcl.sample_rows(state["lab"], key, batch_size)
    return dietcl.masked_ce(net.vit.logits(params, xl), yl, wl, state["seen"]), ()

  ssl_j = dietcl.make_chunk(_ssl_loss, tx, chunk, unroll)
  ft_j = dietcl.make_chunk(_ft_loss, tx, chunk, unroll)
  opt_init_j = jax.jit(tx.init)

  def end_of_step(state, key, budget):
    """Restarts from the initialization and spends the cumulative budget (module docstring)."""
    k_ssl, k_ft = jax.random.split(key)
    budget = int(budget)
    if budget < 0:
      budget = math.ceil(epochs_per_step * int(state["step_rows"]) / batch_size)
    total = int(state["total_budget"]) + budget
    n_ssl = int(round(ssl_fraction * total))
    n_ft = total - n_ssl
    no_decay = jax.tree.map(jnp.ones_like, net.scales)  # MAE pre-training uses no layer decay
    params, s_ssl = dietcl.run_phase(ssl_j, opt_init_j, state["init_params"], state, k_ssl,
                                     n_ssl, peak_lr, no_decay, chunk)
    params, s_ft = dietcl.run_phase(ft_j, opt_init_j, params, state, k_ft, n_ft,
                                    peak_lr * finetune_lr_scale, net.scales, chunk)
    state = {**state, "params": params, "step_rows": jnp.zeros((), jnp.int32),
             "total_budget": jnp.int32(total)}
    loss = lambda s, n: float(s[0]) / n if s is not None else 0.0  # noqa: E731
    return state, {"passes": jnp.float32(total), "ssl_passes": jnp.float32(n_ssl),
                   "finetune_passes": jnp.float32(n_ft), "loss_r": jnp.float32(loss(s_ssl, n_ssl)),
                   "loss": jnp.float32(loss(s_ft, n_ft))}

  # The compiled pieces, so tests can check that no step size or budget recompiles them.
  end_of_step.jitted = {"ssl": ssl_j, "finetune": ft_j, "opt_init": opt_init_j}

  def predict(state, x):
    return _common.mask_logits(net.vit.logits(state["params"], x), state["seen"])

  hp = dict(num_classes=num_classes, vit=vit_config, vit_kwargs=vit_kw, model=model,
            batch_size=batch_size, lr=lr, finetune_lr_scale=finetune_lr_scale,
            weight_decay=weight_decay, betas=tuple(betas), layer_decay=layer_decay,
            mask_ratio=mask_ratio, ssl_fraction=ssl_fraction, epochs_per_step=epochs_per_step,
            respect_budget=False)  # a reference: spends the cumulative budget at every step
  return Learner(name="joint", init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)
