"""Faults injected into the real binary, each resumed and compared with one uninterrupted run;
4 fake CPU devices agree with 1, and their checkpoints resume on 1 and on 8.

Faults (all on ``tests/configs/tiny.py``: digits, finetune then ER, 5 steps each):

* one chain of processes in one workdir, each started with ``--resume`` after the one before was
  stopped: SIGKILL at a random moment, SIGTERM, SIGKILL while a checkpoint is being written,
  SIGINT, SIGKILL again; the last one runs to the end;
* random bytes written into the newest step of a finished run; the newest two steps deleted;
* a full disk (a small tmpfs; root only), then the run resumed with room again.

"Identical" = every field of results.json but timings: accuracy matrix, eval points (anytime and
step ends, top-1 and top-5), budget per step, confusion matrix, precision/recall/F1, Ω.
"""

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from experiments.bench import faults

pytestmark = pytest.mark.slow  # subprocess runs of the binary

CONFIG = faults.TINY

# `--dist loadfile` (scripts/test.sh) runs this whole file on one worker: the fixture runs once.


def _run(workdir, *extra, env=None):
  return faults.run(CONFIG, workdir, *extra, extra_env=env)


def _assert_identical(got, want):
  assert faults.differences(got, want) == []


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("full"))
  out = _run(wd)
  assert out.returncode == 0, out.stderr[-3000:]
  return wd, faults.results(wd)


def test_faults_then_resume_end_identical(uninterrupted, tmp_path):
  _, want = uninterrupted
  wd = str(tmp_path)
  rng = np.random.default_rng(12)
  plan = [(signal.SIGKILL, ("lines", int(rng.integers(1, 4)))),
          (signal.SIGTERM, ("lines", 1)),
          (signal.SIGKILL, "write"),
          (signal.SIGINT, ("lines", 1)),
          (signal.SIGKILL, ("lines", 1))]
  log = []
  for sig, when in plan:
    r = faults.start_and_stop(CONFIG, wd, sig, when, rng)
    log.append((sig.name, when, r["status"], r["mid_write"]))
    assert r["stopped"], (log, r["stderr"][-2000:])  # the moment came before the run ended
    # SIGKILL: killed; SIGTERM/SIGINT: the checkpoint in flight finishes, exit 143/130, and one
    # line says what is saved and to continue with --resume
    assert faults.check_stop(sig, r) == "", (log, r["stderr"][-2000:])
  assert any(x[3] for x in log), log  # one SIGKILL hit a checkpoint write in flight
  out = _run(wd, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed after step" in out.stdout
  _assert_identical(faults.results(wd), want)


def test_corrupt_and_deleted_steps_then_resume_end_identical(uninterrupted, tmp_path):
  full, want = uninterrupted
  # 4 KiB of random bytes in the middle of the largest data file of ER's newest step
  wd = str(tmp_path / "corrupt")
  shutil.copytree(full, wd)
  ck = os.path.join(wd, "checkpoints", "er")
  step = faults.newest_step(ck)
  faults.corrupt_bytes(os.path.join(ck, str(step)), np.random.default_rng(3))
  out = _run(wd, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"[er] resumed after step {step - 1}" in out.stdout, out.stdout
  assert "unreadable" in out.stderr and os.path.isdir(os.path.join(ck, f"unreadable.{step}"))
  _assert_identical(faults.results(wd), want)
  # the newest two steps of both runs deleted (lost disk, or killed during their saves)
  wd = str(tmp_path / "deleted")
  shutil.copytree(full, wd)
  for run in ("finetune", "er"):
    ck = os.path.join(wd, "checkpoints", run)
    for s in sorted(int(x) for x in os.listdir(ck) if x.isdigit())[-2:]:
      shutil.rmtree(os.path.join(ck, str(s)))
  out = _run(wd, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "[finetune] resumed after step 2" in out.stdout, out.stdout
  _assert_identical(faults.results(wd), want)


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB tmpfs (root only): room for about one step of finetune's state."""
  d = tmp_path / "disk"
  d.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True
  ).returncode != 0:
    pytest.skip("cannot mount a small file system here (needs root)")
  try:
    yield str(d)
  finally:
    subprocess.run(["umount", str(d)], check=True)


def test_disk_full_is_one_line_and_resume_ends_identical(uninterrupted, small_disk):
  _, want = uninterrupted
  wd = os.path.join(small_disk, "wd")
  out = _run(wd)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith("error: no room left for checkpoint step") and "--resume" in lines[0]
  subprocess.run(["mount", "-o", "remount,size=64m", small_disk], check=True)
  out = _run(wd, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  _assert_identical(faults.results(wd), want)


def _devices(n: int) -> dict:
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def _assert_close(got, want):
  assert list(got) == list(want)
  for k in got:
    # Sharded reductions may sum in another order: allow a rounding-level difference in
    # accuracy (one test example in a few hundred).
    np.testing.assert_allclose(np.asarray(got[k]["accuracy_matrix"], float),
                               np.asarray(want[k]["accuracy_matrix"], float), atol=0.01,
                               err_msg=k)


def test_four_device_checkpoints_resume_on_one_and_eight(uninterrupted, tmp_path):
  # Checkpoints hold whole arrays (gathered to the host), so a step saved on 4 devices is
  # placed on any mesh when it is restored.
  _, want = uninterrupted
  four = str(tmp_path / "four")
  out = _run(four, "--config.num_devices=4", env=_devices(4))
  assert out.returncode == 0, out.stderr[-3000:]
  _assert_close(faults.results(four), want)  # 4 devices agree with 1
  faults._delete_newest(["finetune", "er"], 2)(four, None)  # keeps step 2 of 2, 3, 4
  for n in (1, 8):
    wd = str(tmp_path / f"on{n}")
    shutil.copytree(four, wd)
    out = _run(wd, "--resume", f"--config.num_devices={n}", env=_devices(8))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("resumed after step 2") == 2, out.stdout[-2000:]
    _assert_close(faults.results(wd), want)


def test_the_executable_reports_bad_input_in_one_line(tmp_path):
  # The in-process table (test_bad_inputs.py) through the real executable, for flags that used
  # to fail inside absl/ml_collections before main ran.
  for args, fragment in ((["--config.learners=finetune,nope"], "valid learners"),
                         (["--config.stream.bogus=1"], "'stream.bogus'"),
                         (["--config.bogus=1"], "valid keys")):
    out = _run(str(tmp_path / "wd"), *args)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error: ") and fragment in lines[0]
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")
