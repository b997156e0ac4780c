"""SIESTA: wake/sleep continual learning on compressed mid-network features (Harun, Gallardo,
Hayes, Kemker, Kanan, "SIESTA: Efficient Online Continual Learning with Sleep", TMLR 2023;
reference yousuf907/SIESTA at ae92431).

A frozen bottom G maps an image to a feature map [H, W, D] (here: the stream's inputs are already
G's maps, e.g. EfficientNet-Lite0 up to blocks.10 from ``cljax.data.features``, as REMIND's
``remind_pretrained`` config does; the reference uses MobileNetV3 up to ``model.features.7``).
Every D-vector is product-quantized (``cljax.ops.pq`` codebook trained on the base set; the
reference adds an OPQ rotation, not done here) and the codes [H, W, M] uint8 are kept in a buffer
that evicts a random item of its largest class when full (``SIESTAModel.py`` lines 127-177,
``update_buffer``; REMIND's ``largest_class`` policy). The plastic top F (the remaining blocks,
head and a cosine classifier) only ever sees decoded maps.

* Wake (``update``, no backward pass): the batch's maps are encoded and stored; their decoded maps
  go through F (eval mode) to the penultimate features h [B, 1280]; per-class running means of h
  are updated (``utils.py`` lines 119-147, ``RunningMean``), and the classifier rows of the
  batch's classes are set to their means with bias 1 (``SIESTAModel.py`` lines 179-187,
  ``update_new_nodes``).
* Sleep (``end_of_step``, and every ``sleep_every`` examples when > 0): ``budget`` SGD steps
  (one pass each, ``batch_size`` rows) of F on decoded buffer items drawn class-balanced (each
  batch goes round the classes the buffer holds, from a random class, one item of each, items
  uniform within the class; ``SIESTAModel.py`` lines 303-330, ``uniform_balanced``), with
  cross-entropy, SGD momentum 0.9, weight decay 1e-5 and a one-cycle learning rate peaking at
  ``sleep_lr`` (torch ``OneCycleLR`` defaults: 30% cosine warm-up from peak/25, cosine decay to
  peak/25/1e4; ``SIESTAModel.py`` lines 895-975, ``memory_consolidate``). Steps go through the one
  training loop (``cljax.train.loop.Loop``).

Classifier: the reference's ``CosineLinear`` with bias and scale σ (``mobilenet_modified.py``
lines 373-409): logits = σ · cos([h, 1], [w_k, b_k]), σ learnable, starting at 1; here F's ``fc``
kernel and bias are w and b.

Differences from the reference, on purpose: no OPQ rotation; one learning rate for all of F (the
reference decays it by 0.99 per parameter tensor from the top, ``get_layerwise_params``); constant
momentum (``OneCycleLR`` also cycles momentum 0.85-0.95); sleeps at step ends or every
``sleep_every`` examples instead of every other class increment; the base initialisation is the
experiment's (F base-trained on step 0, ``cljax.train.pretrain.BaseInit``) instead of SwAV.

State: :class:`State`. ``predict`` encodes and decodes x, then runs F in eval mode.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import analytic
from cljax.ops import buffers
from cljax.ops import pq
from cljax.ops import pq_maps
from cljax.ops import sharding
from cljax.ops.buffers import _base as slots
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop
from cljax.train.loop import classifier_step

CODES = buffers.get("largest_class")  # SIESTA's buffer: evict a random item of the largest class


class CosineTop(nnx.Module):
  """F with the reference's cosine classifier: logits = σ · cos([h, 1], [w_k, b_k]) with h =
  ``f.features(x)`` and w, b = ``f.fc``'s kernel columns and bias."""

  def __init__(self, f: nnx.Module):
    self.f = f
    self.sigma = nnx.Param(jnp.ones((), jnp.float32))

  def features(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.f.features(x, use_running_average, mask)

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    h = self.features(x, use_running_average, mask)
    return cosine_logits(h, self.f.fc.kernel[...], self.f.fc.bias[...], self.sigma[...])


def cosine_logits(h: jax.Array, kernel: jax.Array, bias: jax.Array, sigma) -> jax.Array:
  """[B, K] σ · cos([h, 1], [w_k, b_k]) for h [B, F], kernel [F, K], bias [K] (eps 1e-8)."""
  x = jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
  w = jnp.concatenate([kernel, bias[None, :]], axis=0)  # [F + 1, K]
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-8)
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-8)
  return sigma * jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST)


class State(NamedTuple):
  """SIESTA's state (K classes, N buffer slots, maps [H, W, D], codebook [M, C, D / M]).

  params: :class:`CosineTop`'s pure dict (F's weights, running statistics, σ).
  opt: the sleep's SGD state (momentum), shaped like ``params``.
  buffer: ``largest_class`` slot state over codes [N, H, W, M] uint8.
  sums: [K, F] float32 sums of each class's penultimate features (wake); counts: [K] int32.
  codebook: [M, C, D / M] float32, fixed.
  since_sleep: [] int32 examples woken on since the last sleep.
  """

  params: Any
  opt: Any
  buffer: Any
  sums: jax.Array
  counts: jax.Array
  codebook: jax.Array
  since_sleep: jax.Array


def _fc(params: dict) -> dict:
  return params["f"]["fc"]


def wake(state: State, batch, key, *, net: Net) -> tuple:
  """Encode and store the batch, update the running class means and set the classifier rows of
  the batch's classes to them (bias 1)."""
  del key
  _, use = contract.masks(batch)
  maps = pq_maps.check_maps(batch["x"], state.codebook.shape)
  y = batch["y"].astype(jnp.int32)
  codes = pq_maps.encode(state.codebook, maps)
  buffer = CODES.insert(state.buffer, codes, y, use)
  h = net.features(state.params, pq_maps.decode(state.codebook, codes))
  h, y, use = sharding.replicate((h, y, use))
  sums, counts = analytic.class_sums(state.sums, state.counts, h, y, use)
  k = counts.shape[0]
  present = (jax.nn.one_hot(y, k) * use[:, None]).sum(0) > 0
  means = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
  fc = _fc(state.params)
  new_fc = dict(fc, kernel=jnp.where(present[None, :], means.T, fc["kernel"]),
                bias=jnp.where(present, 1.0, fc["bias"]))
  params = dict(state.params, f=dict(state.params["f"], fc=new_fc))
  n = use.sum().astype(jnp.int32)
  return (state._replace(params=params, buffer=buffer, sums=sums, counts=counts,
                         since_sleep=state.since_sleep + n),
          contract.info(examples=n, buffer_count=buffer.count))


def one_cycle(i: jax.Array, stop: jax.Array, peak: float) -> jax.Array:
  """torch ``OneCycleLR(max_lr=peak, total_steps=stop)`` at step i (defaults: pct_start 0.3,
  cosine annealing, div_factor 25, final_div_factor 1e4), traced i and stop."""
  start, low = peak / 25.0, peak / 25.0 / 1e4
  i = i.astype(jnp.float32)
  total = jnp.maximum(stop.astype(jnp.float32), 1.0)
  end1 = jnp.maximum(0.3 * total - 1.0, 1.0)
  end2 = jnp.maximum(total - 1.0, end1 + 1.0)
  anneal = lambda a, b, p: b + (a - b) / 2.0 * (jnp.cos(jnp.pi * jnp.clip(p, 0.0, 1.0)) + 1.0)
  return jnp.where(i <= end1, anneal(start, peak, i / end1),
                   anneal(peak, low, (i - end1) / (end2 - end1)))


def balanced_rows(buffer, key: jax.Array, n: int) -> tuple:
  """n buffer slots [n] int32, class-balanced: round the classes the buffer holds from a random
  one (each class once per round), a uniform item of each; all slot 0 while empty."""
  k = buffer.class_count.shape[0]
  present = buffer.class_count > 0
  p = jnp.maximum(present.sum(), 1)
  order = jnp.argsort(~present, stable=True)  # the classes held come first
  k_off, k_rows = jax.random.split(key)
  offset = jax.random.randint(k_off, (), 0, k)
  cls = order[(offset + jnp.arange(n)) % p]
  rows = jax.vmap(lambda c, kk: slots.random_slot_of_class(buffer, c, kk))(
      cls, jax.random.split(k_rows, n))
  return rows


def sleep_step(carry: tuple, data, key: jax.Array, i: jax.Array, stop: jax.Array, *, net: Net,
               tx, batch_size: int, peak_lr: float) -> tuple:
  """One rehearsal step (a ``Loop`` step): a class-balanced batch of decoded items, one SGD step
  of F in train mode at the one-cycle rate."""
  params, opt = carry
  buffer, codebook = data
  rows = balanced_rows(buffer, key, batch_size)
  x = pq_maps.decode(codebook, sharding.take_rows(buffer.x, rows))
  y = buffer.y[rows]
  w = jnp.where(buffer.count > 0, 1.0, 0.0) * jnp.ones((batch_size,), jnp.float32)

  def ce(p, logits):
    del p
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, jnp.clip(y, 0)[:, None], axis=1)[:, 0]
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1.0)

  params, opt, loss = classifier_step(net, tx, params, opt, x, w, ce,
                                      lr=one_cycle(i, stop, peak_lr))
  return (params, opt), jnp.stack([loss])


def predict(state: State, x, *, net: Net) -> jax.Array:
  """Logits [B, K] of F (eval mode) on the encoded-then-decoded maps of x."""
  maps = pq_maps.check_maps(x, state.codebook.shape)
  return net.apply(state.params, pq_maps.decode(state.codebook, pq_maps.encode(state.codebook,
                                                                                maps)))


def _base_parts(base, num_subvectors, num_centroids: int, pq_iters: int, seed: int) -> tuple:
  """(F module, codebook, base maps, base labels) of a base initialisation whose network is F
  itself and whose inputs are G's maps (the ``features`` data set of a spatial layer)."""
  x = np.asarray(base.x, np.float32)
  y = np.asarray(base.y, np.int32)
  if x.ndim != 4 or len(x) == 0 or (y < 0).any():
    raise ValueError(f"siesta: the base set must be labelled G maps [N, H, W, D], got inputs "
                     f"{x.shape}; use a features data set of a spatial layer (e.g. blocks.10)")
  f = base.net.module(base.params, x.shape[1:])
  d = x.shape[-1]
  m = num_subvectors or max(1, d // 16)
  codebook = pq.train(jax.random.key(seed), jnp.asarray(x.reshape(-1, d)), int(m),
                      int(num_centroids), iters=int(pq_iters))
  return f, codebook, x, y


@register("siesta", inputs=("base", "batch_size"))
def siesta(*, num_classes: int,
           base: Any = None,
           f_module: Optional[nnx.Module] = None,
           codebook: Any = None,
           base_features: Any = None,
           base_labels: Any = None,
           buffer_capacity: int = 10_000,
           buffer_bytes: int = 0,
           num_subvectors: Optional[int] = None,
           num_centroids: int = 256,
           pq_iters: int = 25,
           seed: int = 0,
           batch_size: int = 128,
           sleep_passes: int = 100,
           sleep_every: int = 0,
           sleep_lr: float = 0.2,
           optimizer: str = "sgd",
           momentum: float = 0.9,
           weight_decay: float = 1e-5,
           prefill_buffer: bool = True,
           chunk: int = 1) -> Learner:
  """Builds SIESTA (module docstring).

  Args:
    num_classes: K, F's output size.
    base: a base initialisation whose network is F and whose inputs are G's maps (the runner
      passes it); gives F, the codebook (trained here) and the base set. Or give ``f_module``
      (with an ``fc`` and ``features``), ``codebook`` [M, C, D / M] and optional
      ``base_features`` [N, H, W, D] / ``base_labels`` yourself.
    buffer_capacity: items kept (reference ImageNet: 959,665); ``buffer_bytes`` > 0 instead sizes
      it to that many bytes of codes once the codebook is paid for (as REMIND's).
    num_subvectors, num_centroids, pq_iters, seed: the PQ codebook trained on the base maps
      (M default D // 16; the reference: 8 codebooks of 256 on 80-d maps).
    batch_size: rows of one sleep step (one pass); reference 512 (``train.sh``), 128 default in
      ``SIESTAModel``.
    sleep_passes: steps of a sleep when ``end_of_step`` gets no budget, and of the sleeps
      triggered by ``sleep_every``.
    sleep_every: also sleep after every this many woken examples (0: at step ends only).
    sleep_lr: the one-cycle peak learning rate (``SIESTAModel`` default 0.2).
    optimizer, momentum, weight_decay: the sleep's direction (``cljax.optim.direction``; the
      reference's SGD, torch semantics), times the one-cycle lr.
    prefill_buffer: store the base set in the buffer in ``init`` (False when the stream itself
      starts with the base set, which would otherwise be stored twice).
    chunk: sleep steps per jitted call of the Loop.
  """
  if base is not None:
    if f_module is not None or codebook is not None:
      raise ValueError("siesta: give either base or f_module and codebook, not both")
    f_module, codebook, base_features, base_labels = _base_parts(
        base, num_subvectors, num_centroids, pq_iters, seed)
  if f_module is None or codebook is None:
    raise ValueError("siesta needs base=... (F and G's base maps) or f_module and codebook")
  for name, v in (("batch_size", batch_size), ("sleep_passes", sleep_passes)):
    if int(v) < 1:
      raise ValueError(f"siesta: {name} must be >= 1, got {v}")
  if int(sleep_every) < 0:
    raise ValueError(f"siesta: sleep_every must be >= 0 (0: step ends only), got {sleep_every}")
  top = CosineTop(nnx.merge(*nnx.split(f_module), copy=True))
  net = Net.of(top, "SIESTA's F (cosine classifier)")
  params0 = net.fixed_params
  codebook = jnp.asarray(codebook, jnp.float32)
  tx = optim.direction(optimizer, momentum=momentum, weight_decay=weight_decay)
  loop = Loop(functools.partial(sleep_step, net=net, tx=tx, batch_size=int(batch_size),
                                peak_lr=float(sleep_lr)), chunk=int(chunk))
  wake_jit = jax.jit(functools.partial(wake, net=net))

  def init(key, example_batch):
    maps = jax.eval_shape(lambda a: pq_maps.check_maps(a, codebook.shape),
                          jnp.asarray(example_batch["x"]))
    _, h, w, _ = maps.shape
    out = jax.eval_shape(net.apply, params0, maps)
    if out.shape[-1] != num_classes:
      raise ValueError(f"siesta: F outputs {out.shape[-1]} classes, num_classes is {num_classes}")
    feat = jax.eval_shape(net.features, params0, maps).shape[-1]
    params = jax.tree.map(jnp.array, params0)  # a copy: the state may be donated
    cap = pq_maps.capacity_for(buffer_capacity, buffer_bytes, codebook.shape, h, w)
    state = State(params=params, opt=tx.init(params),
                  buffer=CODES.init(key, cap, jax.ShapeDtypeStruct((h, w, codebook.shape[0]),
                                                                   jnp.uint8), num_classes),
                  sums=jnp.zeros((num_classes, feat), jnp.float32),
                  counts=jnp.zeros((num_classes,), jnp.int32), codebook=jnp.array(codebook),
                  since_sleep=jnp.zeros((), jnp.int32))
    if base_features is not None and prefill_buffer:
      state = _prefill(state, np.asarray(base_features, np.float32),
                       np.asarray(base_labels, np.int32))
    return state

  predict_jit = jax.jit(functools.partial(predict, net=net))

  def sleep(state: State, key, passes: int, progress=None, early_stop=None) -> tuple:
    """(state, passes spent, mean loss, early-stopping extras) of a sleep of ``passes``."""
    if passes <= 0:
      none = (early_stop_lib.extra(early_stop_lib.Stopped(0, 0, float("nan"), 0, False), 0)
              if early_stop is not None else {})
      return state._replace(since_sleep=jnp.zeros((), jnp.int32)), 0.0, jnp.nan, none
    (params, opt), sums, stopped = loop.stopping(
        (state.params, state.opt), (state.buffer, state.codebook), key, passes, early_stop,
        lambda carry, x: predict_jit(state._replace(params=carry[0]), x), progress=progress)
    spent = passes if stopped is None else stopped.passes
    return (state._replace(params=params, opt=opt, since_sleep=jnp.zeros((), jnp.int32)),
            float(spent), sums[0] / spent, early_stop_lib.extra(stopped, passes))

  def update(state, batch, key):
    state, info = wake_jit(state, batch, key)
    if sleep_every and int(state.since_sleep) >= int(sleep_every):
      state, passes, loss, _ = sleep(state, jax.random.fold_in(key, 1), int(sleep_passes))
      info = contract.info(passes, loss, **info.extra)
    return state, info

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """A sleep of ``budget`` passes (``sleep_passes`` when None); with ``early_stop``, shorter
    when the held-out score stops improving (the best model kept; the mid-step sleeps of
    ``sleep_every`` always run whole)."""
    passes = int(sleep_passes) if budget is None else int(budget)
    state, spent, loss, extra = sleep(state, key, passes, progress, early_stop)
    return state, contract.info(spent, loss, buffer_count=state.buffer.count, **extra)

  return Learner("siesta", init, update, end_of_step, predict_jit, early_stopping=True)


@functools.partial(jax.jit, donate_argnums=0)
def _insert_chunk(state: State, maps, labels, mask) -> State:
  return state._replace(buffer=CODES.insert(state.buffer, pq_maps.encode(state.codebook, maps),
                                            labels, mask))


def _prefill(state: State, maps: np.ndarray, labels: np.ndarray, chunk: int = 512) -> State:
  """The base maps encoded and stored, ``chunk`` at a time (the last chunk padded and masked)."""
  for s in range(0, len(labels), chunk):
    f, y = maps[s:s + chunk], labels[s:s + chunk]
    pad = chunk - len(y)
    mask = np.arange(chunk) < len(y)
    if pad:
      f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), np.float32)])
      y = np.concatenate([y, np.zeros((pad,), np.int32)])
    state = _insert_chunk(state, jnp.asarray(f), jnp.asarray(y), jnp.asarray(mask))
  return state
