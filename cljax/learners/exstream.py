"""ExStream: streaming learning from a buffer of merged per-class centroids (Hayes et al. 2019).

A classifier head on feature vectors (``batch["x"]`` [B, d] directly, or the output of an optional
frozen ``backbone`` applied inside jit) is trained by rehearsal from a fixed-capacity buffer of c
items per class (a ``cljax.ops.buffers`` policy: ``exstream`` by default; ``reservoir``,
``queue``, ``kmeans``, ``clustream`` and ``hpstream`` are the baselines of the paper, at equal
memory K*c items; the two stream-clustering ones store 2d + 3 numbers per item instead of d + 1).
Reference code: tyler-hayes/ExStream (``ExStream.py``: the class buffers
``_stream_clustering_class_buffers`` lines 222-269, the epoch over the buffer after every example
``_consolidate_one_epoch`` lines 137-170 and ``fit`` lines 96-115, the MLP lines 59-94).

Replay modes:

* ``full_epoch`` (the reference): after every new example is inserted, one epoch over the whole
  buffer in shuffled mini-batches of ``batch_size``. As in the reference, the epoch has
  ceil(N / batch_size) mini-batches over the N filled slots, all of exactly ``batch_size`` items
  (the last one overlaps the previous; a single batch of N items when N < batch_size), and no
  training happens while the buffer holds at most one item. Shapes stay fixed: the filled slots are
  shuffled to the front of the K*c slots and the dynamic number of mini-batches runs in a while
  loop, with a row mask when N < batch_size. ``epoch_per="batch"`` inserts the whole incoming
  batch first and runs one epoch per update instead (cheaper; not the reference).
* ``sampled``: one SGD step per update on the incoming labelled rows plus ``replay_size`` buffer
  items drawn uniformly without replacement from the filled slots (before the batch is inserted, so
  the step does not see the new rows twice); then the batch is inserted.
* ``none``: fine-tuning: one step per update on the incoming rows only; the buffer is not used.

Centroids are replayed as ordinary samples with unweighted cross-entropy, like the reference; with
``weighted_loss=True`` each item's loss is weighted by its buffer weight (examples it summarises).

Heads: ``mlp`` = the reference MLP (:class:`cljax.models.heads.ExStreamMLP`), Adam lr 2e-3, batch
100; ``linear`` = a linear layer, SGD lr 0.01, momentum 0.9, weight decay 1e-4 (added to the
gradient, PyTorch-style). Features are L2-normalised before buffering (the reference normalises
its data set up front), so merges average unit vectors and the head trains on the merged centroid as
stored.

``passes`` counts SGD mini-batch steps (forward-backward passes of one training batch).
Rows with ``valid`` False are ignored; rows with ``labeled`` False are neither trained on nor
inserted (ExStream needs a label to choose the class buffer). The learner state is a
:class:`State`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models import heads
from cljax.ops import buffers

_REPLAYS = ("full_epoch", "sampled", "none")
_HEADS = ("mlp", "linear")
BUFFERS = ("exstream", "reservoir", "queue", "kmeans", "clustream", "hpstream")


class State(NamedTuple):
  """ExStream's learner state: K classes, c items per class, d feature dimensions.

  params: the head's ``nnx.Param`` state (an ``nnx.State``).
  batch_stats: the head's ``nnx.BatchStat`` state (empty for the MLP and linear heads here).
  opt: the optax state of the head's optimiser (Adam for ``mlp``, SGD with momentum for
    ``linear``).
  buffer: the ``buffer`` policy's state (``cljax.ops.buffers``) over K*c items of [d] float32
    features (L2-normalised unless ``l2_normalize`` is False).
  seen: [] int32 valid, labelled examples offered so far.
  """

  params: Any
  batch_stats: Any
  opt: Any
  buffer: Any
  seen: jax.Array


def features(x: jax.Array, *, backbone: Optional[Callable], l2_normalize: bool) -> jax.Array:
  """[B, d] float32 features of inputs x [B, ...]: flattened, through the frozen ``backbone`` if
  any (under ``stop_gradient``), L2-normalised if ``l2_normalize``."""
  f = x if backbone is None else jax.lax.stop_gradient(backbone(x))
  f = f.reshape(f.shape[0], -1).astype(jnp.float32)
  return heads.l2_normalize(f) if l2_normalize else f


def make_head(d: int, rngs: nnx.Rngs, *, head: str, num_classes: int, hidden: Sequence[int],
              dropout: float) -> nnx.Module:
  """The classifier head on [B, d] features: the reference MLP or a linear layer."""
  if head == "mlp":
    return heads.ExStreamMLP(d, num_classes, hidden=tuple(hidden), dropout=dropout,
                             l2_normalize=False, rngs=rngs)
  return heads.LinearHead(d, num_classes, l2_normalize=False, rngs=rngs)


def optimizer(head: str, lr: Optional[float],
              weight_decay: Optional[float]) -> optax.GradientTransformation:
  """The head's optimiser: Adam (lr 2e-3, decay 0) for ``mlp``, SGD with momentum 0.9 (lr 0.01,
  decay 1e-4) for ``linear``; None takes those defaults. The decay is PyTorch's: added to the
  gradient before the optimiser's own transform."""
  if head == "mlp":
    tx = optax.adam(2e-3 if lr is None else lr)
    weight_decay = 0.0 if weight_decay is None else weight_decay
  else:
    tx = optax.sgd(0.01 if lr is None else lr, momentum=0.9)
    weight_decay = 1e-4 if weight_decay is None else weight_decay
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def head_graphdef(d: int, *, make_head: Callable) -> nnx.GraphDef:
  """The head's static structure for d features, built abstractly (tracing allocates nothing)."""
  return nnx.split(nnx.eval_shape(lambda: make_head(d, nnx.Rngs(0))), nnx.Param,
                   nnx.BatchStat)[0]


def init_state(key: jax.Array, x: jax.Array, *, features: Callable, make_head: Callable, tx,
               buf: buffers.Policy, slots: int, num_classes: int) -> State:
  """A fresh :class:`State` for inputs like x [B, ...]; ``key`` seeds the head and the buffer."""
  f = features(x)
  d = f.shape[-1]
  k_model, k_buf = jax.random.split(key)
  _, params, stats = nnx.split(make_head(d, nnx.Rngs(k_model)), nnx.Param, nnx.BatchStat)
  return State(params=params, batch_stats=stats, opt=tx.init(params),
               buffer=buf.init(k_buf, slots, jax.ShapeDtypeStruct((d,), jnp.float32),
                               num_classes),
               seen=jnp.zeros((), jnp.int32))


def sgd_step(gd: nnx.GraphDef, params, stats, opt, x, y, w, m, key, *, tx,
             weighted_loss: bool) -> tuple:
  """One step on rows ``x`` [n, d], ``y`` [n], weights ``w`` [n], mask ``m`` [n]; ``key`` draws
  the dropout. Returns (params, batch_stats, opt, loss)."""

  def loss_fn(p):
    model = nnx.merge(gd, p, stats, copy=True)
    logits = model(x, train=True, mask=m, dropout_key=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    wt = m.astype(jnp.float32) * (w if weighted_loss else 1.0)
    loss = jnp.sum(ce * wt) / jnp.maximum(jnp.sum(wt), 1e-12)
    return loss, nnx.state(model, nnx.BatchStat)

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), new_stats, opt, loss


def filled_first(bm: jax.Array, key: jax.Array) -> jax.Array:
  """A random order of the K*c slots with the filled ones (``bm`` [K*c] bool, in random order)
  first."""
  # One sort of random 31-bit keys (empty slots keyed above every filled one); ties between
  # filled slots have probability ~(K*c)^2 / 2^32, and a permutation would cost several sorts.
  bits = jax.lax.shift_right_logical(jax.random.bits(key, bm.shape, jnp.uint32), jnp.uint32(1))
  return jnp.argsort(jnp.where(bm, bits, jnp.uint32(0xFFFFFFFF))).astype(jnp.int32)


def epoch(gd, model_state: tuple, buffer_state, key, do, *, buf: buffers.Policy,
          batch_size: int, sgd: Callable) -> tuple:
  """One reference epoch over the buffer if ``do`` (module docstring); ``sgd`` is
  :func:`sgd_step` with its settings bound. Returns (model_state, passes, loss_sum)."""
  bx, by, bw, bm = buf.contents(buffer_state)
  # A buffer smaller than a mini-batch never fills one: a static batch of K*c rows gives the
  # same result (rows past N are masked either way) for less compute.
  bs = min(batch_size, bm.shape[0])
  n = jnp.sum(bm).astype(jnp.int32)
  k_perm, k_drop = jax.random.split(key)
  order = jnp.concatenate([filled_first(bm, k_perm), jnp.zeros((bs,), jnp.int32)])
  n_batches = jnp.where(do & (n > 1), (n + bs - 1) // bs, 0)

  def body(t, carry):
    params, stats, opt, loss_sum = carry
    start = jnp.minimum(t * bs, jnp.maximum(n - bs, 0))
    idx = jax.lax.dynamic_slice(order, (start,), (bs,))
    rows = start + jnp.arange(bs) < n
    params, stats, opt, loss = sgd(gd, params, stats, opt, bx[idx], by[idx], bw[idx], rows,
                                   jax.random.fold_in(k_drop, t))
    return params, stats, opt, loss_sum + loss

  params, stats, opt, loss_sum = jax.lax.fori_loop(0, n_batches, body,
                                                   (*model_state, jnp.float32(0)))
  return (params, stats, opt), n_batches, loss_sum


# Training of one update, per replay mode: (gd, model_state, buffer_state, f [B, d], y [B],
# act [B], key) -> (model_state, buffer_state, passes, loss_sum).


def train_epoch_per_example(gd, model_state, buffer_state, f, y, act, key, *,
                            buf: buffers.Policy, epoch: Callable) -> tuple:
  """``full_epoch`` (the reference): insert each row, then an epoch over the buffer."""

  def row(carry, inp):
    model_state, buffer_state = carry
    x_r, y_r, a_r, k_r = inp
    buffer_state = buf.insert(buffer_state, x_r[None], y_r[None], a_r[None])
    model_state, nb, ls = epoch(gd, model_state, buffer_state, k_r, a_r)
    return (model_state, buffer_state), (nb, ls)

  keys = jax.random.split(key, y.shape[0])
  (model_state, buffer_state), (nbs, losses) = jax.lax.scan(
      row, (model_state, buffer_state), (f, y, act, keys))
  return model_state, buffer_state, jnp.sum(nbs), jnp.sum(losses)


def train_epoch_per_batch(gd, model_state, buffer_state, f, y, act, key, *, buf: buffers.Policy,
                          epoch: Callable) -> tuple:
  """``full_epoch`` with ``epoch_per="batch"``: insert the batch, then one epoch."""
  buffer_state = buf.insert(buffer_state, f, y, act)
  model_state, passes, loss_sum = epoch(gd, model_state, buffer_state, key, jnp.any(act))
  return model_state, buffer_state, passes, loss_sum


def train_one_step(gd, model_state, buffer_state, f, y, act, key, *, buf: buffers.Policy,
                   sgd: Callable, replay_size: int, insert: bool) -> tuple:
  """One step on the batch plus ``replay_size`` distinct buffer items, then the batch inserted
  if ``insert``: ``sampled`` (r and insert) or ``none`` (0 and no insert: fine-tuning)."""
  r = replay_size
  k_sel, k_drop = jax.random.split(key)
  if r > 0:
    # r distinct items drawn uniformly from the filled slots; rows past the filled count
    # (a buffer holding fewer than r items) are masked, so no item is replayed twice.
    rep = buf.sample(buffer_state, k_sel, r, distinct=True)
    n = jnp.sum(buf.contents(buffer_state).mask)
    x_tr = jnp.concatenate([f, rep.x])
    y_tr = jnp.concatenate([y, rep.y])
    w_tr = jnp.concatenate([jnp.ones(y.shape, jnp.float32), rep.weight])
    m_tr = jnp.concatenate([act, jnp.arange(r) < n])
  else:
    x_tr, y_tr, w_tr, m_tr = f, y, jnp.ones(y.shape, jnp.float32), act
  do = jnp.any(m_tr)

  def step(ms):
    params, stats, opt, loss = sgd(gd, *ms, x_tr, y_tr, w_tr, m_tr, k_drop)
    return (params, stats, opt), loss

  model_state, loss_sum = jax.lax.cond(do, step, lambda ms: (ms, jnp.float32(0)), model_state)
  if insert:
    buffer_state = buf.insert(buffer_state, f, y, act)
  return model_state, buffer_state, do.astype(jnp.int32), loss_sum


def update(state: State, batch, key, *, features: Callable, graphdef: Callable,
           buf: buffers.Policy, train: Callable) -> tuple:
  """ExStream's ``update``: features, then ``train`` (one of the ``train_*`` functions above,
  settings bound) on the valid, labelled rows."""
  f = features(batch["x"])
  _, act = contract.masks(batch)
  y = jnp.where(act, batch["y"].astype(jnp.int32), 0)
  (params, stats, opt), buffer_state, passes, loss_sum = train(
      graphdef(f.shape[-1]), (state.params, state.batch_stats, state.opt), state.buffer, f, y,
      act, key)
  bm = buf.contents(buffer_state).mask
  new_state = State(params=params, batch_stats=stats, opt=opt, buffer=buffer_state,
                    seen=state.seen + jnp.sum(act).astype(jnp.int32))
  loss = jnp.where(passes > 0, loss_sum / jnp.maximum(passes, 1).astype(jnp.float32), jnp.nan)
  return new_state, contract.info(passes, loss, buffer_items=jnp.sum(bm).astype(jnp.int32))


def predict(state: State, x, *, features: Callable, graphdef: Callable) -> jax.Array:
  """Logits [B, K] of the head in eval mode."""
  f = features(x)
  model = nnx.merge(graphdef(f.shape[-1]), state.params, state.batch_stats)
  return model(f, train=False)


@register("exstream", inputs=("backbone",))
def exstream(*, num_classes: int,
             capacity: int = 8,
             buffer: str = "exstream",
             replay: str = "full_epoch",
             head: str = "mlp",
             batch_size: int = 100,
             replay_size: int = 99,
             epoch_per: str = "example",
             lr: Optional[float] = None,
             weight_decay: Optional[float] = None,
             weighted_loss: bool = False,
             hidden: Sequence[int] = (350, 300),
             dropout: float = 0.25,
             l2_normalize: bool = True,
             backbone: Optional[Callable[[jax.Array], jax.Array]] = None,
             donate: bool = False) -> Learner:
  """Builds the ExStream learner.

  Args:
    num_classes: K, the fixed number of output classes.
    capacity: c, buffer items per class (total memory K*c items for every buffer kind).
    buffer: ``exstream`` | ``reservoir`` | ``queue`` | ``kmeans`` | ``clustream`` | ``hpstream``.
    replay: ``full_epoch`` (reference) | ``sampled`` | ``none`` (fine-tuning baseline).
    head: ``mlp`` (reference MLP, Adam) | ``linear`` (SGD with momentum).
    batch_size: mini-batch size of the full-epoch replay (reference 100).
    replay_size: r, buffer items per step in ``sampled`` mode (default 99: one new example plus r
      makes the reference batch of 100).
    epoch_per: ``example`` (reference: an epoch after every inserted example) or ``batch``
      (one epoch after inserting the whole update batch).
    lr: learning rate; default 2e-3 (mlp) or 0.01 (linear).
    weight_decay: default 0 (mlp, as the reference) or 1e-4 (linear).
    weighted_loss: weight each buffer item's loss by its buffer weight.
    hidden: MLP hidden widths (reference (350, 300)).
    dropout: MLP dropout rate (reference 0.25).
    l2_normalize: L2-normalise features before buffering and prediction.
    backbone: optional frozen feature extractor ``x -> [B, d]``, called inside jit under
      ``stop_gradient``.
    donate: donate the state to ``update`` (the caller must not reuse the old state). Saves the
      copy of the whole buffer per update in ``full_epoch`` mode; in ``sampled`` mode XLA (jax 0.10,
      CPU) schedules the replay gather after the in-place insert and copies the buffer twice, so
      donation does not help there (measured; see notes/exstream.md).
  """
  if buffer not in BUFFERS:
    raise ValueError(f"unknown buffer {buffer!r}; valid: {list(BUFFERS)}")
  if replay not in _REPLAYS:
    raise ValueError(f"unknown replay {replay!r}; valid: {list(_REPLAYS)}")
  if head not in _HEADS:
    raise ValueError(f"unknown head {head!r}; valid: {list(_HEADS)}")
  if epoch_per not in ("example", "batch"):
    raise ValueError(f"epoch_per must be 'example' or 'batch', got {epoch_per!r}")
  buf = buffers.get(buffer)
  tx = optimizer(head, lr, weight_decay)
  feats_of = functools.partial(features, backbone=backbone, l2_normalize=l2_normalize)
  make = functools.partial(make_head, head=head, num_classes=num_classes, hidden=hidden,
                           dropout=dropout)
  graphdef = functools.lru_cache(maxsize=None)(functools.partial(head_graphdef, make_head=make))
  sgd = functools.partial(sgd_step, tx=tx, weighted_loss=weighted_loss)
  if replay == "full_epoch":
    train = functools.partial(
        train_epoch_per_example if epoch_per == "example" else train_epoch_per_batch, buf=buf,
        epoch=functools.partial(epoch, buf=buf, batch_size=batch_size, sgd=sgd))
  else:
    train = functools.partial(train_one_step, buf=buf, sgd=sgd,
                              replay_size=replay_size if replay == "sampled" else 0,
                              insert=replay == "sampled")
  # One compiled function: building the head op by op outside jit costs seconds of dispatch.
  init_jit = jax.jit(functools.partial(init_state, features=feats_of, make_head=make, tx=tx,
                                       buf=buf, slots=num_classes * capacity,
                                       num_classes=num_classes))

  def init(key, example_batch):
    """State for inputs shaped like ``example_batch["x"]`` [B, ...]; ``key`` seeds the head."""
    return init_jit(key, jnp.asarray(example_batch["x"]))

  return Learner(
      name="exstream", init=init,
      update=jax.jit(functools.partial(update, features=feats_of, graphdef=graphdef, buf=buf,
                                       train=train), donate_argnums=(0,) if donate else ()),
      end_of_step=contract.identity_end_of_step,
      predict=jax.jit(functools.partial(predict, features=feats_of, graphdef=graphdef)))
