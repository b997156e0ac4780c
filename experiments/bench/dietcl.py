"""Benchmark: training throughput of the DietCL step (``cljax/learners/dietcl.py``) on this machine.

Builds ``dietcl`` with a ViT (default ViT-tiny: width 192, depth 12, 3 heads, MAE decoder 128 x 2)
on real 28x28 MNIST digits (mnist5k, patch 7 -> 16 patches), fills one time step with
``--step_rows`` rows at ``--label_rate`` labels, then times ``end_of_step`` for a budget of
``--passes`` passes of ``--batch_size`` examples, in the joint phase (threshold = passes: MAE on the
unlabeled third + CE on the labeled and buffer thirds) and in the buffer-only phase (threshold 0).
The first call of each phase compiles and is timed separately; ``--repeats`` timed calls follow.

Training examples/s = passes * batch_size / seconds (a joint pass reads batch_size examples, of
which a third go through the MAE encoder at 25 % of the patches plus the decoder).

GPU / ImageNet shapes: ``--synthetic`` replaces MNIST with uniform random images of
``--image_size`` x ``--image_size`` x ``--channels`` and ``--classes`` labels (cljax.data, hence
grain, is then not imported); ``--dtype=bfloat16`` sets the ViT's compute dtype (parameters,
optimizer, logits and losses stay float32); ``--matmul_n=8192`` also times a jitted
``jnp.matmul`` of two N x N matrices in ``--dtype`` (random normal data, median of 3 rounds of 10
back-to-back products after 3 warm-ups), and the model FLOP utilisation is reported against it:

    MFU = model FLOPs per pass * passes / median seconds  /  (2 N^3 / matmul seconds).

Model FLOPs are counted analytically (``train_flops``), the usual 6 x (matmul parameters) x tokens
for training (forward 2, backward 4 per weight per token) plus attention, 12 T^2 D per block
(QK^T and AV, forward 4 T^2 D, times 3), for the layers each row actually runs:

* a classification row (L_m, L_b, buffer-only): patch embedding on all N tokens, the encoder on N
  tokens, the head on the token mean;
* an MAE row (L_r): patch embedding on all N tokens (it runs before the masking), the encoder on
  n_keep = round(N (1 - mask_ratio)) tokens, the decoder embedding on n_keep tokens, the decoder
  blocks and the pixel predictor on N tokens.

LayerNorm, softmax, GELU, the optimizer and the buffer sampling are not counted (MFU convention);
the input gradient of the patch embedding, which XLA skips, is counted (an overcount of ~0.1 %).

Usage::

    .venv/bin/python experiments/bench/dietcl.py --out=/tmp/dietcl_bench.json
    python3 experiments/bench/dietcl.py --synthetic --vit=base --image_size=224 --dtype=bfloat16 \
        --batch_size=256 --classes=1000 --matmul_n=8192 --out=/tmp/dietcl_gpu.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import cljax.learners as learners
from cljax.models import vit as vit_lib
from experiments.bench.flops import matmul_rate, train_flops

_OUT = flags.DEFINE_string("out", None, "JSON file for the results.")
_VIT = flags.DEFINE_string("vit", "tiny", "ViT config (micro, tiny, small, base).")
_BS = flags.DEFINE_integer("batch_size", 64, "Examples per pass.")
_PASSES = flags.DEFINE_integer("passes", 16, "Passes per timed end_of_step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed end_of_step calls per phase.")
_ROWS = flags.DEFINE_integer("step_rows", 640, "Rows in the time step.")
_RATE = flags.DEFINE_float("label_rate", 0.1, "Share of labeled rows.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Steps per jitted call.")
_SYN = flags.DEFINE_bool("synthetic", False, "Uniform random images instead of MNIST (no grain).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Synthetic image side (with --synthetic).")
_CH = flags.DEFINE_integer("channels", 3, "Synthetic image channels (with --synthetic).")
_CLASSES = flags.DEFINE_integer("classes", 1000, "Synthetic classes (with --synthetic).")
_PATCH = flags.DEFINE_integer("patch", None, "ViT patch side (None: vit.create's default).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "ViT compute dtype.")
_MATMUL = flags.DEFINE_integer("matmul_n", 0, "Also time an N^3 matmul in --dtype (0: skip).")
_PHASES = flags.DEFINE_list("phases", ["joint", "buffer_only"], "Phases to time.")


class _Split:
  def __init__(self, x, y):
    self.x, self.y = x, y

  def __len__(self):
    return len(self.y)

  def batch(self, idx):
    return self.x[idx]


class _Synthetic:
  """Uniform random images [step_rows, S, S, C] with random labels (throughput only)."""

  def __init__(self, n, size, channels, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, channels), dtype=np.float32)
    self.train = _Split(x, rng.integers(0, classes, n).astype(np.int32))
    self.num_classes = classes


def _fill(learner, ds, rows, rate, bs, seed):
  x, y = ds.train.batch(np.arange(len(ds.train))), ds.train.y
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(y), rows, replace=False)
  lab = rng.random(rows) < rate
  state = learner.init(jax.random.key(0), {"x": x[:bs], "y": y[:bs]})
  for s in range(0, rows, bs):
    b = idx[s:s + bs]
    pad = bs - len(b)
    bi = np.r_[b, np.zeros(pad, int)]
    state, _ = learner.update(state, {"x": x[bi], "y": y[bi],
                                      "valid": np.r_[np.ones(len(b), bool), np.zeros(pad, bool)],
                                      "labeled": np.r_[lab[s:s + bs], np.zeros(pad, bool)]},
                              jax.random.key(s))
  return state


def _is_buffer(node) -> bool:
  """A replay store: a ``cljax.ops.buffers`` policy state (the contract, ``cljax.learner``)."""
  return (isinstance(node, tuple) and hasattr(node, "_fields")
          and type(node).__module__.startswith("cljax.ops.buffers"))


def _num_params(state) -> int:
  """Floating values of ``state`` outside its replay stores: DietCL's parameters (its state
  holds no other floats: masks are bool, counters int). Read from the state's structure and the
  buffer contract, not from its field names."""
  leaves = jax.tree.leaves(state, is_leaf=_is_buffer)
  return sum(int(np.prod(np.shape(v))) for v in leaves
             if not _is_buffer(v) and np.issubdtype(np.asarray(v).dtype, np.floating))


def _phase(ds, threshold):
  mkw = {"patch": _PATCH.value} if _PATCH.value else {}
  if _DTYPE.value != "float32":
    mkw["dtype"] = _DTYPE.value
  kw = dict(num_classes=ds.num_classes, model=f"vit_{_VIT.value}", model_kwargs=mkw,
            batch_size=_BS.value, max_step_size=_ROWS.value, memory_size=max(_ROWS.value, 256),
            threshold=threshold, chunk=_CHUNK.value)
  learner = learners.get("dietcl", checked=False, **kw)
  state = _fill(learner, ds, _ROWS.value, _RATE.value, _BS.value, 0)
  p = _PASSES.value
  t0 = time.perf_counter()
  out, m = learner.end_of_step(state, jax.random.key(1), p)
  jax.block_until_ready(out)
  first = time.perf_counter() - t0
  times = []
  for r in range(_REPEATS.value):
    state = _fill(learner, ds, _ROWS.value, _RATE.value, _BS.value, r + 1)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    out, m = learner.end_of_step(state, jax.random.key(2 + r), p)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  n_params = _num_params(out)
  return {"threshold": threshold, "passes": p, "first_call_s": first, "times_s": times,
          "median_s": med, "examples_per_s": p * _BS.value / med,
          "ms_per_pass": 1000 * med / p, "params": n_params,
          "passes_reported": float(m.passes)}


def main(argv):
  del argv
  if _SYN.value:
    ds = _Synthetic(_ROWS.value, _SIZE.value, _CH.value, _CLASSES.value)
    name = f"synthetic uniform {_SIZE.value}x{_SIZE.value}x{_CH.value}"
  else:
    from cljax import data  # pylint: disable=import-outside-toplevel  (imports grain)
    ds = data.load("mnist5k")
    name = "mnist5k"
  image = list(ds.train.batch(np.arange(1)).shape[1:])
  patch = _PATCH.value or _default_patch(image[0])
  dev = jax.devices()[0]
  res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                     "jax": jax.__version__, "device": str(dev),
                     "device_kind": getattr(dev, "device_kind", ""),
                     "device_count": jax.device_count(), "backend": jax.default_backend(),
                     "loadavg_start": os.getloadavg()},
         "config": {"vit": _VIT.value, "data": name, "image": image, "patch": patch,
                    "dtype": _DTYPE.value, "num_classes": ds.num_classes,
                    "batch_size": _BS.value, "passes": _PASSES.value, "chunk": _CHUNK.value,
                    "step_rows": _ROWS.value,
                    "label_rate": _RATE.value}}
  cfg = vit_lib.CONFIGS[_VIT.value]
  fl = train_flops(cfg, image, patch, ds.num_classes, _BS.value)
  res["flops"] = fl
  if _MATMUL.value:
    res["matmul"] = matmul_rate(_MATMUL.value, jnp.dtype(_DTYPE.value))
    _dump(res)
    print(f"matmul {_MATMUL.value}^3 {_DTYPE.value}: "
          f"{res['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s")
  flops_key = {"joint": "joint_pass_flops", "buffer_only": "buffer_only_pass_flops"}
  for k in _PHASES.value:
    r = res[k] = _phase(ds, threshold=_PASSES.value if k == "joint" else 0)
    r["model_flops_per_pass"] = fl[flops_key[k]]
    r["model_flops_per_s"] = fl[flops_key[k]] * r["passes"] / r["median_s"]
    if "matmul" in res:
      r["mfu_vs_measured_matmul"] = r["model_flops_per_s"] / res["matmul"]["flops_per_s"]
    mfu = f"  MFU {100 * r['mfu_vs_measured_matmul']:.1f} %" if "matmul" in res else ""
    print(f"{k:12s} {r['examples_per_s']:8.1f} ex/s  {r['ms_per_pass']:7.1f} ms/pass  "
          f"{r['model_flops_per_s'] / 1e12:7.1f} model TFLOP/s{mfu}  "
          f"first call {r['first_call_s']:.1f} s  params {r['params']:,}", flush=True)
    _dump(res)  # after each phase, so a run cut short keeps what it measured
  res["machine"]["loadavg_end"] = os.getloadavg()
  _dump(res)


def _dump(res):
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=2)


def _default_patch(side: int) -> int:
  """vit.create's default patch side for a square image of this side."""
  return next((p for p in (16, 8, 7, 4, 2) if side % p == 0 and side // p >= 2
               and (side >= 64 or p < 16)), 1)


if __name__ == "__main__":
  app.run(main)
