"""Base initialisation: batch norm kept and used, lr schedule, augmentation, the pretrain binary."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import models
from cljax.learners import _common
from cljax.train import experiment
from cljax.train import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- batch norm: running statistics move in training and are what eval mode uses ---------------


def test_resnet_base_init_keeps_and_uses_batch_norm_statistics(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 64).astype(np.int32)
  x = (rng.normal(size=(64, 12, 12, 1)) + 2.0 + y[:, None, None, None]).astype(np.float32)
  kw = dict(width=1 / 16, stem="small")
  pm = pretrain.train_classifier("resnet18", x, y, 3, key=jax.random.key(0), epochs=2.0,
                                 batch_size=16, optimizer="sgd", lr=0.05, weight_decay=1e-4,
                                 lr_milestones=(0.5,), model_kwargs=kw)
  fresh = _common.pure_model("resnet18", x.shape[1:], 3, jax.random.key(0), kw).params
  stem = pm.params["bn1"]
  # Inputs have mean ~3: the stem's running mean left 0, and the variance left 1.
  assert np.abs(np.asarray(stem["mean"])).max() > 0.05
  assert not np.allclose(stem["var"], fresh["bn1"]["var"])
  assert jax.tree.structure(pm.params) == jax.tree.structure(fresh)
  # Eval mode: a row's logits do not depend on the rest of the batch, and they change when the
  # running statistics are replaced (so they are used).
  apply = jax.jit(pm.apply)
  batch = np.asarray(apply(pm.params, x[:8]))
  np.testing.assert_allclose(np.asarray(apply(pm.params, x[:1]))[0], batch[0], rtol=1e-4,
                             atol=1e-5)
  swapped = jax.tree.map(lambda a: a, pm.params)
  swapped["bn1"] = dict(stem, mean=fresh["bn1"]["mean"], var=fresh["bn1"]["var"])
  assert not np.allclose(np.asarray(apply(swapped, x[:8])), batch, atol=1e-3)
  # The checkpoint round trip keeps the statistics.
  pretrain.save_params(str(tmp_path / "ck"), pm.params)
  back = pretrain.load_params(str(tmp_path / "ck"), fresh)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(pm.params)):
    np.testing.assert_array_equal(a, b)


def test_statistics_get_no_gradient_no_weight_decay_and_move_only_in_training_mode():
  net = models.create("resnet18", (8, 8, 1), 3, jax.random.key(0), width=1 / 16, stem="small")
  pm = _common.pure_model_of(net)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  # jitted: eager op-by-op ResNet calls took ~20 s here
  grad = jax.jit(lambda f, p: jax.grad(lambda q: f(q, x).sum())(p), static_argnums=0)
  g = grad(pm.apply, pm.params)
  assert float(jnp.abs(g["bn1"]["mean"]).sum()) == 0.0
  assert float(jnp.abs(g["bn1"]["scale"]).sum()) > 0.0
  tx = _common.optimizer("sgd", 0.1, weight_decay=0.1)
  upd, _ = tx.update(g, tx.init(pm.params), pm.params)
  assert float(jnp.abs(upd["bn1"]["var"]).sum()) == 0.0
  # Inference mode: running statistics, a row's output does not depend on its batch.
  ev = jax.jit(pm.apply)
  np.testing.assert_allclose(ev(pm.params, x)[:2], ev(pm.params, x[:2]), atol=1e-5)
  # Training mode: batch statistics (over the masked rows), and the running ones move.
  # (One jitted program for all masks: compiles dominate this test on CPU.)
  tr = jax.jit(pm.apply_train)
  ones = jnp.ones(4, bool)
  (l4, t4) = tr(pm.params, x, ones)
  (l2, _) = tr(pm.params, jnp.concatenate([x[:2], x[:2]]), ones)
  assert not np.allclose(l4[:2], l2[:2], atol=1e-4)  # the other rows of the batch matter
  assert not np.allclose(t4["bn1"]["mean"], pm.params["bn1"]["mean"])
  np.testing.assert_array_equal(t4["bn1"]["scale"], pm.params["bn1"]["scale"])
  lm, _ = tr(pm.params, jnp.concatenate([x[:2], 100 + x[2:]]), jnp.asarray([1, 1, 0, 0], bool))
  np.testing.assert_allclose(lm[:2], l2[:2], atol=1e-4)  # masked rows are out of the statistics
  kept = pm.with_stats(pm.params, t4, take=False)
  moved = pm.with_stats(pm.params, t4)
  np.testing.assert_array_equal(kept["bn1"]["var"], pm.params["bn1"]["var"])
  np.testing.assert_array_equal(moved["bn1"]["var"], t4["bn1"]["var"])
  # One training step keeps the moved statistics (no gradient reaches them) and moves weights.
  step = jax.jit(lambda p, o: _common.train_step(pm, tx, p, o, x, jnp.ones(4),
                                                 lambda q, logits: jnp.mean(logits ** 2)))
  new, _, loss = step(pm.params, tx.init(pm.params))
  np.testing.assert_allclose(new["bn1"]["mean"], t4["bn1"]["mean"], rtol=1e-5, atol=1e-7)
  assert not np.allclose(new["conv1"]["kernel"], pm.params["conv1"]["kernel"])
  assert np.isfinite(float(loss))


# --- lr schedule and augmentation ----------------------------------------------------------------


def test_lr_schedule_values():
  s = pretrain.lr_schedule(0.1, 100, (0.5, 0.75), 0.1)
  got = [float(s(i)) for i in (0, 49, 50, 74, 75, 99)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  # REMIND's base init: 40 epochs, x0.1 every 15.
  s = pretrain.lr_schedule(0.1, 40, (15 / 40, 30 / 40), 0.1)
  np.testing.assert_allclose([float(s(i)) for i in (14, 15, 29, 30)], [0.1, 0.01, 0.01, 0.001],
                             rtol=1e-6)
  assert float(pretrain.lr_schedule(0.3, 10)(9)) == pytest.approx(0.3)
  for bad in ((0.7, 0.5), (1.0,), (0.0,)):
    with pytest.raises(ValueError, match="lr_milestones"):
      pretrain.lr_schedule(0.1, 100, bad)


def test_augmentation_shapes_determinism_and_crops():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 7, 5, 2)), jnp.float32)
  k = jax.random.key(3)
  assert pretrain.augment_batch(k, x, "none") is x
  a = pretrain.augment_batch(k, x, "crop", padding=2)
  assert a.shape == x.shape
  np.testing.assert_array_equal(a, pretrain.augment_batch(k, x, "crop", padding=2))
  assert not np.array_equal(a, pretrain.augment_batch(jax.random.key(4), x, "crop", padding=2))
  np.testing.assert_array_equal(pretrain.augment_batch(k, x, "crop", padding=0), x)
  # Every row is a window of its zero-padded image.
  xp = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    assert any(np.array_equal(np.asarray(a[i]), xp[i, u:u + 7, v:v + 5])
               for u in range(5) for v in range(5)), i
  x64 = np.asarray(jnp.tile(x, (11, 1, 1, 1)))
  f = np.asarray(pretrain.augment_batch(jax.random.key(5), jnp.asarray(x64), "crop_flip",
                                        padding=0))
  flipped = [np.array_equal(f[i], x64[i][:, ::-1]) for i in range(len(f))]
  kept = [np.array_equal(f[i], x64[i]) for i in range(len(f))]
  assert all(a or b for a, b in zip(flipped, kept))
  assert 0.25 < np.mean(flipped) < 0.75  # p = 1/2 per row (38 of 66 with this key)
  with pytest.raises(ValueError, match="valid"):
    pretrain.augment_batch(k, x, "mirror")


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
  base = experiment.run_base_init(_config(), wd, log=logs.append)
  assert os.path.isdir(os.path.join(wd, "base_init")) and base.path == os.path.join(wd, "base_init")
  assert any("ex/s" in m and "ETA" in m for m in logs), logs
  assert base.test_accuracy is not None and base.test_accuracy > 0.8, logs
  assert base.classes == sorted(base.classes) and len(base.classes) == 4
  # run.py's path (experiment.base_model) in the same workdir loads it ...
  c = _config()
  stream = experiment.make_stream(c)
  logs = []
  again = experiment.base_model(c, stream, wd, log=logs.append)
  assert any("[base_init] loaded" in m for m in logs)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(a, b)
  # ... and so does another config through base_init.checkpoint, without writing its workdir.
  c2 = _config(checkpoint=os.path.join(wd, "base_init"), classes=0)
  c2.stream.classes_per_step = 5
  other = str(tmp_path / "other")
  got = experiment.base_model(c2, experiment.make_stream(c2), other, log=lambda m: None)
  assert not os.path.exists(os.path.join(other, "base_init"))
  np.testing.assert_array_equal(got.params["head"]["kernel"], base.params["head"]["kernel"])


def test_mae_base_init_calls_train_mae_on_unlabeled_images(tmp_path, monkeypatch):
  calls = {}

  def train_mae(model, x, num_classes, *, key, epochs, batch_size, lr, mask_ratio,
                model_kwargs, log):
    calls.update(model=model, shape=x.shape, k=num_classes, mask_ratio=mask_ratio)
    return _common.pure_model(model, x.shape[1:], num_classes, key, model_kwargs)

  fake = types.SimpleNamespace(train_mae=train_mae)
  monkeypatch.setitem(sys.modules, "cljax.train.mae", fake)
  import cljax.train  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(cljax.train, "mae", fake, raising=False)
  c = _config(kind="mae", classes=0, mask_ratio=0.6)
  c.model = "mlp"
  stream = experiment.make_stream(c)
  logs = []
  base = experiment.base_model(c, stream, str(tmp_path), log=logs.append)
  assert calls == dict(model="mlp", shape=(len(stream.dataset.train), 8, 8, 1), k=10,
                       mask_ratio=0.6)
  assert base.kind == "mae" and base.test_accuracy is None
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
    experiment.base_model(c, experiment.make_stream(c), str(tmp_path), log=lambda m: None)
  with pytest.raises(experiment.ConfigError, match="base_init.dataset.*valid"):
    experiment.validate_config(_config(dataset="imagenet"))
  c = _config(dataset="mnist5k")  # 28x28 base images for an 8x8 stream
  with pytest.raises(experiment.ConfigError, match="shape"):
    experiment.base_model(c, experiment.make_stream(c), str(tmp_path), log=lambda m: None)
  with pytest.raises(experiment.ConfigError, match="no base initialisation"):
    experiment.run_base_init(_config(classes=0), str(tmp_path / "none"), log=lambda m: None)
  # The binary: exit status 2 and the message.
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "pretrain.py"),
                      f"--config={os.path.join(ROOT, 'experiments', 'configs', 'demo.py')}",
                      f"--workdir={tmp_path / 'bin'}", "--config.base_init.kind=simclr"],
                     capture_output=True, text=True, timeout=300, check=False)
  assert p.returncode == 2, p.stderr[-2000:]
  assert "error: unknown base_init.kind 'simclr'; valid: ['supervised', 'mae']" in p.stderr
