"""One writer per workdir (``cljax.app.workdir.lock``), with real processes.

* fast: a process holding the lock refuses this one, naming its pid and host; once that process
  is SIGKILLed its lock is stale and is taken over (the takeover names the dead holder);
* slow: the real binary: a run in progress, the same command with ``--resume`` refused with one
  line and exit status 2 while the first goes on; the first SIGKILLed, ``--resume`` finishes the
  run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cljax.app import workdir as workdir_lib
from cljax.app.config_schema import ConfigError
from experiments.bench import faults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HOLD = ("import sys, time; sys.path.insert(0, {root!r}); "
         "from cljax.app import workdir as w\n"
         "with w.lock({wd!r}):\n  print('held', flush=True); time.sleep(600)")


def _holder(wd):
  p = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, wd=str(wd))],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_second_writer_refused_and_stale_lock_taken_over(tmp_path):
  p = _holder(tmp_path)
  try:
    with pytest.raises(ConfigError) as e:
      with workdir_lib.lock(str(tmp_path)):
        pass
    msg = str(e.value)
    assert f"pid {p.pid} on host {socket.gethostname()}" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=f"pid {p.pid}"):
      workdir_lib.check_unlocked(str(tmp_path))  # the launcher's check
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  # The holder died without releasing: its record is still in the file, its flock is gone.
  with open(tmp_path / workdir_lib.LOCK_FILE) as f:
    assert json.load(f)["pid"] == p.pid
  logged = []
  with workdir_lib.lock(str(tmp_path), logged.append):
    with open(tmp_path / workdir_lib.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()
    workdir_lib.check_unlocked(str(tmp_path))  # our own lock: no refusal
    with workdir_lib.lock(str(tmp_path)):  # re-entrant in one process
      pass
  assert len(logged) == 1 and f"pid {p.pid}" in logged[0]
  # Released cleanly: empty, and free for the next run.
  assert (tmp_path / workdir_lib.LOCK_FILE).read_text() == ""
  with workdir_lib.lock(str(tmp_path), logged.append):
    pass
  assert len(logged) == 1


def _untimed(runs):
  """results without the batch-1 latency (a timing, like wall_s)."""
  return {k: {f: v for f, v in r.items() if f != "latency_ms"} for k, r in runs.items()}


def _start(wd, *args):
  """run.py on the tiny config, started; returns once its first step is saved (the process is
  then paused with SIGSTOP, so it is surely still running when the next one starts)."""
  p = subprocess.Popen(faults.cmd(faults.TINY, wd, *args), env=faults.env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in p.stdout:
    if line.startswith("[finetune] step 1/"):
      p.send_signal(signal.SIGSTOP)
      return p
  raise AssertionError(p.stderr.read()[-2000:])


@pytest.mark.slow
def test_binary_second_run_refused_then_resume_after_sigkill(tmp_path):
  wd, wd2 = str(tmp_path / "wd"), str(tmp_path / "wd2")
  first = _start(wd)
  try:
    t0 = time.time()
    second = faults.run(faults.TINY, wd, "--resume")
    refused_s = time.time() - t0
    assert second.returncode == 2, second.stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"pid {first.pid}" in err[0], err
    assert "results: " not in second.stdout
    first.send_signal(signal.SIGCONT)
    _, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1[-2000:]  # the first run finishes untouched
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  want = faults.results(wd)
  killed = _start(wd2)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert not os.path.exists(os.path.join(wd2, "results.json"))
  out = faults.run(faults.TINY, wd2, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "took over the lock" in out.stdout and f"pid {killed.pid}" in out.stdout
  assert faults.differences(_untimed(faults.results(wd2)), _untimed(want)) == []  # as if never killed
  print(f"second writer refused in {refused_s:.1f}s")
