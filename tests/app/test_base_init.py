"""Base initialisation (cljax/app/base_init.py): supervised training with batch norm kept and
used, the lr schedule, augmentation, MAE pre-training, checkpoints, and the pretrain binary."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax.ops import augment
from cljax.train import pretrain
from cljax import data
from cljax import models
from cljax import optim
from cljax.models.pure import Net
from cljax.app import base_init
from cljax.app import experiment
from cljax.app import settings
from cljax.train.loop import classifier_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- batch norm: running statistics move in training and are what eval mode uses ---------------


@pytest.mark.slow
def test_resnet_base_init_keeps_and_uses_batch_norm_statistics(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 64).astype(np.int32)
  x = (rng.normal(size=(64, 12, 12, 1)) + 2.0 + y[:, None, None, None]).astype(np.float32)
  kw = dict(width=1 / 16, stem="small")
  pm = pretrain.train_classifier("resnet18", x, y, 3, key=jax.random.key(0), epochs=2.0,
                                  batch_size=16, optimizer="sgd", lr=0.05, weight_decay=1e-4,
                                  lr_milestones=(0.5,), model_kwargs=kw)
  assert (pm.name, pm.kwargs) == ("resnet18", kw)
  fresh = Net.named("resnet18", 3, **kw).init(jax.random.key(0), x.shape[1:])
  stem = pm.params["bn1"]
  # Inputs have mean ~3: the stem's running mean left 0, and the variance left 1.
  assert np.abs(np.asarray(stem["mean"])).max() > 0.05
  assert not np.allclose(stem["var"], fresh["bn1"]["var"])
  assert jax.tree.structure(pm.params) == jax.tree.structure(fresh)
  # Eval mode: a row's logits do not depend on the rest of the batch, and they change when the
  # running statistics are replaced (so they are used).
  apply = jax.jit(pm.net.apply)
  batch = np.asarray(apply(pm.params, x[:8]))
  np.testing.assert_allclose(np.asarray(apply(pm.params, x[:1]))[0], batch[0], rtol=1e-4,
                             atol=1e-5)
  swapped = jax.tree.map(lambda a: a, pm.params)
  swapped["bn1"] = dict(stem, mean=fresh["bn1"]["mean"], var=fresh["bn1"]["var"])
  assert not np.allclose(np.asarray(apply(swapped, x[:8])), batch, atol=1e-3)
  # The checkpoint round trip keeps the statistics.
  base_init.save_params(str(tmp_path / "ck"), pm.params)
  back = base_init.load_params(str(tmp_path / "ck"), fresh)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(pm.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_statistics_get_no_gradient_no_weight_decay_and_move_only_in_training_mode():
  net = Net.of(models.create("resnet18", (8, 8, 1), 3, jax.random.key(0), width=1 / 16,
                             stem="small"))
  params = net.init(jax.random.key(0), (8, 8, 1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  # jitted: eager op-by-op ResNet calls took ~20 s here
  grad = jax.jit(lambda p: jax.grad(lambda q: net.apply(q, x).sum())(p))
  g = grad(params)
  assert float(jnp.abs(g["bn1"]["mean"]).sum()) == 0.0
  assert float(jnp.abs(g["bn1"]["scale"]).sum()) > 0.0
  tx = optim.build("sgd", 0.1, weight_decay=0.1)
  upd, _ = tx.update(g, tx.init(params), params)
  assert float(jnp.abs(upd["bn1"]["var"]).sum()) == 0.0
  # Inference mode: running statistics, a row's output does not depend on its batch.
  ev = jax.jit(net.apply)
  np.testing.assert_allclose(ev(params, x)[:2], ev(params, x[:2]), atol=1e-5)
  # Training mode: batch statistics (over the masked rows), and the running ones move.
  # (One jitted program for all masks: compiles dominate this test on CPU.)
  tr = jax.jit(net.apply_train)
  ones = jnp.ones(4, bool)
  (l4, t4) = tr(params, x, ones)
  (l2, _) = tr(params, jnp.concatenate([x[:2], x[:2]]), ones)
  assert not np.allclose(l4[:2], l2[:2], atol=1e-4)  # the other rows of the batch matter
  assert not np.allclose(t4["bn1"]["mean"], params["bn1"]["mean"])
  np.testing.assert_array_equal(t4["bn1"]["scale"], params["bn1"]["scale"])
  lm, _ = tr(params, jnp.concatenate([x[:2], 100 + x[2:]]), jnp.asarray([1, 1, 0, 0], bool))
  np.testing.assert_allclose(lm[:2], l2[:2], atol=1e-4)  # masked rows are out of the statistics
  kept = net.with_stats(params, t4, x.shape[1:], take=False)
  moved = net.with_stats(params, t4, x.shape[1:])
  np.testing.assert_array_equal(kept["bn1"]["var"], params["bn1"]["var"])
  np.testing.assert_array_equal(moved["bn1"]["var"], t4["bn1"]["var"])
  # One training step keeps the moved statistics (no gradient reaches them) and moves weights.
  step = jax.jit(lambda p, o: classifier_step(net, tx, p, o, x, jnp.ones(4),
                                              lambda q, logits: jnp.mean(logits ** 2)))
  new, _, loss = step(params, tx.init(params))
  np.testing.assert_allclose(new["bn1"]["mean"], t4["bn1"]["mean"], rtol=1e-5, atol=1e-7)
  assert not np.allclose(new["conv1"]["kernel"], params["conv1"]["kernel"])
  assert np.isfinite(float(loss))


# --- lr schedule, batch order and augmentation -----------------------------------------------


def test_lr_schedule_values():
  s = optim.step_schedule(0.1, 100, (0.5, 0.75), 0.1)
  got = [float(s(i)) for i in (0, 49, 50, 74, 75, 99)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  # REMIND's base init: 40 epochs, x0.1 every 15.
  s = optim.step_schedule(0.1, 40, (15 / 40, 30 / 40), 0.1)
  np.testing.assert_allclose([float(s(i)) for i in (14, 15, 29, 30)], [0.1, 0.01, 0.01, 0.001],
                             rtol=1e-6)
  assert float(optim.step_schedule(0.3, 10)(9)) == pytest.approx(0.3)
  for bad in ((0.7, 0.5), (1.0,), (0.0,)):
    with pytest.raises(ValueError, match="lr_milestones"):
      optim.step_schedule(0.1, 100, bad)


def test_epoch_order_is_shuffled_epochs_padded_to_chunks():
  k = jax.random.key(0)
  o = pretrain.epoch_order(k, 10, 4, 5, 3, drop_last=True)
  assert o.shape == (6, 4) and o.dtype == np.int32  # 5 steps padded to 2 chunks of 3
  np.testing.assert_array_equal(o[5], 0)  # the padding step (masked by the loop)
  for e in (o[0:2], o[2:4]):  # 2 full batches per epoch, the partial last one dropped
    assert len(set(e.ravel().tolist())) == 8
  np.testing.assert_array_equal(o, pretrain.epoch_order(k, 10, 4, 5, 3, drop_last=True))
  o = pretrain.epoch_order(k, 10, 4, 3, 1, drop_last=False)  # 3 batches = one whole epoch
  assert o.shape == (3, 4) and set(o.ravel().tolist()) == set(range(10))


def test_augmentation_shapes_determinism_and_crops():
  aug = augment.augment_batch
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 7, 5, 2)), jnp.float32)
  k = jax.random.key(3)
  assert aug(k, x, "none") is x
  a = aug(k, x, "crop", padding=2)
  assert a.shape == x.shape
  np.testing.assert_array_equal(a, aug(k, x, "crop", padding=2))
  assert not np.array_equal(a, aug(jax.random.key(4), x, "crop", padding=2))
  np.testing.assert_array_equal(aug(k, x, "crop", padding=0), x)
  # Every row is a window of its zero-padded image.
  xp = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    assert any(np.array_equal(np.asarray(a[i]), xp[i, u:u + 7, v:v + 5])
               for u in range(5) for v in range(5)), i
  x64 = np.asarray(jnp.tile(x, (11, 1, 1, 1)))
  f = np.asarray(aug(jax.random.key(5), jnp.asarray(x64), "crop_flip", padding=0))
  flipped = [np.array_equal(f[i], x64[i][:, ::-1]) for i in range(len(f))]
  kept = [np.array_equal(f[i], x64[i]) for i in range(len(f))]
  assert all(a or b for a, b in zip(flipped, kept))
  assert 0.25 < np.mean(flipped) < 0.75  # p = 1/2 per row
  with pytest.raises(ValueError, match="valid"):
    aug(k, x, "mirror")


# --- MAE pre-training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mae_trained():
  ds = data.load("digits")
  x = ds.train.batch(np.arange(len(ds.train)))
  lines = []
  m = pretrain.train_mae("vit_micro", x, 10, key=jax.random.key(0), epochs=1.5, batch_size=64,
                          lr=3e-3, mask_ratio=0.75, model_kwargs={"patch": 4}, log=lines.append)
  return ds, x, m, lines


@pytest.mark.slow
def test_train_mae_lowers_the_loss_and_logs(mae_trained):
  ds, x, m, lines = mae_trained
  # The untrained network train_mae started from: the first of its three keys.
  net = Net.named("vit_micro", 10, patch=4)
  init = pretrain.Model("vit_micro", {"patch": 4}, net,
                         net.init(jax.random.split(jax.random.key(0), 3)[0], x.shape[1:]))
  assert (m.name, m.kwargs) == ("vit_micro", {"patch": 4})
  assert jax.tree.structure(m.params) == jax.tree.structure(init.params)
  xt = ds.test.batch(np.arange(len(ds.test)))
  before = pretrain.mae_eval_loss(init, xt, jax.random.key(9))
  after = pretrain.mae_eval_loss(m, xt, jax.random.key(9))
  print(f"digits test MAE loss: init {before:.4f} -> trained {after:.4f}")
  assert after < 0.8 * before, (before, after)
  assert lines and "ex/s" in lines[-1] and "ETA" in lines[-1]
  assert "step 34/34" in lines[-1]  # ceil(1.5 · 1437 / 64) steps, masked last chunk


TINY_VIT = {"depth": 1, "dim": 16, "dec_dim": 16}


@pytest.fixture(scope="module")
def tiny_mae():
  """A one-block 16-wide ViT-micro MAE-trained for 2 steps (the fast tier's MAE model)."""
  x = data.load("digits").train.batch(np.arange(64))
  m = pretrain.train_mae("vit_micro", x, 10, key=jax.random.key(0), epochs=1.0, batch_size=32,
                          model_kwargs=TINY_VIT, chunk=2)
  return x, m


def test_train_mae_rejects_bad_inputs():
  x = np.zeros((4, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="no MAE decoder"):
    pretrain.train_mae("mlp", x, 10, key=jax.random.key(0), epochs=1.0)
  with pytest.raises(ValueError, match="images"):
    pretrain.train_mae("vit_micro", x[:, :, :, 0], 10, key=jax.random.key(0))


def test_tiny_train_mae_trains_its_start(tiny_mae):
  x, m = tiny_mae
  assert (m.name, m.kwargs) == ("vit_micro", TINY_VIT)
  start = Net.named("vit_micro", 10, **TINY_VIT).init(jax.random.split(jax.random.key(0), 3)[0],
                                                      x.shape[1:])
  assert jax.tree.structure(m.params) == jax.tree.structure(start)
  assert not np.allclose(m.params["patch_embed"]["kernel"], start["patch_embed"]["kernel"])
  assert np.isfinite(pretrain.mae_eval_loss(m, x, jax.random.key(9)))


def test_mae_params_load_everywhere_and_round_trip(tiny_mae, tmp_path):
  x, m = tiny_mae
  ref = Net.named("vit_micro", 10, **TINY_VIT).init(jax.random.key(1), x.shape[1:])
  base_init.save_params(str(tmp_path / "mae"), m.params)
  loaded = base_init.load_params(str(tmp_path / "mae"), ref)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(m.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ex = {"x": x[:8], "y": np.zeros(8, np.int32)}
  kw = dict(num_classes=10, model="vit_micro", model_kwargs=TINY_VIT, init_params=loaded)
  for name, extra in (("dietcl", {}), ("joint", {"stream_size": 16}), ("er", {}),
                      ("gdumb", {}), ("ewc", {}), ("mas", {})):
    state = L.get(name, **kw, **extra).init(jax.random.key(3), ex)
    _assert_holds(state, m.params)
  with pytest.raises(ValueError, match="init_params do not fit"):
    L.get("dietcl", num_classes=10, model="vit_micro", model_kwargs={**TINY_VIT, "dim": 32},
          init_params=loaded).init(jax.random.key(0), ex)
  with pytest.raises(FileNotFoundError, match="no base-init checkpoint"):
    base_init.load_params(str(tmp_path / "nothing"), ref)


def _assert_holds(state, params):
  """``state`` (any pytree: the contract names no fields) holds ``params``' leaves, in order, as
  one run of its own leaves: the learner starts from exactly those parameters."""
  want = [np.asarray(b) for b in jax.tree.leaves(params)]
  have = [np.asarray(a) for a in jax.tree.leaves(state)]
  assert any(all(a.shape == b.shape and np.array_equal(a, b) for a, b in
                 zip(have[i:i + len(want)], want)) for i in range(len(have) - len(want) + 1))


# --- the pretrain binary and the experiment's base_model -----------------------------------------


def _config(**base):
  c = experiment.base_config()
  c.dataset, c.model, c.learners, c.plots = "digits", "cnn", "finetune", False
  c.base_init.classes, c.base_init.epochs = 4, 4.0
  c.base_init.optimizer, c.base_init.lr, c.base_init.augment = "adam", 3e-3, "crop"
  c.base_init.crop_padding, c.base_init.lr_milestones = 1, (0.5,)
  for k, v in base.items():
    c.base_init[k] = v
  return c


def test_pretrain_writes_the_checkpoint_run_py_loads(tmp_path):
  logs = []
  wd = str(tmp_path / "w")
  c = _config()
  assert (settings.from_config(c).base_init.active
          and not settings.from_config(_config(classes=0)).base_init.active)
  base = experiment.run_base_init(c, wd, log=logs.append)
  assert os.path.isdir(os.path.join(wd, "base_init")) and base.path == os.path.join(wd, "base_init")
  assert any("ex/s" in m and "ETA" in m for m in logs), logs
  assert base.test_accuracy is not None and base.test_accuracy > 0.8, logs
  assert base.classes == sorted(base.classes) and len(base.classes) == 4
  assert base.kind == "supervised" and set(base.y.tolist()) == set(base.classes)
  # What learners get from it (cljax.learners.INPUTS), beside the stream's and the settings'.
  s = settings.from_config(c)
  stream = experiment.make_stream(s.stream)
  from_base = {"init_params", "backbone", "base"}
  offered = experiment.learner_inputs(s, stream, base)
  assert from_base <= set(offered) and not from_base & set(experiment.learner_inputs(s, stream))
  xb = base.x[:5]
  np.testing.assert_allclose(np.asarray(offered["backbone"](xb)),
                             np.asarray(base.net.features(base.params, xb)))
  # run.py's path (experiment.base_model) in the same workdir loads it ...
  logs = []
  again = experiment.base_model(s, stream, wd, log=logs.append)
  assert any("[base_init] loaded" in m for m in logs)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(a, b)
  assert again.test_accuracy == pytest.approx(base.test_accuracy)
  # ... and so does another config through base_init.checkpoint, without writing its workdir.
  c2 = _config(checkpoint=os.path.join(wd, "base_init"), classes=0)
  c2.stream.classes_per_step = 5
  s2 = settings.from_config(c2)
  assert s2.base_init.active
  other = str(tmp_path / "other")
  got = experiment.base_model(s2, experiment.make_stream(s2.stream), other, log=lambda m: None)
  assert not os.path.exists(os.path.join(other, "base_init"))
  np.testing.assert_array_equal(got.params["head"]["kernel"], base.params["head"]["kernel"])


def test_mae_base_init_calls_train_mae_on_unlabeled_images(tmp_path, monkeypatch):
  calls = {}

  def train_mae(model, x, num_classes, *, key, epochs, batch_size, lr, mask_ratio,
                model_kwargs, log):
    calls.update(model=model, shape=x.shape, k=num_classes, mask_ratio=mask_ratio)
    net = Net.named(model, num_classes, **model_kwargs)
    return pretrain.Model(model, model_kwargs, net, net.init(key, x.shape[1:]))

  monkeypatch.setattr(base_init, "train_mae", train_mae)
  c = _config(kind="mae", classes=0, mask_ratio=0.6)
  c.model = "mlp"
  s = settings.from_config(c)
  assert s.base_init.active
  stream = experiment.make_stream(s.stream)
  logs = []
  base = experiment.base_model(s, stream, str(tmp_path), log=logs.append)
  assert calls == dict(model="mlp", shape=(len(stream.dataset.train), 8, 8, 1), k=10,
                       mask_ratio=0.6)
  assert base.kind == "mae" and base.test_accuracy is None and base.classes == []
  assert np.all(base.y == -1)  # labels unused
  assert not any("test accuracy" in m for m in logs)
  assert os.path.isdir(tmp_path / "base_init")


def test_bad_base_init_configs_are_clear_errors(tmp_path):
  for key, value, valid in (("kind", "simclr", "mae"), ("optimizer", "lion", "adam"),
                            ("augment", "flip", "crop_flip")):
    with pytest.raises(experiment.ConfigError, match=f"base_init.{key}.*{valid}"):
      experiment.validate_config(_config(**{key: value}))
  with pytest.raises(experiment.ConfigError, match="lr_milestones"):
    experiment.validate_config(_config(lr_milestones=(0.8, 0.2)))
  c = _config(checkpoint=str(tmp_path / "nothing"))
  with pytest.raises(experiment.ConfigError, match="no folder"):
    s = settings.from_config(c)
    experiment.base_model(s, experiment.make_stream(s.stream), str(tmp_path), log=lambda m: None)
  with pytest.raises(experiment.ConfigError, match="base_init.dataset.*valid"):
    experiment.validate_config(_config(dataset="imagenet"))
  c = _config(dataset="mnist5k")  # 28x28 base images for an 8x8 stream
  with pytest.raises(experiment.ConfigError, match="shape"):
    s = settings.from_config(c)
    experiment.base_model(s, experiment.make_stream(s.stream), str(tmp_path), log=lambda m: None)
  with pytest.raises(experiment.ConfigError, match="no base initialisation"):
    experiment.run_base_init(_config(classes=0), str(tmp_path / "none"), log=lambda m: None)


@pytest.mark.slow  # several seconds: the full suite runs it
def test_pretrain_binary_exits_2_with_the_message(tmp_path):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "pretrain.py"),
                      f"--config={os.path.join(ROOT, 'experiments', 'configs', 'demo.py')}",
                      f"--workdir={tmp_path / 'bin'}", "--config.base_init.kind=simclr"],
                     capture_output=True, text=True, timeout=300, check=False)
  assert p.returncode == 2, p.stderr[-2000:]
  assert "error: unknown base_init.kind 'simclr'; valid: ['supervised', 'mae']" in p.stderr


def test_in_domain_base_set_leaves_out_the_streams_images(tmp_path, monkeypatch):
  """``base_init.dataset`` = the stream's own data set: the base set is its training images that
  no step of the stream uses (in-domain, disjoint), never the stream's (a leak of the future);
  a stream that uses every image leaves none: a clear error."""
  seen = {}

  def train_mae(model, x, num_classes, *, key, epochs, batch_size, lr, mask_ratio,
                model_kwargs, log):
    seen["x"] = np.asarray(x)
    net = Net.named(model, num_classes, **model_kwargs)
    return pretrain.Model(model, model_kwargs, net, net.init(key, x.shape[1:]))

  monkeypatch.setattr(base_init, "train_mae", train_mae)
  c = _config(kind="mae", classes=0, dataset="digits")
  c.model = "mlp"
  c.stream.max_examples_per_step = 50
  s = settings.from_config(c)
  stream = experiment.make_stream(s.stream)
  base = experiment.base_model(s, stream, str(tmp_path), log=lambda m: None)
  train = stream.dataset.train
  used = np.concatenate(stream.steps)
  rest = np.setdiff1d(np.arange(len(train)), used)
  assert len(base.x) == len(train) - len(np.unique(used)) == len(rest)
  np.testing.assert_array_equal(seen["x"], train.batch(rest))  # exactly the unused images
  # Which runs start from it (results.json's base_init and the line under the table).
  spec = settings.LearnerSpec
  assert experiment.base_used(spec("er", "er", {}), base, "digits") == (
      f"mae:digits ({len(rest)} images)")
  assert experiment.base_used(spec("er", "er", {"init_params": None}), base, "") == "hparams"
  assert experiment.base_used(spec("slda", "slda", {}), base, "") == (
      f"mae:stream ({len(rest)} images)")
  assert experiment.base_used(spec("er", "er", {}), None, "") == "none"
  c.stream.max_examples_per_step = 0  # the stream uses every training image
  s = settings.from_config(c)
  with pytest.raises(experiment.ConfigError, match="no disjoint base images"):
    experiment.base_model(s, experiment.make_stream(s.stream), str(tmp_path / "b"),
                          log=lambda m: None)


def test_a_named_base_data_set_alone_asks_for_a_base_initialisation():
  """``base_init.dataset`` without base classes still trains the base network on that data set
  (before, supervised pre-training on another data set ran only with base classes set)."""
  assert settings.from_config(_config(kind="supervised", classes=0, dataset="digits")
                              ).base_init.active
  assert not settings.from_config(_config(kind="supervised", classes=0, dataset="")
                                  ).base_init.active
