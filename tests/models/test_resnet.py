"""Tests for cljax.models.resnet: torchvision layout and names, strides, split into G and F."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.models import resnet
from cljax.models.pure import Net


def _rngs(seed):
  # rbg keys: initialising the ~60 variables compiles ~10x faster on CPU than with threefry.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _model(**kw):
  kw.setdefault("width", 1 / 16)
  kw.setdefault("stem", "small")
  return resnet.ResNet18(kw.pop("num_classes", 10), rngs=_rngs(0), **kw)


def _paths(module):
  return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(module))}


def test_full_width_parameter_count_and_names_match_torchvision():
  # Abstract init: no memory or compute for the 11.7M parameters.
  model = nnx.eval_shape(lambda: resnet.ResNet18(1000, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  assert n == 11_689_512  # torchvision.models.resnet18().parameters()
  paths = _paths(model)
  for p in ["conv1/kernel", "bn1/scale", "bn1/bias", "bn1/mean", "bn1/var", "layer1/0/conv1/kernel",
            "layer1/1/bn2/var", "layer2/0/downsample/0/kernel", "layer2/0/downsample/1/scale",
            "layer4/1/conv2/kernel", "fc/kernel", "fc/bias"]:
    assert p in paths, p
  assert not any(p.startswith("layer1/0/downsample") for p in paths)
  assert not any("conv1/bias" in p for p in paths)  # convolutions carry no bias
  sd_keys = {resnet.torch_key(tuple(p.split("/"))) for p in paths}
  assert "layer2.0.downsample.1.running_var" in sd_keys and "fc.weight" in sd_keys
  assert len(sd_keys) == 102  # torchvision resnet18 state dict minus the 20 num_batches_tracked


def test_imagenet_stem_gives_7x7_at_layer4():
  model = _model(stem="imagenet")
  g, f = resnet.split_model(model, "layer4.0")
  # Shapes only (abstract evaluation): a 224 px forward pass is needless work on CPU.
  feats = jax.eval_shape(lambda x: g(x, use_running_average=True), jnp.zeros((1, 224, 224, 3)))
  assert feats.shape == (1, 7, 7, 32)  # 512 * 1/16 channels
  assert jax.eval_shape(lambda h: f(h, use_running_average=True), feats).shape == (1, 10)


def test_small_stem_shapes_and_strides():
  model = _model()
  x = jax.random.normal(jax.random.key(0), (2, 28, 28, 3))
  shapes = {}
  for split in ["stem", "layer1", "layer2.0", "layer3", "layer4.0", "layer4"]:
    g, _ = resnet.split_model(model, split)
    shapes[split] = jax.eval_shape(lambda x: g(x, use_running_average=True), x).shape
  assert shapes == {"stem": (2, 28, 28, 4), "layer1": (2, 28, 28, 4), "layer2.0": (2, 14, 14, 8),
                    "layer3": (2, 7, 7, 16), "layer4.0": (2, 4, 4, 32), "layer4": (2, 4, 4, 32)}
  assert model.layer2[0].conv1.strides == (2, 2) and model.layer2[1].conv1.strides == (1, 1)
  assert model.layer3[0].downsample[0].strides == (2, 2)
  assert model.layer3[0].downsample[0].kernel.shape == (1, 1, 8, 16)


def test_split_names_and_errors():
  model = _model()
  g, f = resnet.split_model(model, "layer4.0")
  assert g.block_names[-1] == "layer4.0" and f.block_names == ("layer4.1",)
  assert resnet.split_model(model, "layer4")[1].block_names == ()
  for bad in ["layer5", "layer2.2", "fc", "layer1.0.conv1"]:
    with pytest.raises(ValueError):
      resnet.split_model(model, bad)
  with pytest.raises(ValueError):
    resnet.ResNet18(10, stem="tiny", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("split", ["layer3", "layer4.0", "layer4"])
def test_f_of_g_equals_the_whole_model_in_eval_mode(split):
  model = _model()
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  g, f = resnet.split_model(model, split)
  g_net, f_net, whole_net = Net.of(g), Net.of(f), Net.of(model)
  feats = jax.jit(g_net.apply)(g_net.fixed_params, x)
  logits = jax.jit(f_net.apply)(f_net.fixed_params, feats)
  whole = jax.jit(whole_net.apply)(whole_net.fixed_params, x)
  np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-5)
  # F's state holds only F's variables: REMIND keeps G out of the learner state.
  assert all(p.startswith(("blocks/", "fc/")) for p in _paths(f))
  assert "fc" in f_net.fixed_params and set(f_net.fixed_params) <= {"blocks", "fc"}


def test_batch_norm_modes_in_pure_functions():
  model = _model()
  g, f = resnet.split_model(model, "layer4.0")
  g_net, f_net = Net.of(g), Net.of(f)
  g_params, f_params = g_net.fixed_params, f_net.fixed_params
  g_before = jax.tree.map(np.array, g_params)
  x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3)) * 3 + 1
  feats = jax.jit(g_net.apply)(g_params, x)  # eval mode: nothing to return but the output
  for a, b in zip(jax.tree.leaves(g_before), jax.tree.leaves(g_params)):
    np.testing.assert_array_equal(a, b)
  out_train, f_after = jax.jit(f_net.apply_train)(f_params, feats)
  out_eval = jax.jit(f_net.apply)(f_params, feats)
  is_stat = f_net.stat_mask(f_params, feats.shape[1:])
  assert sum(jax.tree.leaves(is_stat)) == 4  # mean and var of layer4.1's bn1 and bn2
  moved = [not np.allclose(a, b) for a, b, s in zip(jax.tree.leaves(f_params),
                                                    jax.tree.leaves(f_after),
                                                    jax.tree.leaves(is_stat)) if s]
  assert any(moved)
  # Train mode moves the running statistics only: every weight comes back as it was.
  for a, b, s in zip(jax.tree.leaves(f_params), jax.tree.leaves(f_after), jax.tree.leaves(is_stat)):
    if not s:
      np.testing.assert_array_equal(a, b)
  assert not np.allclose(out_train, out_eval)
  # The module itself was not mutated by the pure calls.
  stats_module = jax.tree.leaves(nnx.state(f, nnx.BatchStat))
  stats_params = [a for a, s in zip(jax.tree.leaves(f_params), jax.tree.leaves(is_stat)) if s]
  for a, b in zip(stats_params, stats_module):
    np.testing.assert_array_equal(a, b)


def test_torch_state_dict_round_trip():
  src, dst = _model(), resnet.ResNet18(10, width=1 / 16, stem="small", rngs=_rngs(7))
  sd = resnet.to_torch_state_dict(src)
  assert sd["conv1.weight"].shape == (4, 3, 3, 3)  # OIHW
  assert sd["fc.weight"].shape == (10, 32)
  sd["layer1.0.bn1.num_batches_tracked"] = np.array(0)
  resnet.load_torch_state_dict(dst, sd)
  x = jax.random.normal(jax.random.key(3), (2, 12, 12, 3))
  net = Net.of(src)
  run = jax.jit(net.apply)
  np.testing.assert_array_equal(run(Net.of(dst).fixed_params, x), run(net.fixed_params, x))
  del sd["fc.bias"]
  with pytest.raises(KeyError):
    resnet.load_torch_state_dict(dst, sd)


def test_batch_norm_mask_ignores_padding_rows():
  model = _model()
  _, f = resnet.split_model(model, "layer4.0")
  f_net = Net.of(f)
  run = jax.jit(f_net.apply_train)
  h = jax.random.normal(jax.random.key(4), (4, 4, 4, 32))
  padded = h.at[2:].set(50.0)
  out_m, st_m = run(f_net.fixed_params, padded, jnp.array([True, True, False, False]))
  out_2, st_2 = run(f_net.fixed_params, h[:2])
  np.testing.assert_allclose(out_m[:2], out_2, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(st_m), jax.tree.leaves(st_2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
