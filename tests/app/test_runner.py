"""The runner end to end on real data: ER vs fine-tuning, determinism, resume, corrupt steps."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from cljax.app import experiment

# `--dist loadfile` (scripts/test.sh) runs this whole file on one worker: the fixture runs once.


def small_config(learners="finetune,er", **over):
  c = experiment.base_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.learners = learners
  c.stream.batch_size = 64
  c.budget.passes_per_step = 60
  c.hparams.finetune = dict(lr=3e-3)
  c.hparams.er = dict(lr=3e-3, memory_size=200)
  c.hparams.offline = dict(lr=3e-3, epochs_per_step=6.0)
  c.eval.every_examples = 300
  c.plots = False
  for k, v in over.items():
    node, *rest = k.split(".")
    if rest:
      c[node][rest[0]] = v
    else:
      c[k] = v
  return c


def _acc(results):
  return {k: np.asarray([[np.nan if v is None else v for v in row]
                         for row in r["accuracy_matrix"]]) for k, r in results["runs"].items()}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("run"))
  return wd, experiment.run_experiment(small_config("finetune,er,offline", plots=True), wd,
                                       log=lambda m: None)


def test_er_beats_finetune_and_offline_is_best(digits_run):
  _, res = digits_run
  runs = res["runs"]
  ft, er, off = (runs[k]["final_accuracy"] for k in ("finetune", "er", "offline"))
  assert ft < 0.35, ft             # fine-tuning forgets all but the last task
  assert er > ft + 0.35, (er, ft)  # replay keeps old tasks
  assert off >= er - 0.02, (off, er)
  assert runs["finetune"]["forgetting"] > runs["er"]["forgetting"]
  assert runs["offline"]["omega"] == pytest.approx(1.0)
  assert 0 < runs["er"]["omega"] <= 1.1


def test_results_json_and_plots(digits_run):
  wd, res = digits_run
  with open(os.path.join(wd, "results.json")) as f:
    disk = json.load(f)
  er = disk["runs"]["er"]
  for key in ("final_accuracy", "average_accuracy", "forgetting", "omega", "accuracy_matrix",
              "steps", "final_top5", "confusion_matrix", "mean_per_class_accuracy"):
    assert key in er, key
  assert len(er["steps"]) == 5
  assert set(er["steps"][0]) >= {"step", "accuracy", "examples_seen", "wall_s", "budget_used"}
  # budget: the runner hands ER exactly the per-step budget
  assert all(s["budget_used"] == 60 for s in er["steps"])
  assert er["accuracy_matrix"][0][1] is None  # task 1 not seen after step 0
  pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(wd, "plots", "*.png")))
  assert "accuracy.png" in pngs and "confusion_er.png" in pngs
  assert "accuracy_matrix_offline.png" in pngs
  # anytime evaluation: more eval points than steps
  assert len(er["eval_points"]) > len(er["steps"])
  assert len(os.listdir(os.path.join(wd, "checkpoints", "er"))) >= 2


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
def test_same_seed_same_results_other_seed_differs(tmp_path):
  a = experiment.run_experiment(small_config("er"), str(tmp_path / "a"), log=lambda m: None)
  b = experiment.run_experiment(small_config("er"), str(tmp_path / "b"), log=lambda m: None)
  c = experiment.run_experiment(small_config("er", seed=1), str(tmp_path / "c"),
                                log=lambda m: None)
  np.testing.assert_array_equal(_acc(a)["er"], _acc(b)["er"])
  assert not np.array_equal(_acc(a)["er"], _acc(c)["er"], equal_nan=True)


def test_existing_checkpoints_need_resume_and_are_kept(tmp_path):
  wd = str(tmp_path)
  cfg = small_config("finetune")
  experiment.run_experiment(cfg, wd, log=lambda m: None)
  before = sorted(os.listdir(os.path.join(wd, "checkpoints", "finetune")))
  with pytest.raises(Exception, match="--resume"):
    experiment.run_experiment(cfg, wd, log=lambda m: None)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints", "finetune"))) == before


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  """Truncate every file of the newest step: resume warns, restarts from the step before it and
  ends with exactly the uninterrupted results."""
  wd = str(tmp_path)
  cfg = small_config("er")
  full = experiment.run_experiment(cfg, wd, log=lambda m: None)
  ck = os.path.join(wd, "checkpoints", "er")
  latest = os.path.join(ck, str(max(int(s) for s in os.listdir(ck) if s.isdigit())))
  for f in glob.glob(os.path.join(latest, "**", "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"\0garbage")
  logs = []
  again = experiment.run_experiment(cfg, wd, resume=True, log=logs.append)
  assert any("resumed after step 3" in m for m in logs), logs
  np.testing.assert_array_equal(_acc(full)["er"], _acc(again)["er"])


def test_half_written_step_is_ignored(tmp_path):
  wd = str(tmp_path)
  cfg = small_config("finetune")
  full = experiment.run_experiment(cfg, wd, log=lambda m: None)
  ck = os.path.join(wd, "checkpoints", "finetune")
  # A crash during the save of step 4 leaves a temporary folder and no finished step 4.
  shutil.move(os.path.join(ck, "4"), os.path.join(ck, "4.orbax-checkpoint-tmp-123"))
  logs = []
  again = experiment.run_experiment(cfg, wd, resume=True, log=logs.append)
  assert any("resumed after step 3" in m for m in logs), logs
  np.testing.assert_array_equal(_acc(full)["finetune"], _acc(again)["finetune"])


def test_er_learns_new_classes_during_a_step(digits_run):
  # anytime evaluation mid-step: ER trains on each batch as it arrives, so its accuracy on the
  # seen classes (the new ones included) rises within a step instead of waiting for its end
  _, res = digits_run
  pts = res["runs"]["er"]["eval_points"]
  rises = []
  for t in range(1, 5):
    mid = [p["accuracy"] for p in pts if p["step"] == t]
    if len(mid) >= 2:
      rises.append(mid[-1] - mid[0])
  assert rises and np.mean(rises) > 0.05, rises


def test_learner_hparams_are_checked_before_any_training(tmp_path):
  c = small_config("er,finetune")
  c.hparams.finetune = dict(lrr=1e-3)
  with pytest.raises(experiment.ConfigError, match=r"hparams.finetune: .*'lrr'.*valid: .*'lr'"):
    experiment.run_experiment(c, str(tmp_path / "a"), log=lambda m: None)
  c = small_config("er,finetune")
  c.hparams.finetune = dict(batch_size=0)  # a bad value: refused when built, before er trains
  with pytest.raises(experiment.ConfigError, match="batch_size must be >= 1"):
    experiment.run_experiment(c, str(tmp_path / "b"), log=lambda m: None)
  assert not os.path.exists(os.path.join(str(tmp_path / "b"), "checkpoints", "er"))


def test_checkpoint_holds_the_metadata_as_it_was_at_save(tmp_path):
  # The writer thread serialises later: the saved metadata must not see later appends.
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cljax.app.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  meta = {"points": [1]}
  with Checkpointer(str(tmp_path)) as ck:
    ck.save(0, {"a": jnp.ones(3)}, meta)
    meta["points"].append(2)
    ck.wait()
    step, state, back = ck.restore_latest({"a": jnp.zeros(3)})
  assert step == 0 and back == {"points": [1]}
  np.testing.assert_array_equal(state["a"], np.ones(3))


@pytest.mark.slow  # ER runs and their resumes (~4 s each alone)
@pytest.mark.parametrize("how", ["raised", "swallowed", "converted"])
def test_interrupt_lets_the_checkpoint_in_flight_finish_and_resume_ends_identical(
    digits_run, tmp_path, how):
  # What the binaries' SIGTERM/SIGINT handler does, here from the log line printed once step
  # 2's save has been handed to the writer thread: that save completes before the run stops.
  # An exception raised by a signal handler can also be dropped (inside a garbage-collector
  # callback) or come out of library code as another exception: the runner still stops.
  import signal  # pylint: disable=import-outside-toplevel
  from cljax.app import runner  # pylint: disable=import-outside-toplevel

  def log(msg):
    if msg.startswith("[er] step 3/") and runner.stop_requested() is None:
      runner.request_stop(signal.SIGTERM)
      if how == "raised":
        raise runner.Interrupted(signal.SIGTERM)
      if how == "converted":
        raise RuntimeError("a library's own error")

  wd = str(tmp_path)
  try:
    with pytest.raises(runner.Interrupted) as e:
      experiment.run_experiment(small_config("er"), wd, log=log)
  finally:
    runner.request_stop(None)
  # swallowed: the stop comes after the next chunk of batches, before step 3 ends
  assert (e.value.run_name, e.value.saved_step, e.value.num_steps) == ("er", 2, 5)
  assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints", "er"))
                if s.isdigit())[-1] == 2
  again = experiment.run_experiment(small_config("er"), wd, resume=True, log=lambda m: None)
  want = digits_run[1]["runs"]["er"]
  for key in ("accuracy_matrix", "eval_points", "confusion_matrix", "final_top5"):
    assert again["runs"]["er"][key] == want[key], key


def test_omega_reference_is_a_checked_config_key(digits_run, tmp_path):
  """eval.omega_reference names the run Ω compares against (default offline, recorded per run);
  a name that is no run is refused before anything trains."""
  assert digits_run[1]["runs"]["er"]["omega_reference"] == "offline"
  c = small_config("finetune,er", **{"eval.omega_reference": "offlin"})
  with pytest.raises(experiment.ConfigError, match="omega_reference 'offlin'.*valid: "
                                                    r"\['er', 'finetune'\]"):
    experiment.run_experiment(c, str(tmp_path), log=lambda m: None)
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))


def test_info_extra_reaches_the_step_records_and_the_loggers(tmp_path):
  """Every Info.extra figure is recorded per step as the mean over the step's calls that
  reported it (update and end_of_step), in results and as ``extra/<name>`` in the loggers."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cljax import data as data_lib  # pylint: disable=import-outside-toplevel
  from cljax import learners  # pylint: disable=import-outside-toplevel
  from cljax.app import runner  # pylint: disable=import-outside-toplevel

  stream = data_lib.make_stream(data_lib.load("digits"), "class_incremental",
                                classes_per_step=5, num_steps=2, seed=0)
  base = learners.get("finetune", num_classes=10, model="mlp", checked=False)

  def update(state, batch, key):  # rows: valid rows of the batch; one: 1 per call
    state, info = base.update(state, batch, key)
    return state, info._replace(extra={"rows": jnp.sum(batch["valid"]), "one": jnp.float32(1)})

  def end_of_step(state, key, budget=None, progress=None):
    state, info = base.end_of_step(state, key, budget, progress=progress)
    return state, info._replace(extra={"one": jnp.float32(3), "nan": jnp.float32(jnp.nan)})

  learner = base._replace(update=update, end_of_step=end_of_step)

  class Rec:
    def __init__(self):
      self.steps = []

    def log_step(self, run, step, examples_seen, metrics):
      self.steps.append(metrics)

    def log_eval(self, *a):
      pass

  rec = Rec()
  opts = runner.RunOptions(batch_size=64, budget=2)
  res = runner.run_learner("ft", learner, stream, opts, str(tmp_path), log=lambda m: None,
                           logger=rec)
  for t, s in enumerate(res["steps"]):
    n = len(stream.steps[t])
    calls = -(-n // 64)  # update calls of the step, then one end_of_step
    assert s["extra"]["rows"] == pytest.approx(n / calls)  # only update reports rows
    assert s["extra"]["one"] == pytest.approx((calls * 1 + 3) / (calls + 1))
    assert s["extra"]["nan"] is None  # reported, never finite
    assert rec.steps[t]["extra/rows"] == s["extra"]["rows"]
    assert rec.steps[t]["accuracy"] == s["accuracy"]


def test_checkpoints_of_another_state_layout_are_refused_in_one_line(tmp_path, capsys):
  """A workdir or checkpoint from before typed states (state layout 1) is refused on --resume
  with one line naming the fix, never loaded and never moved aside as unreadable."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cljax.app import checkpoint, cli, workdir  # pylint: disable=import-outside-toplevel
  wd = str(tmp_path / "w")
  cfg = small_config("finetune", **{"stream.num_steps": 2, "stream.classes_per_step": 5})
  experiment.run_experiment(cfg, wd, log=lambda m: None)
  ck = os.path.join(wd, "checkpoints", "finetune")
  before = sorted(os.listdir(ck))
  # The workdir record of an older cljax: no state_layout (its runs' states were dicts).
  path = os.path.join(wd, "experiment.json")
  with open(path) as f:
    record = json.load(f)
  assert record["state_layout"] == {"finetune": workdir.STATE_LAYOUT}
  del record["state_layout"]
  with open(path, "w") as f:
    json.dump(record, f)
  status = cli.guarded(lambda: experiment.run_experiment(cfg, wd, resume=True,
                                                         log=lambda m: None))
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith("error: ") and "layout 1" in err[0] and "new --workdir" in err[0]
  assert sorted(os.listdir(ck)) == before
  # A checkpoint written with another layout (its metadata says so): refused by the
  # checkpointer itself, which loads nothing and moves nothing aside.
  other = str(tmp_path / "ck")
  with checkpoint.Checkpointer(other, state_layout=1) as old:
    old.save(0, {"params": jnp.ones(3)}, {"step": 0})
  with checkpoint.Checkpointer(other) as new:
    with pytest.raises(checkpoint.StateLayoutError, match="layout 1.*new --workdir"):
      new.restore_latest({"params": jnp.zeros(3)})
  assert sorted(os.listdir(other)) == ["0"]
