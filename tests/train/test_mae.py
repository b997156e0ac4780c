"""train_mae: lowers the MAE loss, returns params every ViT learner loads, orbax round trip."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners import _common
from cljax.train import mae, pretrain


@pytest.fixture(scope="module")
def trained():
  ds = data.load("digits")
  x = ds.train.batch(np.arange(len(ds.train)))
  lines = []
  pm = mae.train_mae("vit_micro", x, 10, key=jax.random.key(0), epochs=1.5, batch_size=64,
                     lr=3e-3, mask_ratio=0.75, model_kwargs={"patch": 4}, log=lines.append)
  return ds, x, pm, lines


def test_train_mae_lowers_the_loss_and_logs(trained):
  ds, x, pm, lines = trained
  init = _common.pure_model("vit_micro", x.shape[1:], 10, jax.random.split(jax.random.key(0), 3)[0],
                            {"patch": 4})
  xt = ds.test.batch(np.arange(len(ds.test)))
  before = mae.mae_eval_loss(init, xt, jax.random.key(9))
  after = mae.mae_eval_loss(pm, xt, jax.random.key(9))
  print(f"digits test MAE loss: init {before:.4f} -> trained {after:.4f}")
  assert after < 0.8 * before, (before, after)
  assert lines and "ex/s" in lines[-1] and "ETA" in lines[-1]
  assert "step 34/34" in lines[-1]  # ceil(1.5 · 1437 / 64) steps, masked last chunk


def test_params_load_everywhere_and_round_trip(trained, tmp_path):
  _, x, pm, _ = trained
  ref = _common.pure_model("vit_micro", x.shape[1:], 10, jax.random.key(1), {"patch": 4})
  assert jax.tree.structure(pm.params) == jax.tree.structure(ref.params)
  pretrain.save_params(str(tmp_path / "mae"), pm.params)
  loaded = pretrain.load_params(str(tmp_path / "mae"), ref.params)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(pm.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ex = {"x": x[:8], "y": np.zeros(8, np.int32)}
  kw = dict(num_classes=10, model="vit_micro", model_kwargs={"patch": 4}, init_params=loaded)
  for name, extra in (("dietcl", {}), ("joint", {"stream_size": 16}), ("er", {}),
                      ("gdumb", {}), ("ewc", {}), ("mas", {})):
    state = L.get(name, **kw, **extra).init(jax.random.key(3), ex)
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(pm.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # dietcl's own vit= spelling builds the same network (and the same initial params).
  st = L.get("dietcl", num_classes=10, vit="micro", patch=4).init(jax.random.key(1), ex)
  for a, b in zip(jax.tree.leaves(st["params"]), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="init_params do not match"):
    L.get("dietcl", num_classes=10, model="vit_micro", model_kwargs={"depth": 1},
          init_params=loaded).init(jax.random.key(0), ex)
  with pytest.raises(ValueError, match="no MAE decoder"):
    mae.train_mae("mlp", x[:4], 10, key=jax.random.key(0), epochs=1.0)
