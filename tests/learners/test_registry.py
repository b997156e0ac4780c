"""The registry: explicit hyper-parameters and declared inputs, clear errors."""

import pytest

import cljax.learners as L
from cljax.learners import registry


def test_names_and_declared_inputs():
  assert {"er", "finetune", "offline", "slda", "remind", "exstream", "dietcl", "gdumb", "ewc",
          "mas", "joint", "finetune_kading"} <= set(L.names())
  assert L.inputs("slda") == ("backbone", "base")
  assert L.inputs("remind") == ("base",)
  assert "stream_size" in L.inputs("offline") and "init_params" in L.inputs("er")
  for name in L.names():
    assert set(L.inputs(name)) <= set(registry.INPUTS)
    assert set(L.inputs(name)) <= set(L.hparam_names(name))


def test_unknown_names_and_hparams_list_the_valid_ones():
  with pytest.raises(ValueError,
                     match=r"unknown learner 'nope'; valid learners: \['acil', 'cassle', 'ccic', 'dietcl'"):
    L.get("nope", num_classes=3)
  with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lrr'\].*valid: .*'lr'"):
    L.get("er", num_classes=3, lrr=0.1)
  with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
    L.get("er", num_classes=0)


def test_factories_must_be_explicit():
  with pytest.raises(TypeError, match="explicitly"):
    registry.register("_bad_kwargs")(lambda num_classes, **kw: None)
  with pytest.raises(TypeError, match="declared inputs"):
    registry.register("_bad_inputs", inputs=("backbone",))(lambda num_classes: None)
  with pytest.raises(TypeError, match="num_classes"):
    registry.register("_bad_k")(lambda n: None)
  assert "_bad_kwargs" not in L.names()
