r"""Seconds to the first result: compile time, cold and warm, of real runs of the binary.

    python experiments/bench/startup.py                       # the demo's learners, slda, remind
    python experiments/bench/startup.py --runs=er,slda --out=/tmp/startup.json
    python experiments/bench/startup.py --runs=demo           # the demo's three learners together
    python experiments/bench/startup.py --runs=er,slda --peer=avalanche \
        --peer_python=/path/to/venv/bin/python                # + Avalanche on the same stream

Each run is ``experiments/run.py`` with one learner of a shipped config (``finetune``, ``er``,
``offline``: ``configs/demo.py``; ``slda``: ``configs/slda.py``; ``remind``: ``configs/remind.py``;
``demo``: the demo's three learners in one process), in a fresh process, twice: **cold** (the
compile cache, ``CLJAX_JAX_CACHE``, an empty temporary folder) then **warm** (the same folder, now
filled). For each: time from the process's start to the first learned step (the runner's
"step 1/N" line), the whole process's wall, the first step's and the median later step's wall
(the runner's own ``wall_s``) and their ratio, and the XLA compile time JAX reports
(``/jax/core/compile/backend_compile_duration`` monitoring events: per jitted function, summed
over its compiles; a cache hit counts its retrieval), with every function over
``--min_compile`` seconds listed, largest first.

``--peer=avalanche`` (Avalanche is not a cljax dependency: pass ``--peer_python``, an interpreter
that has ``avalanche-lib`` and ``torch``) also trains Avalanche's Naive with replay and its
StreamingLDA on the same mnist5k class-incremental stream (``experiments/bench/_avalanche_peer.py``)
and prints cljax / Avalanche wall ratios from this one invocation. ER is the same work on both
sides (stream, CNN, Adam, 200 steps a step, buffer of 500); SLDA is not: cljax's ``slda`` run is
``configs/slda.py`` (a CNN base initialisation, then SLDA on its 128-d features), Avalanche's
StreamingLDA runs on a 512-d random projection of the pixels, so that ratio compares whole runs
as a user would start them, not identical work.

The machine's load (``os.getloadavg``) is printed with each figure: on a shared machine a run is
only comparable with runs of the same invocation.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app, flags  # pylint: disable=wrong-import-position

CONFIGS = os.path.join(ROOT, "experiments", "configs")
# run name -> (config file, learners)
RUNS = {"finetune": ("demo.py", "finetune"), "er": ("demo.py", "er"),
        "offline": ("demo.py", "offline"), "slda": ("slda.py", "slda"),
        "remind": ("remind.py", "remind"), "demo": ("demo.py", "finetune,er,offline")}

_RUNS = flags.DEFINE_list("runs", ["finetune", "er", "offline", "slda", "remind"],
                          f"Runs to time, of {sorted(RUNS)}.")
_MODES = flags.DEFINE_list("modes", ["cold", "warm"], "cold (empty cache), warm (filled).")
_OVERRIDES = flags.DEFINE_list("overrides", [], "Extra --config.KEY=VALUE for every run.")
_MIN_COMPILE = flags.DEFINE_float("min_compile", 0.1, "List functions compiling longer (s).")
_OUT = flags.DEFINE_string("out", None, "Write every figure here (JSON).")
_PEER = flags.DEFINE_enum("peer", None, ["avalanche"], "Also time this library.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", None, "An interpreter with the peer library.")
_CHILD = flags.DEFINE_string("child", None, "(internal) run this config:learners, write events "
                             "to --events.")
_EVENTS = flags.DEFINE_string("events", None, "(internal) the child's events file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "(internal) the child's workdir.")

_BACKEND = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_STEP_LINE = re.compile(r"^\[(\S+)\] step 1/\d+ ")


def _child() -> int:
  """In the timed process: records JAX's compile events, runs experiments/run.py in-process."""
  from jax._src import monitoring  # pylint: disable=import-outside-toplevel
  compiles, pending, cpu0 = [], [False], [0.0]

  def on_event(event, **kwargs):  # pylint: disable=unused-argument
    if event == _HIT:
      pending[0] = True

  def on_start(event, value, **kwargs):  # pylint: disable=unused-argument
    if event == _BACKEND:  # JAX records the start of a compile as a scalar
      cpu0[0] = time.process_time()

  def on_duration(event, duration, **kwargs):
    if event == _BACKEND:
      compiles.append({"fun": kwargs.get("fun_name", "?"), "s": duration, "hit": pending[0],
                       "cpu_s": time.process_time() - cpu0[0]})
      pending[0] = False

  monitoring.register_event_listener(on_event)
  monitoring.register_scalar_listener(on_start)
  monitoring.register_event_duration_secs_listener(on_duration)
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import run  # pylint: disable=import-outside-toplevel
  config, learners = _CHILD.value.split(":")
  status = run.main(["run.py", f"--config={os.path.join(CONFIGS, config)}",
                     f"--config.learners={learners}", f"--workdir={_WORKDIR.value}"]
                    + [f"--config.{o}" for o in _OVERRIDES.value])
  with open(_EVENTS.value, "w") as f:
    json.dump(compiles, f)
  return status


def time_run(name: str, cache: str) -> dict:
  """One fresh process running ``name`` with the compile cache in ``cache``."""
  config, learners = RUNS[name]
  work = tempfile.mkdtemp(prefix=f"startup_{name}_")
  events = os.path.join(work, "events.json")
  env = dict(os.environ, CLJAX_JAX_CACHE=cache, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
  load = os.getloadavg()[0]
  ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), f"--child={config}:{learners}",
       f"--events={events}", f"--workdir={os.path.join(work, 'w')}"]
      + [f"--overrides={','.join(_OVERRIDES.value)}"] * bool(_OVERRIDES.value),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first, tail = {}, []
  for line in proc.stdout:
    m = _STEP_LINE.match(line)
    if m and m.group(1) not in first:
      first[m.group(1)] = time.perf_counter() - t0
    tail = (tail + [line.rstrip()])[-20:]
  status = proc.wait()
  wall = time.perf_counter() - t0
  ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
  if status:
    raise RuntimeError(f"{name}: exit status {status}:\n" + "\n".join(tail))
  with open(os.path.join(work, "w", "results.json")) as f:
    results = json.load(f)
  with open(events) as f:
    compiles = json.load(f)
  shutil.rmtree(work, ignore_errors=True)
  steps = {run: [s["wall_s"] for s in r["steps"]] for run, r in results["runs"].items()}
  per_fun: dict = {}
  for c in compiles:
    a = per_fun.setdefault(c["fun"], {"s": 0.0, "cpu_s": 0.0, "n": 0, "hits": 0})
    a["s"] += c["s"]
    a["cpu_s"] += c["cpu_s"]
    a["n"] += 1
    a["hits"] += c["hit"]
  return {"run": name, "load_before": load, "load_after": os.getloadavg()[0], "wall_s": wall,
          "cpu_s": cpu, "first_step_s": min(first.values()) if first else None,
          "first_step_by_run": first,
          "steps_wall_s": steps, "compile_s": sum(c["s"] for c in compiles),
          "compile_cpu_s": sum(c["cpu_s"] for c in compiles),
          "compiles": len(compiles), "cache_hits": sum(c["hit"] for c in compiles),
          "functions": dict(sorted(per_fun.items(), key=lambda kv: -kv[1]["s"]))}


def _ratio(steps: list) -> tuple:
  later = statistics.median(steps[1:]) if len(steps) > 1 else float("nan")
  return steps[0], later, steps[0] / later


def print_row(mode: str, r: dict) -> None:
  for run, steps in r["steps_wall_s"].items():
    s0, later, ratio = _ratio(steps)
    print(f"{r['run']:>9} {mode:>4} {run:>9} | first step at {r['first_step_by_run'].get(run, 0):6.1f} s"
          f" | process {r['wall_s']:6.1f} s ({r['cpu_s']:.0f} s CPU) | step 0 {s0:5.2f} s, later {later:5.2f} s: "
          f"{ratio:4.1f}x | compile {r['compile_s']:6.1f} s ({r['compile_cpu_s']:.1f} s CPU) in "
          f"{r['compiles']} programs "
          f"({r['cache_hits']} cache hits) | load {r['load_before']:.1f}-{r['load_after']:.1f}",
          flush=True)


def print_functions(mode: str, r: dict, threshold: float) -> None:
  big = [(f, a) for f, a in r["functions"].items() if a["s"] > threshold]
  print(f"  {r['run']} {mode}: {len(big)} functions over {threshold} s of compile "
        f"(of {len(r['functions'])}):")
  for f, a in big:
    print(f"    {a['s']:7.2f} s ({a['cpu_s']:6.2f} s CPU)  {f}  ({a['n']} compile"
          f"{'s' * (a['n'] > 1)}, {a['hits']} hits)")


def run_peer(runs: list) -> dict:
  """Avalanche on the same stream, in its own interpreter (see _avalanche_peer.py)."""
  from cljax import data  # pylint: disable=import-outside-toplevel
  work = tempfile.mkdtemp(prefix="startup_peer_")
  ds = data.load("mnist5k")
  tr, te = ds.train, ds.test
  path = os.path.join(work, "mnist5k.npz")
  import numpy as np  # pylint: disable=import-outside-toplevel
  np.savez(path, x_train=tr.batch(np.arange(len(tr))), y_train=tr.y,
           x_test=te.batch(np.arange(len(te))), y_test=te.y)
  out = os.path.join(work, "peer.json")
  cmd = [_PEER_PYTHON.value, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "_avalanche_peer.py"),
         f"--data={path}", f"--out={out}", f"--runs={','.join(runs)}"]
  load, t0 = os.getloadavg()[0], time.perf_counter()
  subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  with open(out) as f:
    got = json.load(f)
  got.update(process_wall_s=time.perf_counter() - t0, load_before=load,
             load_after=os.getloadavg()[0])
  shutil.rmtree(work, ignore_errors=True)
  return got


def main(argv) -> int:
  del argv
  if _CHILD.value:
    return _child()
  unknown = sorted(set(_RUNS.value) - set(RUNS))
  if unknown:
    raise app.UsageError(f"unknown --runs {unknown}; choose from {sorted(RUNS)}")
  if _PEER.value and not _PEER_PYTHON.value:
    raise app.UsageError("--peer=avalanche needs --peer_python=PYTHON, an interpreter with "
                         "avalanche-lib and torch (Avalanche is not a cljax dependency)")
  out = {"cpus": os.cpu_count(), "runs": {}}
  for name in _RUNS.value:
    cache = tempfile.mkdtemp(prefix="startup_cache_")
    try:
      for mode in _MODES.value:
        r = time_run(name, cache)
        out["runs"].setdefault(name, {})[mode] = r
        print_row(mode, r)
        print_functions(mode, r, _MIN_COMPILE.value)
        _write(out)  # after every run: a long invocation stopped early keeps what it measured
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  if "cold" in _MODES.value and "warm" in _MODES.value:
    for name, modes in out["runs"].items():
      print(f"{name}: warm / cold process wall {modes['warm']['wall_s'] / modes['cold']['wall_s']:.2f}")
  if _PEER.value:
    peer_runs = [r for r in _RUNS.value if r in ("er", "slda")]
    out["peer"] = run_peer(peer_runs)
    for name in peer_runs:
      for mode, r in out["runs"][name].items():
        for setting, p in out["peer"].get(name, {}).items():
          # Both sides as a user waits for them: a fresh process, imports included.
          theirs = p["wall_s"] + out["peer"]["import_s"]
          print(f"{name} {mode}: cljax process {r['wall_s']:.1f} s / avalanche {setting} "
                f"{theirs:.1f} s ({p['wall_s']:.1f} s + {out['peer']['import_s']:.1f} s of "
                f"imports) = {r['wall_s'] / theirs:.2f}")
  _write(out)
  return 0


def _write(out: dict) -> None:
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
