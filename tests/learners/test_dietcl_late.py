"""Why DietCL learns a class-incremental task late (notes/dietcl.md, "Late learning"): L_m with
``lm_mask="logits"`` (the reference's ``logits[:, -new:]``, ``trainer/base.py`` lines 148-150) is
a softmax over the step's classes only, so it gives the logits of earlier classes no gradient:
it cannot teach "new, not old". That comes only from the new task's rows in L_b, a
1/(t + 1) share of the task-balanced buffer's third of each joint batch at step t."""

import jax
import jax.numpy as jnp
import numpy as np

from cljax.learners import dietcl
from cljax.ops import mixup as mixup_lib
from cljax.ops.allocation import source_split


def _state(step_classes, seen_classes, k=10):
  seen = jnp.zeros((k,), bool).at[jnp.asarray(seen_classes)].set(True)
  step = jnp.zeros((k,), bool).at[jnp.asarray(step_classes)].set(True)
  return dietcl.State(None, seen, step, None, None, None, jnp.int32(2))


def _grad(lm_mask, state, logits, y):
  targets = jax.nn.one_hot(y, logits.shape[1])
  w = jnp.ones(y.shape)

  def loss(z):
    mixed = mixup_lib.Mixed(None, targets, w, jnp.float32(1), jnp.bool_(False),
                            jnp.zeros(4, jnp.int32))
    return dietcl.current_label_loss(lm_mask, z, mixed, y, w > 0, state)

  return np.asarray(jax.grad(loss)(logits))


def test_masked_lm_gives_earlier_classes_no_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
  y = jnp.asarray([4, 5, 4, 5, 5, 4])
  state = _state([4, 5], [0, 1, 2, 3, 4, 5])
  g = _grad("logits", state, logits, y)
  assert np.all(g[:, :4] == 0) and np.all(g[:, 6:] == 0)  # earlier and unseen classes
  assert np.abs(g[:, 4:6]).min() > 0
  # A plain CE over the seen classes (the "none" ablation, the reference's ER) pushes the
  # earlier classes' logits down on the new rows: the "new, not old" signal L_m lacks.
  g = _grad("none", state, logits, y)
  assert np.all(g[:, :4] > 0) and np.all(g[:, 6:] == 0)


def test_new_task_share_of_a_joint_batch_shrinks_with_steps():
  """Rows of a joint batch that train the new classes against the old ones: the buffer third
  times the new task's share of a task-balanced buffer; ER (``er_diet``) gives the step's
  labels half of every batch against all seen classes."""
  nu, nl, nb = source_split(64, "paper")
  assert (nu, nl, nb) == (21, 21, 22)
  share = [nb / (t + 1) for t in range(5)]
  np.testing.assert_allclose(share, [22, 11, 22 / 3, 5.5, 4.4])
  assert source_split(64, "paper", reconstruction=False)[1] == 32
