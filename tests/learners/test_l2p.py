"""L2P: prompt selection against a NumPy version of the reference's, and a budgeted run."""

import collections

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners.l2p import select_prompts, step_cost
from tests.helpers import arrays, run_tasks

TINY_VIT = {"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16}  # 8x8 digits: 4 patches


def reference_selection(query, keys, top_k, batchwise):
  """google-research/l2p models/prompt.py, Prompt.__call__ (embedding_key "cls", prompt_key):
  cosine similarity, top-k per row; batchwise: the k ids most frequent among the rows' top-k
  (jnp.unique sorts the ids, so ties go to the lower id)."""
  q = query / np.linalg.norm(query, axis=1, keepdims=True)
  k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
  sim = q @ k.T
  idx = np.argsort(-sim, axis=1, kind="stable")[:, :top_k]
  if batchwise:
    counts = collections.Counter(idx.ravel().tolist())
    major = sorted(counts, key=lambda i: (-counts[i], i))[:top_k]
    idx = np.tile(major, (len(query), 1))
  reduce_sim = sum(k[idx[b]] @ q[b] for b in range(len(query))).sum() / len(query)
  return idx, reduce_sim


@pytest.mark.parametrize("batchwise", [False, True])
def test_selection_matches_reference(batchwise):
  x, _ = arrays(data.load("digits"))
  rng = np.random.default_rng(0)
  query = x[:24].reshape(24, -1) + 0.1 * rng.normal(size=(24, 64))  # real-image queries
  keys = rng.normal(size=(10, 64))
  idx, sim = select_prompts(query, keys, 4, batchwise)
  want_idx, want_sim = reference_selection(query, keys, 4, batchwise)
  if batchwise:
    np.testing.assert_array_equal(np.asarray(idx), want_idx)
  else:
    np.testing.assert_array_equal(np.sort(np.asarray(idx), 1), np.sort(want_idx, 1))
  assert float(sim) == pytest.approx(want_sim, rel=1e-5)


def test_step_cost_counts_tokens():
  # ALGORITHMS.md §8 (L2P): "a prompted sequence costs in proportion to its tokens". The issue's
  # case: vit_micro's 16 patches + 5 prompts of 5 tokens = 41 tokens = 41/16 passes, plus the
  # query forward over the 16 patch tokens at 1/3 pass.
  assert step_cost(16, 5, 5) == pytest.approx(41 / 16 + 1 / 3)
  assert step_cost(4, 2, 2) == pytest.approx(8 / 4 + 1 / 3)


@pytest.mark.slow  # two budgeted steps of a tiny prompted ViT (compile bound)
def test_trains_only_prompts_keys_and_head_within_budget():
  x, y = arrays(data.load("digits"))
  learner = L.get("l2p", num_classes=10, model="vit_micro", model_kwargs=TINY_VIT,
                  batch_size=16, chunk=4, memory_size=400, top_k=2, prompt_length=2,
                  checked=False)
  state0 = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  state, spent = run_tasks(learner, x, y, [[0, 1], [2, 3]], [20, 9], bs=16)
  # 4 patches + 2 prompts of 2 tokens: 8 tokens = 2 passes, + 1/3 for the query: 7/3 a step;
  # 8 steps in 20 passes, 3 in 9.
  assert spent == pytest.approx([8 * 7 / 3, 3 * 7 / 3])
  for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(state0.frozen)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(state.train), jax.tree.leaves(state0.train)):
    assert not np.array_equal(np.asarray(a), np.asarray(b))
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  # Only the seen classes are predicted. No accuracy claim here: this backbone is a random,
  # frozen tiny ViT, so prompts have nothing pretrained to steer (0.25 on classes 0-3, chance);
  # L2P's accuracy is measured on the MAE-pretrained ViT of the DietCL config (notes/baselines.md).
  assert set(pred) <= {0, 1, 2, 3}
