"""Kill -9 mid-run then --resume equals an uninterrupted run; 1 vs 8 fake CPU devices agree."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocess runs of the binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "tests", "configs", "tiny.py")

# `--dist loadfile` (scripts/test.sh) runs this whole file on one worker: the fixture runs once.


def _run(workdir, *extra, env=None, wait=True):
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), f"--config={CONFIG}",
         f"--workdir={workdir}", *extra]
  e = dict(os.environ, **(env or {}))
  e.setdefault("CLJAX_JAX_CACHE", os.path.expanduser("~/.cache/cljax/jax"))
  if wait:
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _matrices(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  return {k: (np.asarray([[np.nan if v is None else v for v in row]
                          for row in r["accuracy_matrix"]]),
              [p["accuracy"] for p in r["eval_points"]],
              [s["budget_used"] for s in r["steps"]])
          for k, r in res["runs"].items()}


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("full"))
  out = _run(wd)
  assert out.returncode == 0, out.stderr[-3000:]
  return _matrices(wd)


def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
  wd = str(tmp_path)
  proc = _run(wd, wait=False)
  ck = os.path.join(wd, "checkpoints", "er")
  deadline = time.time() + 300
  # Kill as soon as the second learner has finished at least one step (mid-run, mid-learner).
  while time.time() < deadline:
    if os.path.isdir(ck) and any(s.isdigit() for s in os.listdir(ck)):
      break
    if proc.poll() is not None:
      pytest.fail("run ended before it could be killed:\n" + proc.stdout.read()[-3000:])
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_done = sorted(int(s) for s in os.listdir(ck) if s.isdigit())
  assert steps_done and max(steps_done) < 4, steps_done  # really killed mid-stream
  out = _run(wd, "--resume")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed after step" in out.stdout
  got = _matrices(wd)
  assert got.keys() == uninterrupted.keys()
  for k in got:
    np.testing.assert_array_equal(got[k][0], uninterrupted[k][0], err_msg=k)
    assert got[k][1] == uninterrupted[k][1] and got[k][2] == uninterrupted[k][2]


def test_one_and_eight_devices_agree(uninterrupted, tmp_path):
  out = _run(str(tmp_path), "--config.num_devices=8",
             env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert out.returncode == 0, out.stderr[-3000:]
  got = _matrices(str(tmp_path))
  for k in got:
    # Sharded reductions may sum in another order: allow a rounding-level difference in
    # accuracy (one test example in a few hundred).
    np.testing.assert_allclose(got[k][0], uninterrupted[k][0], atol=0.01, err_msg=k)


def test_bad_config_key_and_names_exit_with_a_clear_message(tmp_path):
  out = _run(str(tmp_path), "--config.learners=finetune,nope")
  assert out.returncode == 2 and "valid learners" in out.stderr and "'er'" in out.stderr
  out = _run(str(tmp_path), "--config.stream.bogus=1")
  assert out.returncode != 0 and "bogus" in out.stderr


def test_bad_ordering_and_data_set_name_the_valid_ones(tmp_path):
  # The same errors the binary turns into exit code 2 (above), raised before any work is done.
  from cljax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  c = experiment.base_config()
  c.stream.ordering = "sideways"
  with pytest.raises(experiment.ConfigError, match="class_incremental"):
    experiment.run_experiment(c, str(tmp_path / "a"), log=lambda m: None)
  c = experiment.base_config()
  c.dataset = "imagenet"
  with pytest.raises(DataError, match="mnist5k"):
    experiment.run_experiment(c, str(tmp_path / "b"), log=lambda m: None)
