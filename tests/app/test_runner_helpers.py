"""The runner's own jitted helpers: the per-batch keys are the ones every earlier version drew
(checkpoints resume the same), the figure sums match a plain float64 sum, and the helpers compile
fast (they run before the first learned step of every run)."""

import time

import jax
import numpy as np

from cljax import learner as contract
from cljax.app import runner


def _old_chunk_keys(key, first):
  """The keys runner._chunk_keys drew for batches first .. first + 255 before this change (the
  formula of cljax/app/runner.py at 9f5c05f, lines 151-155)."""
  return [jax.random.fold_in(key, first + i) for i in range(256)]


def test_batch_keys_match_the_old_formula():
  """runner._chunk_keys (one call per group of batches) draws the keys one fold_in per batch
  drew, for whole chunks and for a chunk shorter than a whole number of groups."""
  key = runner._key_for(3, "slda")  # pylint: disable=protected-access
  k_batch = jax.random.fold_in(key, 1)
  data = lambda keys: np.stack([jax.random.key_data(k) for k in keys])
  for first in (0, 256, 70_000):
    old = data(_old_chunk_keys(k_batch, np.int32(first)))
    new = data(runner._chunk_keys(k_batch, first, 256))  # pylint: disable=protected-access
    np.testing.assert_array_equal(new, old)
    short = data(runner._chunk_keys(k_batch, first, 37))  # pylint: disable=protected-access
    np.testing.assert_array_equal(short, old[:37])


def test_step_sums_match_a_plain_sum():
  rng = np.random.default_rng(0)
  n = 2 * 256 + 37  # two full chunks and a short one
  passes = rng.integers(0, 4, n).astype(np.float32)
  loss = rng.normal(size=n).astype(np.float32)
  loss[rng.random(n) < 0.2] = np.nan  # calls that trained nothing
  loss[7] = np.inf  # a diverging call
  acc = rng.random(n).astype(np.float32)
  reports = rng.random(n) < 0.5  # calls that report the extra at all
  vec = rng.random((n, 3)).astype(np.float32)  # a non-scalar extra, reduced to its mean
  infos = [contract.info(passes[j], loss[j], vec=vec[j], **({"acc": acc[j]} if reports[j] else {}))
           for j in range(n)]
  sums = []
  for c in range(0, n, 256):
    sums += runner._chunk_sums(infos[c:c + 256])  # pylint: disable=protected-access
  used, loss_sum, loss_n, extra, watch = runner._step_totals(sums)  # pylint: disable=protected-access
  ok = np.isfinite(loss)
  assert watch == runner.LossWatch(float(loss[ok].max()), float(loss[ok][0]), 1)
  np.testing.assert_allclose(used, passes.astype(np.float64).sum(), rtol=1e-6)
  np.testing.assert_allclose(loss_sum, loss[ok].astype(np.float64).sum(), rtol=1e-5)
  assert loss_n == ok.sum()
  end = contract.info(0.0, np.nan, acc=np.float32(0.25), other=np.float32(np.nan))
  means = runner._step_extras(extra, end)  # pylint: disable=protected-access
  want = (acc[reports].astype(np.float64).sum() + 0.25) / (reports.sum() + 1)
  np.testing.assert_allclose(means["acc"], want, rtol=1e-5)
  np.testing.assert_allclose(means["vec"], vec.mean(1).astype(np.float64).mean(), rtol=1e-5)
  assert means["other"] is None


def test_helpers_compile_fast(compiles):
  """Both helpers, compiled without the persistent cache, in well under a second (the 256-output
  key program they replace took 8.7-16 s on 2 cores). The bound is 4x the issue's 0.5 s target:
  the machine running the tests is shared."""
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    key = jax.random.fold_in(jax.random.key(11), 1)
    infos = [contract.info(np.float32(1), np.float32(0.5), extra_fig=np.float32(2))] * 5
    jax.clear_caches()
    t0 = time.perf_counter()
    with compiles() as n:
      jax.block_until_ready(runner._chunk_keys(key, 5, 3))  # pylint: disable=protected-access
      jax.block_until_ready(runner._chunk_sums(infos))  # pylint: disable=protected-access
    took = time.perf_counter() - t0
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
  assert n[0] == 2, n[0]
  assert took < 2.0, took
