r"""Scaling benchmark: ER, REMIND and DietCL steps on a ``data`` mesh of 1, 2, 4 and 8 devices.

    .venv/bin/python experiments/bench/scaling.py --size=small            # CPU: 8 fake devices
    .venv/bin/python experiments/bench/scaling.py --size=tiny --devices=1,2 --learners=er
    python experiments/bench/scaling.py --size=full --dtype=bfloat16 --out=/tmp/scaling_gpu.json

Each learner is built as the runner builds it (``cljax.learners.get(..., checked=False)``) with
the sizes of ``experiments/configs/remind.py`` (ER, REMIND) and ``experiments/configs/dietcl.py``
(DietCL) scaled by ``--size`` (``SIZES``: ``tiny`` for tests, ``small`` = the configs' sizes for
CPU, ``full`` = ImageNet-scale shapes for a GPU: ResNet-18 at 224 px, REMIND's 7x7x512 maps with
32 x 256 PQ, ViT-Base/16 at 224 px). For each device count n it runs, like
``runner.run_learner``: state placed with ``mesh.place`` (replicated), batches with
``mesh.shard_batch`` (prebuilt, so host-to-device copies are outside the clock), every call under
``jax.set_mesh(mesh)``. A class-incremental stream (two classes per time step; real ``mnist5k``
digits for tiny/small, uniform random 224x224x3 images for full, where no ImageNet is offline)
feeds one warm-up time step (every compile happens there; the timed part counts its compiles and
prints them, expected 0) and ``steps`` timed time steps of ``updates`` incoming batches each, then
``end_of_step`` with a fixed budget. Same seed, same keys on every n.

Printed per learner and device count:

* ``update``: incoming examples/s of the jitted ``update`` (REMIND trains here: one SGD step per
  example; ER one replay step per batch; DietCL only stores rows);
* ``end_of_step``: trained rows/s (passes x batch size) of ``end_of_step`` (ER and DietCL train
  here; REMIND has none);
* speed-up over 1 device and efficiency = speed-up / n (1.0 = ideal linear scaling);
* correctness: after the same steps with the same keys, the max |difference| of the n-device
  state from the 1-device state, over floating parameters / optimizer state and over everything
  else (buffer contents, counters, keys: must be exactly 0). Float rounding differs between
  device counts (a sum split over devices is added in another order), and SGD can amplify one
  rounding a long way (ER's ResNet-18 at ``small``: notes/scaling.md), so each learner also gets
  a noise floor: the 1-device run again from parameters 1 ulp away (``perturb_params``). Params
  must agree within max(``--atol``, ``--floor_factor`` x floor); the script says when the floor
  is above atol (then only the buffers' exact check is sharp). Out of tolerance: exit 1.

On fake CPU devices (``--xla_force_host_platform_device_count``, set by this script before JAX
starts) all devices share the same cores, so the CPU timings are no speed-up measurement; only
the correctness check and the FLOP utilisation below mean something there. All device counts
run in one process with ``max(--devices)`` devices, meshes over the first n: every count then
sees the same thread pools, and the states can be compared in memory (notes/scaling.md measures
the 1-device rate in a 1-device process against an 8-device one: 1.1-1.35x faster alone on
CPU, so on CPU the 1-device baseline here is understated; on GPUs each device is real).

FLOP utilisation (``--flops``, on by default): DietCL's two phases (joint MAE + supervised, and
buffer-only supervised), each timed alone on the 1-device mesh (``threshold`` = budget, then 0,
as ``experiments/bench/dietcl.py`` does). FLOPs per optimizer step are XLA's count for the
compiled training chunk (``cost_analysis()`` of the ``Loop`` chunk, which is a ``lax.scan``: XLA
counts a loop body once, so this is one step's FLOPs; checked on a scan of 8 matmuls, which
reports one matmul), printed next to the analytic count of ``experiments/bench/flops.py``
(``train_flops``). MFU = FLOPs per step x steps / seconds, over the machine's GEMM ceiling: a
jitted N x N x N matmul in ``--dtype`` timed in the same run (``matmul_rate``).

Precision: ``--dtype=bfloat16`` sets DietCL's ViT compute dtype (parameters, optimizer, logits and
losses stay float32). ER's and REMIND's ResNet-18 have no dtype option (``cljax/models/resnet.py``):
they stay float32 whatever ``--dtype`` says (printed).
"""

from __future__ import annotations

import os
import sys


def _max_devices(argv) -> int:
  for i, a in enumerate(argv):
    if a.startswith("--devices"):
      v = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
      try:
        return max(int(d) for d in v.split(",") if d.strip())
      except ValueError:
        return 8
  return 8


# Fake CPU devices must be asked for before JAX starts (the flag only touches the host platform,
# so it is harmless on a GPU machine). An explicit count in XLA_FLAGS is kept as it is. Only when
# run as a script: an importer (a test) has started JAX already, and its subprocesses must not
# inherit the flag.
if (__name__ == "__main__" and
    "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_max_devices(sys.argv)}")

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import inspect
import json
import platform
import time
from typing import Optional

import jax
from jax._src import monitoring  # the lowering event counts compiles (as tests/conftest.py)
import jax.numpy as jnp
import numpy as np

import cljax
from cljax import learners
from cljax.models import resnet
from cljax.models import vit as vit_lib
from cljax.models.pure import Net
from cljax.ops import pq
from cljax.train import loop as loop_lib
from cljax.train import mesh as mesh_lib
from experiments.bench.flops import matmul_rate, train_flops
from experiments.configs import dietcl as dietcl_config
from experiments.configs import remind as remind_config

LEARNERS = ("er", "remind", "dietcl")
_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@dataclasses.dataclass(frozen=True)
class Size:
  """Shapes of one benchmark size.

  image: input [H, W, C]; synthetic: uniform random images (else real mnist5k digits); classes: K;
  pool: distinct input rows (synthetic only; cycled); batch: incoming rows per ``update``;
  updates: batches per time step; steps: timed time steps (after one warm-up step);
  er / remind / dietcl: learner hyper-parameters; *_budget: passes per ``end_of_step``;
  resnet: ResNet-18 options of ER's model and REMIND's G/F; remind_split: G's last block;
  label_rate: DietCL's labelled share; matmul_n: side of the GEMM-ceiling matmul.
  """

  image: tuple
  synthetic: bool
  classes: int
  pool: int
  batch: int
  updates: int
  steps: int
  resnet: dict
  er: dict
  er_budget: int
  remind: dict
  remind_split: str
  dietcl: dict
  dietcl_budget: int
  label_rate: float
  matmul_n: int


def _sizes() -> dict:
  rc, dc = remind_config.get_config(), dietcl_config.get_config("scratch")
  resnet_small = dict(rc.model_kwargs)  # width 1/8, small-image stem: 4x4x64 maps at layer4.0
  er_small = dict(rc.hparams.er, model=rc.model, model_kwargs=resnet_small,
                  batch_size=rc.budget.batch_size)
  remind_small = {k: v for k, v in rc.hparams.remind.items()
                  if k in ("num_subvectors", "num_centroids", "pq_iters", "buffer_bytes",
                           "replay_size", "lr_step")}
  dietcl_small = dict(dc.hparams.dietcl, model=dc.model, model_kwargs=dict(dc.model_kwargs),
                      batch_size=dc.budget.batch_size)
  tiny_resnet = dict(width=1 / 16, stem="small")
  return {
      "tiny": Size(
          image=(28, 28, 1), synthetic=False, classes=10, pool=0, batch=8, updates=2, steps=1,
          resnet=tiny_resnet,
          er=dict(er_small, model="mlp", model_kwargs=None, memory_size=64, batch_size=8,
                  chunk=2),
          er_budget=4,
          remind=dict(num_subvectors=2, num_centroids=16, pq_iters=3, buffer_capacity=128,
                      replay_size=4, lr_step=30),
          remind_split="layer4.0",
          dietcl=dict(dietcl_small, model_kwargs=dict(patch=7, depth=1), batch_size=24,
                      threshold=4, chunk=4),
          dietcl_budget=8, label_rate=0.25, matmul_n=512),
      "small": Size(
          image=(28, 28, 1), synthetic=False, classes=10, pool=0, batch=rc.stream.batch_size,
          updates=8, steps=2, resnet=resnet_small, er=er_small, er_budget=16,
          remind=remind_small, remind_split=rc.hparams.remind["split"],
          dietcl=dict(dietcl_small, threshold=8), dietcl_budget=16,
          label_rate=dc.stream.label_rate, matmul_n=2048),
      # ImageNet shapes: ResNet-18 at 224 px (G's layer4.0 maps 7x7x512, REMIND's 32 x 256 PQ
      # and r = 50 of the paper; a 100,000-item buffer instead of 959,665 to keep the
      # replicated state small), ViT-Base/16, the reference's batch 256.
      "full": Size(
          image=(224, 224, 3), synthetic=True, classes=1000, pool=1024, batch=256, updates=4,
          steps=2, resnet=dict(width=1.0),
          er=dict(er_small, model_kwargs=dict(width=1.0), memory_size=2000, batch_size=256,
                  chunk=8),
          er_budget=32,
          remind=dict(num_subvectors=32, num_centroids=256, pq_iters=10,
                      buffer_capacity=100_000, replay_size=50, lr_step=100),
          remind_split="layer4.0",
          dietcl=dict(dietcl_small, model="vit_base", model_kwargs=dict(patch=16),
                      batch_size=256, threshold=16, chunk=8),
          dietcl_budget=32, label_rate=0.05, matmul_n=8192),
  }


SIZES = _sizes()


# ----------------------------------------------------------------------------------- the stream

class Stream:
  """A class-incremental stream of ``1 + size.steps`` time steps (two classes each), as host
  arrays: ``x(t)`` [updates * batch, H, W, C] float32, ``y(t)`` [.] int32, ``labeled(t)`` [.]."""

  def __init__(self, size: Size, seed: int = 0):
    self.size = size
    rng = np.random.default_rng(seed)
    self.num_steps = 1 + size.steps
    rows = size.updates * size.batch
    if size.synthetic:
      h, w, c = size.image
      xs = rng.random((size.pool, h, w, c), dtype=np.float32)
      ys = np.arange(size.pool, dtype=np.int32) % size.classes
      idx = [(np.arange(rows) + t * rows) % size.pool for t in range(self.num_steps)]
      self._x, self._y = xs, ys
      self._idx = idx
      self.description = f"synthetic uniform {h}x{w}x{c}, {size.classes} classes"
    else:
      from cljax import data  # pylint: disable=import-outside-toplevel  (grain)
      ds = data.load("mnist5k")
      self._x = np.asarray(ds.train.batch(np.arange(len(ds.train))), np.float32)
      self._y = np.asarray(ds.train.y, np.int32)
      self._idx = []
      for t in range(self.num_steps):
        classes = [(2 * t) % 10, (2 * t + 1) % 10]
        pick = np.flatnonzero(np.isin(self._y, classes))
        self._idx.append(rng.permutation(pick)[np.arange(rows) % len(pick)])
      self.description = "mnist5k, class-incremental, 2 classes per step"
    self._lab_draw = [rng.random(rows) for _ in range(self.num_steps)]

  def x(self, t):
    return self._x[self._idx[t]]

  def y(self, t):
    return self._y[self._idx[t]]

  def labeled(self, t, rate: float):
    return self._lab_draw[t] < rate

  def batches(self, t, inputs, rate: float = 1.0) -> list:
    """Host batches of time step t: ``inputs`` [rows, ...] (the step's x or features of it)."""
    b, y, lab = self.size.batch, self.y(t), self.labeled(t, rate)
    return [{"x": inputs[i:i + b], "y": y[i:i + b], "valid": np.ones(b, bool),
             "labeled": lab[i:i + b]} for i in range(0, len(y), b)]


# ---------------------------------------------------------------------------------- the learners

def _remind_parts(size: Size):
  """G (eval mode, random init: throughput and agreement need no base training) and F of a
  ResNet-18, and a codebook trained on G's maps of the first time step's digits."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  model = resnet.ResNet18(size.classes, in_channels=size.image[-1],
                          rngs=nnx.Rngs(jax.random.key(0, impl="rbg")), **size.resnet)
  g, f = resnet.split_model(model, size.remind_split)
  g_net = Net.of(g, "REMIND's G")
  g_fn = jax.jit(lambda x: g_net.apply(g_net.fixed_params, x))
  return g_fn, f


def _features(g_fn, x: np.ndarray, chunk: int = 256) -> np.ndarray:
  return np.concatenate([np.asarray(g_fn(x[i:i + chunk])) for i in range(0, len(x), chunk)])


class Setup:
  """What each learner needs beyond the stream: REMIND's F, codebook and input maps."""

  def __init__(self, size: Size, stream: Stream, names):
    self.size, self.stream = size, stream
    self.remind_inputs = None
    if "remind" in names:
      g_fn, self.f_module = _remind_parts(size)
      self.remind_inputs = [_features(g_fn, stream.x(t)) for t in range(stream.num_steps)]
      maps = self.remind_inputs[0]
      hp = size.remind
      self.codebook = pq.train(jax.random.key(3), jnp.asarray(maps.reshape(-1, maps.shape[-1])),
                               hp["num_subvectors"], hp["num_centroids"], iters=hp["pq_iters"])

  def build(self, name: str, dtype: str, **overrides):
    s = self.size
    if name == "er":
      return learners.get("er", num_classes=s.classes, checked=False, **s.er)
    if name == "remind":
      hp = {k: v for k, v in s.remind.items() if k not in ("num_subvectors", "num_centroids",
                                                            "pq_iters")}
      return learners.get("remind", num_classes=s.classes, codebook=self.codebook,
                          f_module=self.f_module, checked=False, **hp)
    hp = dict(s.dietcl, max_step_size=s.updates * s.batch,
              stream_size=s.updates * s.batch * self.stream.num_steps, **overrides)
    if dtype != "float32":
      hp["model_kwargs"] = dict(hp["model_kwargs"] or {}, dtype=dtype)
    return learners.get("dietcl", num_classes=s.classes, checked=False, **hp)

  def batches(self, name: str, t: int) -> list:
    if name == "remind":
      return self.stream.batches(t, self.remind_inputs[t])
    rate = self.size.label_rate if name == "dietcl" else 1.0
    return self.stream.batches(t, self.stream.x(t), rate)

  def budget(self, name: str) -> Optional[int]:
    return {"er": self.size.er_budget, "dietcl": self.size.dietcl_budget}.get(name)

  def trained_rows_per_pass(self, name: str) -> int:
    return {"er": self.size.er["batch_size"], "dietcl": self.size.dietcl["batch_size"]}.get(
        name, 0)


class _Compiles:
  """Counts the programs JAX lowers inside the block (a compile, cache hit or not)."""

  def __enter__(self):
    self.n = 0

    def listener(event, duration, **kwargs):  # pylint: disable=unused-argument
      if event == _LOWERING:
        self.n += 1

    self._listener = listener
    monitoring.register_event_duration_secs_listener(listener)
    return self

  def __exit__(self, *exc):
    monitoring.unregister_event_duration_listener(self._listener)


def host_state(state) -> dict:
  """{path: numpy array} of a state pytree (typed PRNG keys as their key data)."""
  out = {}
  for path, a in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a = jax.random.key_data(a)
    out[jax.tree_util.keystr(path)] = np.asarray(a)
  return out


def _is_buffer(node) -> bool:
  """A replay buffer's state: by the contract (``cljax.learner``), a ``cljax.ops.buffers``
  policy state (a NamedTuple of that package), wherever it sits in a learner's state."""
  return (isinstance(node, tuple) and hasattr(node, "_fields")
          and type(node).__module__.startswith("cljax.ops.buffers"))


def trained_paths(state) -> frozenset:
  """Paths (as ``host_state`` names them) of the leaves that gradient steps write: the floating
  leaves outside replay buffers (parameters, optimizer moments). Found from the state's structure
  and the buffer contract, never from a learner's field names. Compared to a float tolerance;
  everything else (buffer contents, labels, counters, keys) must match exactly: it never depends
  on a cross-device reduction."""
  out = set()
  for path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_buffer)[0]:
    if _is_buffer(node):
      continue
    a = np.asarray(node) if not isinstance(node, jax.Array) else node
    if (not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
        and np.issubdtype(a.dtype, np.floating)):
      out.add(jax.tree_util.keystr(path))
  return frozenset(out)


def compare(ref: dict, got: dict, trained: frozenset) -> dict:
  """Max |got - ref| over the ``trained`` leaves (``trained_paths``) and over exact leaves, and
  the exact leaves that differ (their paths). Shapes or leaves that differ count as infinitely
  far."""
  if ref.keys() != got.keys():
    return {"params_max_abs": float("inf"), "params_worst_leaf": None,
            "exact_max_abs": float("inf"),
            "exact_mismatches": sorted(set(ref) ^ set(got))}
  tr, ex, bad, worst = 0.0, 0.0, [], None
  for k, a in ref.items():
    b = got[k]
    if a.shape != b.shape or a.dtype != b.dtype:
      bad.append(k)
      ex = float("inf")
      continue
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if k in trained:
      if d > tr:
        tr, worst = d, k
    else:
      if d != 0.0 or not np.array_equal(a, b, equal_nan=True):
        bad.append(k)
      ex = max(ex, d)
  return {"params_max_abs": tr, "params_worst_leaf": worst, "exact_max_abs": ex,
          "exact_mismatches": bad}


ULP = 2.0 ** -23  # float32's relative spacing at 1: one unit in the last place


def perturb_params(state, key: jax.Array, rel: float = ULP):
  """``state`` with every trained leaf p (``trained_paths``: float parameters; optimizer moments
  are still zero at init, so they stay) moved to p (1 ± rel), a random sign per element: a start
  one rounding away from ``state``'s (the noise floor of ``run_on_mesh(perturb=True)``).
  Buffers, counters and keys are left as they are."""
  trained = trained_paths(state)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  keys = jax.random.split(key, max(len(flat), 1))
  moved = [p * (1 + rel * jax.random.rademacher(k, p.shape, p.dtype))
           if jax.tree_util.keystr(path) in trained else p
           for (path, p), k in zip(flat, keys)]
  return jax.tree.unflatten(treedef, moved)


def run_on_mesh(setup: Setup, name: str, n: int, dtype: str, seed: int = 0,
                perturb: bool = False) -> dict:
  """One learner on a mesh of n devices: a warm-up time step, then ``steps`` timed ones.

  ``perturb``: start from parameters one float32 rounding away (``perturb_params``); the
  distance of that run from the plain one is how far float rounding alone carries this
  learner's training over these steps (the noise floor of the correctness check)."""
  mesh = mesh_lib.data_mesh(n)
  learner = setup.build(name, dtype)
  root = jax.random.key(seed)
  steps = setup.stream.num_steps
  host = [setup.batches(name, t) for t in range(steps)]
  budget = setup.budget(name)
  upd_s, eos_s, upd_rows, eos_rows = 0.0, 0.0, 0, 0
  with jax.set_mesh(mesh):
    first = host[0][0]
    state = learner.init(jax.random.fold_in(root, 0), {"x": first["x"], "y": first["y"]})
    if perturb:
      state = perturb_params(state, jax.random.fold_in(root, 77))
    state = mesh_lib.place_state(mesh, state)  # as the runner: buffers split over data
    batches = [[mesh_lib.shard_batch(mesh, b) for b in step] for step in host]
    jax.block_until_ready(batches)
    compiles = _Compiles()
    for t in range(steps):
      keys = [jax.random.fold_in(jax.random.fold_in(root, 1 + t), i)
              for i in range(len(batches[t]))]
      eos_key = jax.random.fold_in(jax.random.fold_in(root, 10_000), t)
      jax.block_until_ready(keys)
      if t == 1:
        compiles.__enter__()  # every compile belongs to the warm-up step
      t0 = time.perf_counter()
      for b, k in zip(batches[t], keys):
        state, _ = learner.update(state, b, k)
      jax.block_until_ready(state)
      t1 = time.perf_counter()
      if budget is not None:
        state, _ = learner.end_of_step(state, eos_key, budget)
        jax.block_until_ready(state)
      t2 = time.perf_counter()
      if t >= 1:
        upd_s += t1 - t0
        eos_s += t2 - t1
        upd_rows += sum(len(b["y"]) for b in host[t])
        eos_rows += (budget or 0) * setup.trained_rows_per_pass(name)
    if steps > 1:
      compiles.__exit__()
  return {"learner": name, "devices": n, "update_s": upd_s, "update_rows": upd_rows,
          "update_per_s": upd_rows / upd_s if upd_s > 0 else float("nan"),
          "end_of_step_s": eos_s if budget is not None else None,
          "end_of_step_rows": eos_rows,
          "end_of_step_per_s": (eos_rows / eos_s if eos_s > 0 else float("nan"))
                               if budget is not None else None,
          "timed_compiles": compiles.n if steps > 1 else None,
          "state": host_state(state), "trained": trained_paths(state)}


# ----------------------------------------------------------------------------------------- FLOPs

def _loops_of(fn) -> dict:
  """The ``Loop`` objects a learner's ``end_of_step`` closes over, by variable name."""
  found = inspect.getclosurevars(fn).nonlocals
  return {k: v for k, v in found.items() if isinstance(v, loop_lib.Loop)}


def _flops_of_compiled(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def dietcl_flops(setup: Setup, dtype: str, repeats: int, ceiling: float) -> dict:
  """DietCL's phases timed alone on one device: XLA FLOPs per step, seconds, MFU."""
  s = setup.size
  budget = s.dietcl_budget
  mesh = mesh_lib.data_mesh(1)
  out = {}
  hp = s.dietcl
  vit_cfg = {**vit_lib.CONFIGS[hp["model"].removeprefix("vit_")],
             **{k: v for k, v in (hp["model_kwargs"] or {}).items() if k != "patch"}}
  analytic = train_flops(vit_cfg, s.image, hp["model_kwargs"]["patch"], s.classes,
                         hp["batch_size"], hp["allocation"], hp.get("mask_ratio", 0.75))
  for phase, threshold in (("joint", budget), ("buffer_only", 0)):
    learner = setup.build("dietcl", dtype, threshold=threshold)
    loops = _loops_of(learner.end_of_step)
    calls = {}
    for lname, lp in loops.items():
      orig = lp.run_chunk

      def record(*args, _orig=orig, _name=lname):
        calls.setdefault(_name, (_orig, args))
        return _orig(*args)

      lp.run_chunk = record
    with jax.set_mesh(mesh):
      first = setup.batches("dietcl", 0)
      state = learner.init(jax.random.key(0), {"x": first[0]["x"], "y": first[0]["y"]})
      state = mesh_lib.place_state(mesh, state)  # as the runner: buffers split over data
      for i, b in enumerate(first):
        state, _ = learner.update(state, mesh_lib.shard_batch(mesh, b), jax.random.key(i))
      jax.block_until_ready(state)
      jax.block_until_ready(learner.end_of_step(state, jax.random.key(100), budget))  # compile
      times = []
      for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(learner.end_of_step(state, jax.random.key(101 + r), budget))
        times.append(time.perf_counter() - t0)
      used = [n for n in calls if ("joint" in n) == (phase == "joint")]
      if len(used) != 1:
        raise RuntimeError(f"dietcl {phase}: expected one training loop to run, found {used} "
                           f"of {sorted(loops)} (cljax/learners/dietcl.py changed?)")
      orig, args = calls[used[0]]
      flops = _flops_of_compiled(orig.lower(*args).compile())
    sec = float(np.median(times))
    rate = flops * budget / sec
    key = "joint_pass_flops" if phase == "joint" else "buffer_only_pass_flops"
    out[phase] = {"passes": budget, "batch_size": hp["batch_size"], "times_s": times,
                  "median_s": sec, "xla_flops_per_step": flops,
                  "analytic_flops_per_step": analytic[key],
                  "xla_over_analytic": flops / analytic[key], "flops_per_s": rate,
                  "mfu": rate / ceiling}
  return out


# ----------------------------------------------------------------------------------------- main

def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="small", choices=sorted(SIZES))
  p.add_argument("--devices", default="1,2,4,8", help="device counts, comma-separated")
  p.add_argument("--learners", default=",".join(LEARNERS), help="subset of er,remind,dietcl")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="DietCL's ViT compute dtype (ER's and REMIND's ResNet stay float32)")
  p.add_argument("--atol", type=float, default=1e-3,
                 help="max |param difference| from the 1-device run (float rounding)")
  p.add_argument("--floor_factor", type=float, default=10.0,
                 help="n-device params may also differ by this many noise floors (the 1-device "
                      "run from params 1 ulp away)")
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="compare every n-device state with the 1-device state")
  p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                 help="DietCL's model FLOP utilisation against a timed GEMM")
  p.add_argument("--matmul_n", type=int, default=0, help="GEMM side (0: the size's default)")
  p.add_argument("--repeats", type=int, default=2, help="timed end_of_step calls per phase")
  p.add_argument("--updates", type=int, default=0,
                 help="incoming batches per time step (0: the size's)")
  p.add_argument("--steps", type=int, default=-1,
                 help="timed time steps after the warm-up one (-1: the size's; 0: the warm-up "
                      "step only, for the correctness check alone)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  return p.parse_args(argv)


def size_of(a) -> Size:
  """``SIZES[--size]`` with the ``--updates`` / ``--steps`` overrides."""
  size = SIZES[a.size]
  if a.updates < 0 or a.steps < -1:
    raise ValueError(f"--updates must be >= 0 and --steps >= -1, got {a.updates}, {a.steps}")
  if a.updates:
    size = dataclasses.replace(size, updates=a.updates)
  if a.steps >= 0:
    size = dataclasses.replace(size, steps=a.steps)
  return size


def _validate(a) -> tuple:
  try:
    devices = [int(d) for d in a.devices.split(",") if d.strip()]
  except ValueError:
    raise ValueError(f"--devices must be comma-separated integers, got {a.devices!r}") from None
  if not devices or min(devices) < 1:
    raise ValueError(f"--devices needs counts >= 1, got {a.devices!r}")
  names = [n.strip() for n in a.learners.split(",") if n.strip()]
  bad = sorted(set(names) - set(LEARNERS))
  if bad or not names:
    raise ValueError(f"unknown learners {bad or names}; valid: {list(LEARNERS)}")
  have = jax.device_count()
  if max(devices) > have:
    raise ValueError(f"asked for {max(devices)} devices but only {have} exist "
                     f"({jax.default_backend()}); on CPU drop the xla_force_host_platform_"
                     f"device_count you set in XLA_FLAGS, or ask for fewer with --devices")
  size = size_of(a)
  for n in devices:
    for what, rows in (("incoming batch", size.batch),
                       ("DietCL batch", size.dietcl["batch_size"]),
                       ("ER batch", size.er["batch_size"])):
      if rows % n:
        raise ValueError(f"--size={a.size}: the {what} ({rows} rows) does not split over {n} "
                         f"devices; choose device counts that divide it")
  if 1 not in devices:
    devices = [1] + devices  # the reference of speed-ups and of the correctness check
  return sorted(set(devices)), names


def _fmt(v, spec):
  """``v`` formatted, or "-" right-aligned to the spec's width when there is no value."""
  if v is None:
    width = "".join(ch for ch in spec.split(",")[0].split(".")[0] if ch.isdigit())
    return "-".rjust(int(width or 1))
  return format(v, spec)


def main(argv=None) -> int:
  a = parse(sys.argv[1:] if argv is None else argv)
  try:
    devices, names = _validate(a)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  cljax.compile_cache(check=True)  # the one cache policy (cljax/__init__.py)
  size = size_of(a)
  backend = jax.default_backend()
  dev = jax.devices()[0]
  print(f"scaling benchmark, size {a.size}: {jax.device_count()} {backend} devices "
        f"({getattr(dev, 'device_kind', dev)}), jax {jax.__version__}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}", flush=True)
  if backend == "cpu":
    print("NOTE: fake CPU devices share the same cores: these timings are not a speed-up "
          "measurement; only the correctness check and the FLOP utilisation mean something here.",
          flush=True)
  if a.dtype != "float32" and {"er", "remind"} & set(names):
    print(f"NOTE: --dtype={a.dtype} applies to DietCL's ViT only; ER's and REMIND's ResNet-18 "
          "have no dtype option and run in float32.", flush=True)
  t_setup = time.perf_counter()
  stream = Stream(size, a.seed)
  setup = Setup(size, stream, names)
  print(f"stream: {stream.description}; {stream.num_steps} time steps (1 warm-up) of "
        f"{size.updates} x {size.batch} rows; setup {time.perf_counter() - t_setup:.1f} s",
        flush=True)
  res = {"size": a.size, "dtype": a.dtype, "backend": backend, "device_kind":
         str(getattr(dev, "device_kind", dev)), "device_count": jax.device_count(),
         "jax": jax.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
         "load_start": os.getloadavg(), "rows": [], "atol": a.atol}
  failed = []
  head = (f"{'learner':<7} {'n':>2} | {'update ex/s':>11} {'speed-up':>8} {'eff':>5} | "
          f"{'eos rows/s':>10} {'speed-up':>8} {'eff':>5} | {'max|dparams|':>12} "
          f"{'max|dexact|':>11} | compiles")
  print(head + "\n" + "-" * len(head), flush=True)
  for name in names:
    ref = None
    for n in devices:
      t0 = time.perf_counter()
      r = run_on_mesh(setup, name, n, a.dtype, a.seed)
      r["wall_s"] = time.perf_counter() - t0
      state, trained = r.pop("state"), r.pop("trained")
      if n == 1:
        ref = r
        ref_state, ref_trained = state, trained
        if a.check and len(devices) > 1:
          floor = compare(ref_state, run_on_mesh(setup, name, 1, a.dtype, a.seed,
                                                 perturb=True)["state"], ref_trained)
          r["noise_floor"] = floor["params_max_abs"]
          allowed = max(a.atol, a.floor_factor * floor["params_max_abs"])
          print(f"{name:<7}  1 | noise floor: the 1-device run from params 1 ulp away ends "
                f"{floor['params_max_abs']:.3g} away (at {floor['params_worst_leaf']}); "
                f"n-device params must be within {allowed:.3g} = max(atol, "
                f"{a.floor_factor:g} x floor)", flush=True)
          if floor["params_max_abs"] > a.atol:
            print(f"{name:<7}    | NOTE: {name}'s training amplifies one rounding beyond atol over "
                  "these steps: its params check only bounds the difference by the floor; "
                  "its buffers are still compared exactly", flush=True)
      up = r["update_per_s"] / ref["update_per_s"]
      r["update_speedup"], r["update_efficiency"] = up, up / n
      if r["end_of_step_per_s"] is not None:
        es = r["end_of_step_per_s"] / ref["end_of_step_per_s"]
        r["end_of_step_speedup"], r["end_of_step_efficiency"] = es, es / n
      else:
        es = None
      if a.check and n > 1:
        c = compare(ref_state, state, ref_trained | trained)
        r.update(c)
        r["params_allowed"] = allowed
        ok = c["params_max_abs"] <= allowed and not c["exact_mismatches"]
        r["check_ok"] = ok
        if not ok:
          failed.append(f"{name} on {n} devices: max |dparams| {c['params_max_abs']:.3g} "
                        f"at {c['params_worst_leaf']} (allowed {allowed:.3g}), exact leaves "
                        f"differing: "
                        f"{c['exact_mismatches'][:5]}")
      print(f"{name:<7} {n:>2} | {r['update_per_s']:>11,.1f} {up:>8.2f} {up / n:>5.2f} | "
            f"{_fmt(r['end_of_step_per_s'], '>10,.1f')} {_fmt(es, '>8.2f')} "
            f"{_fmt(None if es is None else es / n, '>5.2f')} | "
            f"{_fmt(r.get('params_max_abs'), '>12.3g')} {_fmt(r.get('exact_max_abs'), '>11.3g')}"
            f" | {r['timed_compiles']}   ({r['wall_s']:.0f} s)", flush=True)
      res["rows"].append(r)
      _dump(a.out, res)
  if a.flops and "dietcl" in names:
    n_mm = a.matmul_n or size.matmul_n
    mm = matmul_rate(n_mm, jnp.dtype(a.dtype))
    res["matmul"] = mm
    print(f"\nGEMM ceiling: {n_mm}^3 {a.dtype} matmul {mm['flops_per_s'] / 1e9:,.1f} GFLOP/s "
          f"(one device)", flush=True)
    fl = dietcl_flops(setup, a.dtype, a.repeats, mm["flops_per_s"])
    res["dietcl_flops"] = fl
    for phase, f in fl.items():
      print(f"DietCL {phase:<11}: {f['xla_flops_per_step'] / 1e9:8.3f} GFLOP/step (XLA; "
            f"analytic {f['analytic_flops_per_step'] / 1e9:.3f}, ratio "
            f"{f['xla_over_analytic']:.2f}) x {f['passes']} steps in {f['median_s']:.3f} s = "
            f"{f['flops_per_s'] / 1e9:,.1f} GFLOP/s -> MFU {100 * f['mfu']:.1f} %", flush=True)
    _dump(a.out, res)
  res["load_end"] = os.getloadavg()
  res["failed"] = failed
  _dump(a.out, res)
  if failed:
    for f in failed:
      print(f"error: states disagree with the 1-device run: {f}", file=sys.stderr, flush=True)
    return 1
  if a.check and len(devices) > 1:
    print(f"correctness: every n-device state matches the 1-device state (params within "
          f"max(atol {a.atol:g}, {a.floor_factor:g} x noise floor), buffers exactly)", flush=True)
  return 0


def _dump(path, res):
  if path:
    with open(path, "w") as f:
      json.dump(res, f, indent=1, default=float)


if __name__ == "__main__":
  sys.exit(main())
