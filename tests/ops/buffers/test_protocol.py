"""Every policy of cljax.ops.buffers through the protocol's promises, on the same small stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import buffers
from tests.ops.buffers import common

CAP, K, D = 12, 4, 3  # capacity a multiple of K so the per-class policies take it too


def test_registry():
  assert buffers.names() == sorted(["append", "reservoir", "class_balanced", "greedy",
                                    "largest_class", "task_balanced", "queue", "kmeans",
                                    "exstream", "clustream", "hpstream", "ranked"])
  for name in buffers.names():
    p = buffers.get(name)
    assert isinstance(p, buffers.Policy) and p.name == name
  with pytest.raises(ValueError) as err:
    buffers.get("nope")
  for name in buffers.names():
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", buffers.names())
def test_protocol(name):
  p = buffers.get(name)
  xs, ys = common.stream(0, 50, K, D)
  example = jax.ShapeDtypeStruct((D,), jnp.float32)
  state = p.init(common.KEY, CAP, example, K)
  # A NamedTuple of arrays only: one checkpointable pytree.
  assert isinstance(state, tuple) and hasattr(state, "_fields")
  assert all(isinstance(a, jax.Array) for a in state)
  if "key" in state._fields:  # raw key data, and a raw key is taken as well as a typed one
    assert state.key.dtype == jnp.uint32
    common.assert_same(state, p.init(jax.random.key_data(common.KEY), CAP, example, K))
  mask = np.arange(50) % 5 != 3
  state = common.feed(name, state, xs, ys, mask, batch=16)
  # Through numpy and back (as a checkpoint restore would), it carries on identically.
  restored = type(state)(*(jnp.asarray(np.asarray(a)) for a in state))
  more_x, more_y = common.stream(1, 16, K, D)
  common.assert_same(common.feed(name, state, more_x, more_y, batch=16),
                     common.feed(name, restored, more_x, more_y, batch=16))
  c = common.check_contents(name, state, CAP, example)
  held = int(np.asarray(c.mask).sum())
  assert 0 < held <= CAP
  if name in ("kmeans", "exstream", "clustream"):  # weights count the examples absorbed
    assert float(c.weight.sum()) == mask.sum()
  elif name == "hpstream":  # the same, less the examples of deleted clusters
    assert 0 < float(c.weight.sum()) <= mask.sum()
  else:
    assert (np.asarray(c.weight)[np.asarray(c.mask)] == 1).all()
  common.check_sample(name, state, n=7)
  common.check_empty(name, CAP, K, example)


def test_sizes_rejected_with_a_message():
  example = np.zeros(D, np.float32)
  for name in buffers.names():
    with pytest.raises(ValueError, match="capacity"):
      buffers.get(name).init(common.KEY, 0, example, K)
  for name in ("queue", "kmeans", "exstream", "clustream", "hpstream"):
    with pytest.raises(ValueError, match="per class"):
      buffers.get(name).init(common.KEY, CAP + 1, example, K)
