"""Model FLOPs and the machine's GEMM ceiling, for model FLOPs utilisation (MFU) figures.

Shared by ``experiments/bench/dietcl.py`` and ``experiments/bench/scaling.py``; no flags here, so
any module can import it (absl flags defined at import clash between benchmarks in one process).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from cljax.ops.allocation import source_split


def train_flops(cfg: dict, image_shape, patch: int, num_classes: int, batch_size: int,
                allocation: str = "paper", mask_ratio: float = 0.75) -> dict:
  """Analytic training FLOPs of one joint pass and one buffer-only pass (see module docstring)."""
  h, w, c = image_shape
  n = (h // patch) * (w // patch)
  p2c = patch * patch * c
  n_keep = max(1, int(round(n * (1.0 - mask_ratio))))

  def blocks_fwd(tokens, dim, depth, mlp_ratio):
    hidden = int(dim * mlp_ratio)
    weights = 4 * dim * dim + 2 * dim * hidden  # qkv 3 D^2, proj D^2, fc1, fc2
    return depth * (2 * weights * tokens + 4 * tokens * tokens * dim)

  d, dd = cfg["dim"], cfg["dec_dim"]
  embed = 2 * p2c * d * n
  cls_fwd = embed + blocks_fwd(n, d, cfg["depth"], cfg["mlp_ratio"]) + 2 * d * num_classes
  mae_fwd = (embed + blocks_fwd(n_keep, d, cfg["depth"], cfg["mlp_ratio"]) + 2 * d * dd * n_keep
             + blocks_fwd(n, dd, cfg["dec_depth"], cfg["mlp_ratio"]) + 2 * dd * p2c * n)
  nu, nl, nb = source_split(batch_size, allocation)
  attn_cls = cfg["depth"] * 4 * n * n * d
  return {"tokens": n, "tokens_kept_mae": n_keep, "rows_mae": nu, "rows_cls": nl + nb,
          "train_flops_per_cls_row": 3 * cls_fwd, "train_flops_per_mae_row": 3 * mae_fwd,
          "attention_share_cls_row": attn_cls / cls_fwd,
          "joint_pass_flops": 3 * (nu * mae_fwd + (nl + nb) * cls_fwd),
          "buffer_only_pass_flops": 3 * batch_size * cls_fwd}


def matmul_rate(n: int, dtype) -> dict:
  """FLOP/s of a jitted [n, n] x [n, n] matmul on random normal data (median of 3 x 10 calls)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  for _ in range(3):
    jax.block_until_ready(mm(a, b))
  rounds = []
  for _ in range(3):
    t0 = time.perf_counter()
    outs = [mm(a, b) for _ in range(10)]
    jax.block_until_ready(outs)
    rounds.append((time.perf_counter() - t0) / 10)
  sec = statistics.median(rounds)
  return {"n": n, "dtype": jnp.dtype(dtype).name, "seconds_per_matmul": sec,
          "rounds_s": rounds, "flops_per_s": 2 * n ** 3 / sec}
