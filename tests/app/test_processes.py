"""Runs over several JAX processes (``jax.distributed``; on CPU through gloo), through the real
binary: ``run.py --config.num_processes=2`` starts both processes on this machine.

* 2 processes (1 CPU device each: the global batch split over 2 devices) against 1 process:
  SLDA identical in every result field and in its final statistics, bit for bit; the SGD learners
  (finetune, ER) equal to float tolerance (their gradients are summed in another order);
* a 2-process run stopped by SIGTERM (forwarded to both processes, which stop together and keep
  the checkpoint being written), resumed as 1 process: ends as the uninterrupted run;
* bad multi-process settings: one line each, before any process starts.
"""

import os
import signal
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.bench import faults

pytestmark = pytest.mark.slow  # subprocess runs of the binary, two processes each

LEARNERS = "--config.learners=finetune,er,slda"
SGD = ("finetune", "er")


def _run(workdir, *extra):
  return faults.run(faults.TINY, workdir, LEARNERS, *extra)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("one"))
  out = _run(wd)
  assert out.returncode == 0, out.stderr[-3000:]
  return wd, faults.results(wd)


def _final_state(workdir: str, run_name: str) -> dict:
  """The learner state of a run's newest checkpoint, as numpy arrays (read back by orbax)."""
  ck = os.path.join(workdir, "checkpoints", run_name)
  step = max(int(s) for s in os.listdir(ck) if s.isdigit())
  return ocp.StandardCheckpointer().restore(os.path.join(ck, str(step), "state"))


def _assert_close(got: dict, want: dict) -> None:
  assert list(got) == list(want)
  for k in got:
    if k in SGD:
      np.testing.assert_allclose(np.asarray(got[k]["accuracy_matrix"], float),
                                 np.asarray(want[k]["accuracy_matrix"], float), atol=0.01,
                                 err_msg=k)
      np.testing.assert_allclose([s["loss"] for s in got[k]["steps"]],
                                 [s["loss"] for s in want[k]["steps"]], rtol=1e-3, err_msg=k)
    else:
      assert got[k] == want[k], k  # every field: accuracy matrix, eval points, Ω, confusion


def test_two_processes_equal_one(one_process, tmp_path):
  want_dir, want = one_process
  wd = str(tmp_path)
  out = _run(wd, "--config.num_processes=2")
  assert out.returncode == 0, out.stderr[-3000:]
  _assert_close(faults.results(wd), want)
  a, b = _final_state(wd, "slda"), _final_state(want_dir, "slda")
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)  # statistics bit for bit
  # Only the primary wrote and printed: one table on stdout, process 1's output in its log.
  assert out.stdout.count("results: ") == 1
  with open(os.path.join(wd, "process_1.log")) as f:
    assert "results: " not in f.read()


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(l) for l in jax.tree.leaves(tree)]


def test_two_processes_stop_together_and_resume_as_one(one_process, tmp_path):
  _, want = one_process
  wd = str(tmp_path)
  proc = subprocess.Popen(faults.cmd(faults.TINY, wd, LEARNERS, "--config.num_processes=2"),
                          env=faults.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stdout:
    if line.startswith("[er] step 2/"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith(("[Gloo]", "W", "I"))]
  assert proc.returncode == 143, err[-3000:]
  assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM: run 'er'"), err[-3000:]
  res = _run(wd, "--resume")  # one process now
  assert res.returncode == 0, res.stderr[-3000:]
  _assert_close(faults.results(wd), want)


@pytest.mark.parametrize("args, fragment", [
    (["--config.num_processes=0"], "num_processes must be an int >= 1"),
    (["--config.num_processes=2", "--config.num_devices=3"], "leave num_devices at 0"),
    (["--process_id=0"], "go together"),
    (["--config.num_processes=2", "--coordinator_address=127.0.0.1:1", "--process_id=2"],
     "outside [0, 2)"),
])
def test_bad_multiprocess_settings_are_one_line(tmp_path, args, fragment):
  out = _run(str(tmp_path / "wd"), *args)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")
