"""GDumb (Prabhu, Torr, Dokania, ECCV 2020): a greedy class-balanced memory and nothing else.

Every incoming labelled example is offered to a fixed-capacity memory with GDumb's greedy
class-balancing sampler (``cljax.ops.buffers`` policy ``greedy``: admitted while its class holds
fewer than k // |Y| slots, evicting from a largest class when full; the policy's docstring cites
the paper's Sec. 3, drimpossible/GDumb ``src/dataloader.py`` 74-78 and the online form in
RaptorMai/online-continual-learning ``agents/gdumb.py`` 19-32). After each time step the model
is retrained *from its initialization* (a fresh optimizer too) on the memory only, spending exactly
the step's budget of forward-backward passes (the reference's ``train_mem``, same file 45-73,
retrains a fresh model for a number of epochs instead); its logits are masked to the classes
present in memory, in training and in prediction.

Regularisation (off by default): the DietCL paper runs its baselines with its reference's recipe
(wx-zhang/continual-learning-on-a-diet ``config/base.yaml`` lines 41-56: timm Mixup/CutMix with
label smoothing, RandomResizedCrop + flip, AdamW betas (0.9, 0.95), weight decay 0.05); the same
recipe (``cljax.learners._phases.Recipe``, the one DietCL uses) is applied to every memory batch
when ``mixup_alpha``/``cutmix_alpha``/``augment`` ask for it, with the soft-target CE over the
classes in memory.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _phases
from cljax.learners.registry import register
from cljax.ops import mixup as mixup_lib
from cljax.ops.losses import cross_entropy, mask_logits
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, classifier_step


class State(NamedTuple):
  """The state of GDumb.

  params: the network's parameters (a pure dict of ``cljax.models.pure.Net``), retrained from
    ``init_params`` at every step's end.
  opt: the optimizer state of ``params`` (fresh at every step's end).
  init_params: the initialization every step restarts from.
  mem: the ``greedy`` class-balanced memory of ``memory_size`` rows; the classes it holds are
    the ones trained on and predicted.
  """

  params: Any
  opt: Any
  init_params: Any
  mem: Any


def in_memory(state: State) -> jax.Array:
  """[K] bool, the classes with an example in memory."""
  return state.mem.class_count > 0


@jax.jit
def update(state: State, batch, key: jax.Array) -> tuple:
  """``update``: offers the batch's labelled rows to the memory (no training, 0 passes)."""
  del key
  _, lab = contract.masks(batch)
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  mem = buffers.get("greedy").insert(state.mem, jnp.asarray(batch["x"], jnp.float32), y, lab)
  return state._replace(mem=mem), contract.info()


def train_step(net: Net, tx: optax.GradientTransformation, batch_size: int, carry: tuple,
               data: State, key: jax.Array, recipe: Optional[_phases.Recipe] = None) -> tuple:
  """The ``Loop`` step: SGD on ``batch_size`` rows of the memory, logits masked to its classes
  (``recipe``: augmented and mixed first, soft-target CE)."""
  params, opt = carry
  k_s, k_r = jax.random.split(key)
  sample = buffers.get("greedy").sample(data.mem, k_s if recipe else key, batch_size)
  x, y, w = sharding.data_rows((sample.x, sample.y, sample.weight))
  seen = in_memory(data)
  if recipe is None:
    loss_fn = lambda p, logits: cross_entropy(mask_logits(logits, seen), y, w)
  else:
    mixed = recipe.batch(k_r, x, y, w, seen)
    x, w = mixed.x, mixed.weight
    loss_fn = lambda p, logits: mixup_lib.soft_cross_entropy(logits, mixed.targets, w, seen)
  params, opt, loss = classifier_step(net, tx, params, opt, x, w, loss_fn)
  return (params, opt), loss[None]


@register("gdumb", inputs=("model", "model_kwargs", "batch_size", "init_params"))
def gdumb(*, num_classes: int, model: str = "mlp", model_kwargs: Optional[dict] = None,
          optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
          weight_decay: float = 0.0, accumulate: int = 1, batch_size: int = 32,
          memory_size: int = 500,
          epochs_per_step: float = 10.0, chunk: int = 8,
          init_params: Optional[dict] = None, betas: tuple = (0.9, 0.999),
          mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0,
          switch_prob: float = 0.5, label_smoothing: float = 0.0, augment: bool = False,
          crop_scale: tuple = (0.08, 1.0), flip: bool = True) -> Learner:
  """Builds GDumb (see the module docstring).

  Args:
    num_classes: K, size of the output layer; classes absent from memory are masked.
    model, model_kwargs: a ``cljax.models`` name and its constructor options.
    optimizer, lr, momentum, weight_decay: ``cljax.optim.build``; a fresh optimizer every step.
    accumulate: micro-batches per optimizer step (``cljax.optim.accumulate_gradients``; each
      one pass of the budget).
    batch_size: examples per SGD step (one forward-backward pass of the budget).
    memory_size: capacity of the memory, in examples.
    epochs_per_step: passes (in epochs over the memory) when ``end_of_step`` gets no budget.
    chunk: SGD steps per jitted call (``cljax.train.loop.Loop``, unrolled).
    init_params: the initialization every step restarts from (e.g. an MAE-pretrained ViT)
      instead of a random one; same network and structure.
    betas: Adam's (β1, β2) (``adam``/``adamw``).
    mixup_alpha, cutmix_alpha, mixup_prob, switch_prob, label_smoothing, augment, crop_scale,
      flip: the DietCL reference's recipe on every memory batch (module docstring; all off by
      default: plain CE on the stored rows).
  """
  for k, v in (("batch_size", batch_size), ("memory_size", memory_size), ("chunk", chunk)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  tx = optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay,
                   betas=tuple(betas), accumulate=accumulate)
  recipe = _phases.Recipe(float(mixup_alpha), float(cutmix_alpha), float(mixup_prob),
                          float(switch_prob), float(label_smoothing), bool(augment),
                          tuple(crop_scale), (0.2, 1.0), bool(flip))
  if not (recipe.mixing or recipe.augment or label_smoothing):
    recipe = None
  net = Net.named(model, num_classes, **(model_kwargs or {}))
  memory = buffers.get("greedy")

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_mem = jax.random.split(key)
    params = net.init(k_net, x.shape[1:], init_params)
    return State(params=params, opt=tx.init(params), init_params=params,
                 mem=memory.init(k_mem, memory_size,
                                 jax.ShapeDtypeStruct(x.shape[1:], jnp.float32), num_classes))

  loop = Loop(lambda carry, data, key, i, stop: train_step(net, tx, batch_size, carry, data, key,
                                                          recipe), chunk=chunk, unroll=True,
              accumulate=accumulate)
  reset = jax.jit(lambda p: (p, tx.init(p)))

  @jax.jit
  def predict(state, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), in_memory(state))

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """Retrains from the initialization on memory for exactly ``budget`` passes (None: default;
    with ``early_stop``, fewer when the held-out score stops improving, the best model kept)."""
    passes = budget if budget is not None else contract.default_passes(
        epochs_per_step, int(state.mem.count), batch_size)
    carry, sums, stopped = loop.stopping(
        reset(state.init_params), state, key, passes, early_stop,
        lambda carry, x: predict(state._replace(params=carry[0]), x), progress=progress)
    spent = passes if stopped is None else stopped.passes
    loss = sums[0] / spent if sums is not None else jnp.float32(jnp.nan)
    return state._replace(params=carry[0], opt=carry[1]), contract.info(
        spent, loss, **early_stop_lib.extra(stopped, passes))

  return Learner(name="gdumb", init=init, update=update, end_of_step=end_of_step,
                 predict=predict, early_stopping=True)
