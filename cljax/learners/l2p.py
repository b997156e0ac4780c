"""L2P, Learning to Prompt (Wang et al., CVPR 2022; google-research/l2p).

A frozen pretrained ViT, a pool of M prompts each with a learned key, and a linear head:

* query: the frozen ViT's feature of the input (the reference's [CLS] token, ``embedding_key
  "cls"``; the cljax ViT has no class token, so its mean token after the final LayerNorm, the
  feature its own head reads);
* selection (``select_prompts``): the top N keys by cosine similarity to the query; in training
  the whole batch uses the N prompts chosen most often (the reference's ``batchwise_prompt``,
  ``models/prompt.py``), in prediction each example its own top N (so a prediction never depends
  on the rest of its batch);
* the N selected prompts (length L_p each) are put before the patch tokens
  (``ViTMAE.encode_prefixed``) and the head reads the mean of the prompt tokens' outputs
  (``vit_classifier "prompt"``);
* loss = cross-entropy − λ · Σ_selected cos(query, key) / B (the pull constraint); only prompts,
  keys and head train (``freeze_part = ["encoder", "embedding", "cls"]``).

Reference settings (``configs/cifar100_l2p.py``): M = 10, L_p = 5, N = 5 (a version of the config
uses 4), λ = 1, Adam lr 0.03 constant, gradient clipping at norm 1, the optimizer re-created each
task, ViT-B/16 pretrained on ImageNet-21k. No pretrained ViT exists offline here: experiments give
the MAE-pretrained ViT the DietCL config trains (``base_init.kind = "mae"``, ``init_params``).

Data: with ``replay=False`` the reference protocol: the step's labelled rows, the logits of
classes absent from the step masked (``train_mask``). With ``replay=True`` (default) the DietCL
paper's variant: an unlimited replay buffer of every labelled row so far (``memory_size``) with
limited gradient steps, logits over all seen classes, which worked better in that setting.

Budget, charged by tokens computed (:func:`step_cost`): a pass is the forward-backward of
``batch_size`` rows of the ViT's P patch tokens; a prompted sequence has P + N·L_p tokens (16 + 25
= 41 for ``vit_micro`` at the reference's N = L_p = 5), so its forward-backward costs
(P + N·L_p) / P passes, plus the query forward over the P patch tokens (1/3 pass, ``_distill``).
Linear in tokens: the patch embedding, projections and MLP are; attention's T² term is left out
(at width 32 and T = 41 it would add about 11 % to the prompted pass, so the charge is a little
low). Before issue 23 the prompted pass was charged as one pass whatever its length. ``update``
stores rows (0 passes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _distill, _vit
from cljax.learners.registry import register
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.ops.herding import normalise
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, apply_updates


class Prompts(NamedTuple):
  """L2P's trained parameters (the fields in the order of the sorted dict they replace, so the
  global-norm clipping sums the leaves in the same order).

  head: the linear head on the prompt tokens' mean, {"kernel": [D, K], "bias": [K]}.
  keys: [M, D] prompt keys (selection by cosine similarity to the query).
  prompts: [M, L_p, D] the prompt pool.
  """

  head: Any
  keys: jax.Array
  prompts: jax.Array


class State(NamedTuple):
  """L2P's state.

  frozen: the ViT's parameters (never trained).
  train: ``Prompts``, the trained parameters.
  seen: [K] bool, classes with a labelled row so far.
  rows: ``append`` store of the labelled rows trained on: every one so far (``replay``,
    capacity ``memory_size``) or the step's (capacity ``max_step_size``, emptied at its end).
  """

  frozen: Any
  train: Prompts
  seen: jax.Array
  rows: Any


def select_prompts(query: jax.Array, keys: jax.Array, top_k: int, batchwise: bool
                   ) -> tuple[jax.Array, jax.Array]:
  """L2P's prompt selection (google-research/l2p ``models/prompt.py``, ``Prompt.__call__``).

  Args:
    query: [B, D] query features; keys: [M, D] prompt keys.
    top_k: N, prompts per example.
    batchwise: every row gets the N prompts most often among the rows' own top N (ties: the
      lower prompt id), as the reference's ``batchwise_prompt``.

  Returns:
    (idx [B, N] int32 prompt ids, reduce_sim []: Σ over rows and selected keys of
    cos(query, key) / B, the pull constraint's similarity).
  """
  q, k = normalise(query), normalise(keys)
  sim = q @ k.T  # [B, M]
  _, idx = jax.lax.top_k(sim, top_k)
  if batchwise:
    m = keys.shape[0]
    counts = jnp.zeros((m,), jnp.int32).at[idx.reshape(-1)].add(1)
    _, major = jax.lax.top_k(counts, top_k)
    idx = jnp.broadcast_to(major, idx.shape)
  reduce_sim = jnp.sum(k[idx] * q[:, None, :]) / query.shape[0]
  return idx.astype(jnp.int32), reduce_sim


def step_cost(num_patches: int, top_k: int, prompt_length: int) -> float:
  """Passes one SGD step costs: the prompted forward-backward of num_patches + top_k ·
  prompt_length tokens, in passes of num_patches tokens, plus the query forward (1/3)."""
  return (num_patches + top_k * prompt_length) / num_patches + _distill.FORWARD_COST


@jax.jit
def update(state: State, batch: dict, key: jax.Array) -> tuple:
  """Stores the batch's labelled rows (0 passes)."""
  del key
  seen, rows = _distill.store_labelled(state.seen, state.rows, batch)
  return state._replace(seen=seen, rows=rows), contract.info()


@register("l2p", inputs=("model", "model_kwargs", "batch_size", "init_params",
                         "max_step_size"))
def l2p(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
        batch_size: int = 16, optimizer: str = "adam", lr: float = 0.03, accumulate: int = 1,
        pool_size: int = 10, prompt_length: int = 5,
        top_k: int = 5, pull: float = 1.0, clip_norm: float = 1.0, replay: bool = True,
        memory_size: int = 10000, epochs_per_step: float = 5.0, max_step_size: int = 4096,
        chunk: int = 8, init_params: Optional[dict] = None) -> Learner:
  """Builds L2P (see the module docstring).

  Args:
    num_classes: K (the head's size; unseen classes are masked).
    model, model_kwargs: a ViT of ``cljax.models`` (frozen; ``init_params`` = the pretrained one).
    batch_size: rows per SGD step (one pass).
    optimizer, lr, clip_norm: ``cljax.optim.build`` (the reference's Adam, lr constant; ``sgd``
      with momentum 0.9, no weight decay) after
      global-norm clipping (of the accumulated gradient with ``accumulate``); the optimizer is
      re-created every step (the reference's ``reinit_optimizer``).
    accumulate: micro-batches per optimizer step (``cljax.optim.accumulate_gradients``).
    pool_size, prompt_length, top_k: M, L_p, N.
    pull: λ of the pull constraint.
    replay, memory_size: train on every labelled row so far (a store of ``memory_size``) or, with
      ``replay=False``, on the step's labelled rows with the other classes' logits masked.
    epochs_per_step: SGD steps when ``end_of_step`` gets no budget, in epochs over its rows.
    max_step_size: the step store's capacity (``replay=False``).
    chunk: SGD steps per jitted call (a ``lax.scan``).
    init_params: the pretrained ViT (the encoder stays frozen at these parameters).
  """
  _distill.check_sizes(batch_size=batch_size, pool_size=pool_size, prompt_length=prompt_length,
                       top_k=top_k, memory_size=memory_size, max_step_size=max_step_size,
                       chunk=chunk)
  if top_k > pool_size:
    raise ValueError(f"top_k ({top_k}) must be <= pool_size ({pool_size})")
  net = _vit.vit_net("l2p", model, num_classes, model_kwargs)
  tx = optim.accumulate_gradients(
      optax.chain(optax.clip_by_global_norm(clip_norm), optim.build(optimizer, lr)), accumulate)
  store = buffers.get("append")

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_p, k_k, k_s = jax.random.split(key, 4)
    frozen = net.init(k_net, x.shape[1:], init_params)
    d = frozen["pos_embed"].shape[-1]
    train = Prompts(
        head={"kernel": jnp.zeros((d, num_classes), jnp.float32),
              "bias": jnp.zeros((num_classes,), jnp.float32)},
        keys=jax.random.uniform(k_k, (pool_size, d), jnp.float32, 0.0, 0.01),
        prompts=jax.random.uniform(k_p, (pool_size, prompt_length, d), jnp.float32, 0.0, 0.01))
    cap = memory_size if replay else max_step_size
    return State(frozen=frozen, train=train, seen=jnp.zeros((num_classes,), bool),
                 rows=store.init(k_s, cap, jax.ShapeDtypeStruct(x.shape[1:], jnp.float32),
                                 num_classes))

  def logits_of(frozen, train: Prompts, x, idx):
    """Logits [B, K] with the prompts idx [B, N] before the patch tokens."""
    prefix = train.prompts[idx].reshape(x.shape[0], top_k * prompt_length, -1)
    tokens, _ = net.call(frozen, x, "encode_prefixed", prefix)
    feat = tokens[:, :top_k * prompt_length].astype(jnp.float32).mean(1)
    return feat @ train.head["kernel"] + train.head["bias"]

  def step(carry, state: State, key, i, stop):
    """One SGD step on ``batch_size`` stored rows (carry (train, opt), data the state)."""
    del i, stop
    train, opt = carry
    s = store.sample(state.rows, key, batch_size)
    x, y, w = sharding.data_rows((s.x, s.y, s.weight))
    allowed = state.seen if replay else state.rows.class_count > 0
    query = jax.lax.stop_gradient(net.features(state.frozen, x))

    def loss_fn(p):
      idx, reduce_sim = select_prompts(query, p.keys, top_k, batchwise=True)
      logits = logits_of(state.frozen, p, x, idx)
      return cross_entropy(mask_logits(logits, allowed), y, w) - pull * reduce_sim

    loss, g = jax.value_and_grad(loss_fn)(train)
    train, opt = apply_updates(tx, train, opt, g)
    return (train, opt), loss[None]

  loop = Loop(step, chunk=chunk, unroll=False, accumulate=accumulate)
  opt_init = jax.jit(tx.init)
  clear = jax.jit(lambda s: s._replace(rows=append_store.clear(s.rows)))

  @jax.jit
  def predict(state: State, x):
    x = jnp.asarray(x, jnp.float32)
    idx, _ = select_prompts(net.features(state.frozen, x), state.train.keys, top_k,
                            batchwise=False)
    return mask_logits(logits_of(state.frozen, state.train, x, idx), state.seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """SGD on prompts, keys and head; spends at most ``budget`` passes (``step_cost`` each).
    With ``early_stop`` (its ``every`` in passes, converted to SGD steps of ``step_cost``),
    fewer when the held-out score stops improving, the best prompts, keys and head kept."""
    n_rows = int(state.rows.count)
    cost = step_cost(int(state.frozen["pos_embed"].shape[-2]), top_k, prompt_length)
    if budget is None:
      steps = contract.default_passes(epochs_per_step, n_rows, batch_size)
    else:
      steps = int(math.floor(budget / cost + 1e-9))
    steps = steps if n_rows else 0
    if early_stop is not None:
      early_stop = dataclasses.replace(early_stop,
                                       every=max(1, math.ceil(early_stop.every / cost)))
    (train, _), sums, stopped = loop.stopping(
        (state.train, opt_init(state.train)), state, key, steps, early_stop,
        lambda carry, x: predict(state._replace(train=carry[0]), x), progress=progress)
    state = state._replace(train=train)
    if not replay:
      state = clear(state)
    planned, steps = steps, (steps if stopped is None else stopped.passes)
    loss = sums[0] / steps if sums is not None else jnp.float32(jnp.nan)
    extra = early_stop_lib.extra(stopped, planned, cost)  # in passes, as every learner's
    return state, contract.info(steps * cost, loss, sgd_steps=jnp.float32(steps), **extra)

  return Learner("l2p", init, update, end_of_step, predict, early_stopping=True)
