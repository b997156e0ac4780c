r"""Fault campaign: faults injected into runs of ``experiments/run.py``, each resumed and compared
with one uninterrupted run.

    python experiments/bench/faults.py --out=/tmp/faults.json
    python experiments/bench/faults.py --config=experiments/configs/demo.py --seed=3

On ``--config`` (default ``tests/configs/tiny.py``: digits, finetune then ER, 5 steps each), the
faults of issue 12's measurement:

* a chain in one workdir, each process started with ``--resume`` after the one before was
  stopped: 6 SIGKILLs at random moments (2 of them as soon as a checkpoint write is in flight),
  one SIGTERM and one SIGINT (which must end with exit status 143 / 130 and one line on stderr);
* 3 corruptions of a finished run, each on a fresh copy: 4 KiB of random bytes in the middle of
  the largest data file of ER's newest step; the newest step's metadata edited (valid JSON,
  another accuracy); every file of finetune's newest step truncated;
* 2 deletions: ER's newest step; the newest two steps of every run;
* a full disk: the run in a 3 MiB tmpfs (root only; skipped otherwise), then resumed with room.

"Identical": every field of results.json but timings (accuracy matrix, eval points, budget per
step, confusion matrix, precision/recall/F1, Ω). Prints each fault, its outcome, and
"faults injected N / resumed identical M".
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
TIMINGS = ("wall_s", "examples_per_s", "latency_ms")


def cmd(config: str, workdir: str, *extra) -> list:
  return [sys.executable, os.path.join(ROOT, "experiments", "run.py"), f"--config={config}",
          f"--workdir={workdir}", *extra]


def env(extra=None) -> dict:
  e = dict(os.environ, **(extra or {}))
  e.setdefault("CLJAX_JAX_CACHE", os.path.expanduser("~/.cache/cljax/jax"))
  return e


def run(config: str, workdir: str, *extra, extra_env=None) -> subprocess.CompletedProcess:
  return subprocess.run(cmd(config, workdir, *extra), env=env(extra_env), capture_output=True,
                        text=True, timeout=1800)


def without_timings(v):
  if isinstance(v, dict):
    return {k: without_timings(x) for k, x in v.items() if k not in TIMINGS}
  if isinstance(v, list):
    return [without_timings(x) for x in v]
  return v


def results(workdir: str) -> dict:
  """results.json's runs without timing fields."""
  with open(os.path.join(workdir, "results.json")) as f:
    return without_timings(json.load(f)["runs"])


def differences(got: dict, want: dict) -> list:
  """The (run, field) pairs where two ``results`` differ; [] when identical."""
  if list(got) != list(want):
    return [("runs", f"{list(got)} != {list(want)}")]
  return [(name, key) for name in want for key in sorted(set(got[name]) | set(want[name]))
          if got[name].get(key) != want[name].get(key)]


def _tmp_dirs(workdir: str) -> set:
  """orbax's folders of checkpoint writes in flight (or cut off), as (path, creation time)."""
  out = set()
  for p in glob.glob(os.path.join(workdir, "checkpoints", "*", "*.orbax-checkpoint-tmp*")):
    try:
      out.add((p, os.stat(p).st_ctime_ns))
    except FileNotFoundError:  # finished (renamed) meanwhile
      pass
  return out


def start_and_stop(config: str, workdir: str, sig, when, rng) -> dict:
  """Starts ``run.py --resume`` and sends ``sig`` at ``when``: ("lines", n) = after the n-th
  step line of this process plus a random 0-40 ms; "write" = as soon as a checkpoint write is in
  flight. Returns its status, stdout, stderr, whether it was stopped and whether a write was in
  flight when it died."""
  stale = _tmp_dirs(workdir)  # left by an earlier kill: not this process's writes
  proc = subprocess.Popen(cmd(config, workdir, "--resume"), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  stopped, lines = False, []
  if when == "write":
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
      if _tmp_dirs(workdir) - stale:
        proc.send_signal(sig)
        stopped = True
        break
      time.sleep(0.0005)
  else:
    left = when[1]
    for line in proc.stdout:  # a step line is printed once that step's save is handed over
      lines.append(line)
      if line.startswith("[") and " step " in line:
        left -= 1
        if left == 0:
          time.sleep(rng.uniform(0, 0.04))
          proc.send_signal(sig)
          stopped = True
          break
  out, err = proc.communicate(timeout=600)
  return {"status": proc.returncode, "stdout": "".join(lines) + out, "stderr": err,
          "stopped": stopped, "mid_write": stopped and bool(_tmp_dirs(workdir) - stale)}


def check_stop(sig, r: dict) -> str:
  """'' if a stopped process ended as ``sig`` should, else what was wrong."""
  if sig == signal.SIGKILL:
    return "" if r["status"] == -signal.SIGKILL else f"status {r['status']}"
  lines = [l for l in r["stderr"].splitlines() if l.strip()]
  if r["status"] != 128 + sig:
    return f"status {r['status']}, wanted {128 + sig}"
  if len(lines) != 1 or not lines[0].startswith(f"stopped by {sig.name}") or \
      "--resume" not in lines[0]:
    return f"stderr {lines[-3:]}"
  return ""


def newest_step(ckdir: str) -> int:
  return max(int(s) for s in os.listdir(ckdir) if s.isdigit())


def corrupt_bytes(step_dir: str, rng, n: int = 4096) -> str:
  """Writes ``n`` random bytes into the middle of the step's largest data file; returns it."""
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.seek(max(os.path.getsize(victim) // 2 - n // 2, 0))
    f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
  return victim


def _edit_meta(step_dir: str, rng) -> None:
  del rng
  path = os.path.join(step_dir, "meta", "metadata")
  with open(path) as f:
    item = json.load(f)
  meta = json.loads(item["meta"])
  meta["steps"][-1]["accuracy"] = 0.999  # valid JSON, another figure
  item["meta"] = json.dumps(meta, sort_keys=True)
  with open(path, "w") as f:
    json.dump(item, f)


def _truncate_all(step_dir: str, rng) -> None:
  del rng
  for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"\0garbage")


def _delete_newest(runs, count):
  def fault(workdir, rng):
    del rng
    for run_name in runs:
      ck = os.path.join(workdir, "checkpoints", run_name)
      for s in sorted(int(x) for x in os.listdir(ck) if x.isdigit())[-count:]:
        shutil.rmtree(os.path.join(ck, str(s)))
  return fault


def _on_newest(run_name, fn):
  def fault(workdir, rng):
    ck = os.path.join(workdir, "checkpoints", run_name)
    fn(os.path.join(ck, str(newest_step(ck))), rng)
  return fault


def campaign(config: str, base: str, seed: int, log=print) -> list:
  """Runs the whole campaign (module docstring) in folder ``base``; returns one dict per fault:
  name, injected, identical, note."""
  rng = np.random.default_rng(seed)
  full = os.path.join(base, "full")
  out = run(config, full)
  if out.returncode != 0:
    raise RuntimeError(f"the uninterrupted run failed:\n{out.stderr[-3000:]}")
  want = results(full)
  rows = []

  def record(name, injected, ok, note=""):
    rows.append({"fault": name, "injected": injected, "identical": ok, "note": note})
    log(f"{name:<44} injected={injected!s:<5} identical={ok!s:<5} {note}")

  # The chain: stops at random moments, each followed by a resume.
  chain = os.path.join(base, "chain")
  plan = [(signal.SIGKILL, ("lines", int(rng.integers(1, 4)))), (signal.SIGKILL, "write"),
          (signal.SIGTERM, ("lines", 1)), (signal.SIGKILL, ("lines", 1)),
          (signal.SIGKILL, "write"), (signal.SIGINT, ("lines", 1)),
          (signal.SIGKILL, ("lines", 2)), (signal.SIGKILL, ("lines", 1))]
  done = []
  for sig, when in plan:
    r = start_and_stop(config, chain, sig, when, rng)
    if not r["stopped"]:
      break
    bad = check_stop(sig, r)
    where = "during a checkpoint write" if r["mid_write"] else f"at {when}"
    done.append((f"{sig.name} {where}", bad))
  end = run(config, chain, "--resume")
  ok = end.returncode == 0 and not differences(results(chain), want)
  for name, bad in done:
    record(name, True, ok and not bad, bad)
  for sig, when in plan[len(done):]:
    record(f"{sig.name} at {when}", False, False, "the run ended first")

  # Corruptions and deletions of a finished run, each on a fresh copy.
  for name, fault in (
      ("4 KiB random bytes in ER's newest step", _on_newest("er", corrupt_bytes)),
      ("ER's newest metadata edited (valid JSON)", _on_newest("er", _edit_meta)),
      ("every file of finetune's newest step cut", _on_newest("finetune", _truncate_all)),
      ("ER's newest step deleted", _delete_newest(["er"], 1)),
      ("newest two steps of every run deleted", _delete_newest(["finetune", "er"], 2))):
    wd = os.path.join(base, name.split()[0] + str(len(rows)))
    shutil.copytree(full, wd)
    fault(wd, rng)
    r = run(config, wd, "--resume")
    diff = differences(results(wd), want) if r.returncode == 0 else [("status", r.returncode)]
    record(name, True, not diff, str(diff[:3]) if diff else "")

  # A full disk, then room again.
  disk = os.path.join(base, "disk")
  os.makedirs(disk)
  if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", disk],
                                          capture_output=True).returncode == 0:
    try:
      wd = os.path.join(disk, "wd")
      r = run(config, wd)
      lines = [l for l in r.stderr.splitlines() if l.strip()]
      one_line = r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
      subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
      r2 = run(config, wd, "--resume")
      ok = one_line and r2.returncode == 0 and not differences(results(wd), want)
      record("disk full (3 MiB tmpfs), then room", True, ok,
             "" if one_line else f"status {r.returncode}, {len(lines)} stderr lines")
    finally:
      subprocess.run(["umount", disk], check=False)
  else:
    record("disk full", False, False, "needs root to mount a small tmpfs")
  return rows


def main(argv):
  del argv
  F = flags.FLAGS  # pylint: disable=invalid-name
  base = tempfile.mkdtemp(prefix="cljax_faults_")
  t0 = time.perf_counter()
  try:
    rows = campaign(F.config, base, F.seed)
  finally:
    shutil.rmtree(base, ignore_errors=True)
  injected = sum(r["injected"] for r in rows)
  same = sum(r["injected"] and r["identical"] for r in rows)
  print(f"faults injected {injected} / resumed identical {same} "
        f"({time.perf_counter() - t0:.0f}s)")
  if F.out:
    with open(F.out, "w") as f:
      json.dump({"rows": rows, "injected": injected, "identical": same,
                 "config": F.config, "seed": F.seed, "load_avg": os.getloadavg()},
                f, indent=1)


if __name__ == "__main__":
  # Defined here, not at import: the fault tests import this module beside other binaries.
  flags.DEFINE_string("config", TINY, "Experiment config of the runs.")
  flags.DEFINE_integer("seed", 12, "Seed of the random moments and bytes.")
  flags.DEFINE_string("out", None, "Write the rows as JSON here.")
  app.run(main)
