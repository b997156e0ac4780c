"""TensorBoard and CSV loggers: event files (tensorboardX's writer) read back by TensorBoard
itself and by our reader; the CSV's columns, including the validation and test losses."""

import csv
import glob
import json
import os
import struct

import numpy as np
import pytest

from cljax.eval import loggers


def write_two_runs(workdir):
  with loggers.make("tensorboard,csv", str(workdir)) as log:
    for t, (acc, loss) in enumerate([(0.9, 0.31), (0.75, 0.52), (0.7, float("nan"))]):
      log.log_step("slda", t, 100 * (t + 1), {"accuracy": acc, "loss": loss,
                                                "budget_used": 0.0, "examples_per_s": 1e4,
                                                "val_loss": 2 * acc, "val_accuracy": acc - 0.1,
                                                "test_loss": None if t == 1 else loss + 1})
      log.log_eval("slda", t, 100 * (t + 1) - 50, acc + 0.01, {"test_loss": 3.0 + t})
    log.log_step("er", 0, 100, {"accuracy": 0.5, "loss": None, "budget_used": 150.0})


EXPECTED = {  # tag -> [(examples seen, value)] of run "slda" (NaN loss skipped)
    "step/accuracy": [(100, 0.9), (200, 0.75), (300, 0.7)],
    "step/loss": [(100, 0.31), (200, 0.52)],
    "step/budget_used": [(100, 0.0), (200, 0.0), (300, 0.0)],
    "step/examples_per_s": [(100, 1e4), (200, 1e4), (300, 1e4)],
    "step/val_loss": [(100, 1.8), (200, 1.5), (300, 1.4)],
    "step/val_accuracy": [(100, 0.8), (200, 0.65), (300, 0.6)],
    "step/test_loss": [(100, 1.31)],  # None at step 1, NaN at step 2: skipped
    "anytime/accuracy": [(50, 0.91), (150, 0.76), (250, 0.71)],
    "anytime/test_loss": [(50, 3.0), (150, 4.0), (250, 5.0)],
}


def test_event_files_read_back_by_tensorboard(tmp_path):
  ea = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator",
      reason="tensorboard (in the test extra) is the independent reader of event files")
  write_two_runs(tmp_path)
  acc = ea.EventAccumulator(str(tmp_path / "tensorboard" / "slda"))
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == sorted(EXPECTED)
  for tag, want in EXPECTED.items():
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in got] == [s for s, _ in want], tag
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
  er = ea.EventAccumulator(str(tmp_path / "tensorboard" / "er"))
  er.Reload()
  assert sorted(er.Tags()["scalars"]) == ["step/accuracy", "step/budget_used"]
  assert er.Scalars("step/budget_used")[0].value == 150.0


def test_event_files_read_back_by_our_reader_and_csv(tmp_path):
  write_two_runs(tmp_path)
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "slda" / "events.out.tfevents.*"))
  rows = loggers.read_events(path)
  for tag, want in EXPECTED.items():
    got = [(s, v) for s, t, v in rows if t == tag]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
  with open(tmp_path / "metrics.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["run"], r["kind"], r["examples_seen"]) for r in table] == [
      ("slda", "step", "100"), ("slda", "eval", "50"), ("slda", "step", "200"),
      ("slda", "eval", "150"), ("slda", "step", "300"), ("slda", "eval", "250"),
      ("er", "step", "100")]
  assert table[0]["loss"] == "0.31" and table[4]["loss"] == "" and table[6]["loss"] == ""
  assert float(table[6]["budget_used"]) == 150.0
  assert [r["val_loss"] for r in table[:5:2]] == ["1.8", "1.5", "1.4"]
  assert [r["test_loss"] for r in table] == ["1.31", "3.0", "", "4.0", "", "5.0", ""]
  assert table[0]["val_accuracy"] == "0.8" and table[1]["val_accuracy"] == ""
  # a corrupted payload byte is caught by the CRC
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF
  bad = tmp_path / "bad.tfevents"
  bad.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="bad payload CRC"):
    loggers.read_events(str(bad))
  # a record cut mid-write (a killed run) loses only that record (the last evaluation point's
  # two scalars)
  (tmp_path / "cut.tfevents").write_bytes(open(path, "rb").read()[:-7])
  assert rows[-2:] == [(250, "anytime/accuracy", pytest.approx(0.71)),
                       (250, "anytime/test_loss", 5.0)]
  assert loggers.read_events(str(tmp_path / "cut.tfevents")) == rows[:-2]


def test_events_are_on_disk_while_the_run_goes(tmp_path):
  """Every call is flushed: a live TensorBoard (or a killed run) sees each event at once; the
  file is named per process, so a resumed run in the same second writes a file of its own."""
  log = loggers.TensorBoardLogger(str(tmp_path))
  log.log_step("er", 0, 40, {"accuracy": 0.5, "val_loss": 1.25})
  (path,) = glob.glob(str(tmp_path / "er" / "events.out.tfevents.*"))
  assert path.endswith(f".{os.getpid()}.cljax")
  assert loggers.read_events(path) == [(40, "step/accuracy", 0.5), (40, "step/val_loss", 1.25)]
  log.log_eval("er", 0, 50, 0.25)
  assert loggers.read_events(path)[-1] == (50, "anytime/accuracy", 0.25)
  log.close()


def test_csv_of_an_older_version_gains_the_new_columns(tmp_path):
  """A resumed run whose metrics.csv was written with the old columns (no val_loss, val_accuracy,
  test_loss) keeps its rows under their names and appends rows under the current header."""
  old = ["run", "kind", "step", "examples_seen", "accuracy", "accuracy_seen", "loss",
         "budget_used", "examples_per_s", "wall_time"]
  with open(tmp_path / "metrics.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(old)
    w.writerow(["er", "step", 0, 40, 0.5, 0.5, 0.9, 3.0, 40.0, 1.0])
  with loggers.make("csv", str(tmp_path)) as log:
    log.log_step("er", 1, 80, {"accuracy": 0.6, "test_loss": 0.7})
  with open(tmp_path / "metrics.csv") as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == list(loggers.CSVLogger.HEADER)
  assert (table[0]["loss"], table[0]["test_loss"], table[0]["wall_time"]) == ("0.9", "", "1.0")
  assert (table[1]["accuracy"], table[1]["test_loss"], table[1]["loss"]) == ("0.6", "0.7", "")


def test_make_and_replay(tmp_path):
  assert loggers.make("", str(tmp_path)).loggers == []
  with pytest.raises(ValueError, match="unknown logger.*'wandb'.*valid: \\['tensorboard', 'csv'\\]"):
    loggers.make("csv,wandb", str(tmp_path))
  record = {"steps": [{"step": 0, "accuracy": 0.8, "accuracy_seen": 0.8, "examples_seen": 40,
                       "wall_s": 1.0, "examples_per_s": 40.0, "budget_used": 3.0}],
            "eval_points": [{"step": 0, "examples_seen": 20, "accuracy": 0.6,
                             "test_loss": 1.5, "step_end": False}]}
  with loggers.make("csv", str(tmp_path)) as log:
    log.log_result("finetune", record)
  with open(tmp_path / "metrics.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["kind"], r["examples_seen"], r["accuracy"], r["test_loss"]) for r in table] == [
      ("step", "40", "0.8", ""), ("eval", "20", "0.6", "1.5")]
  # appended, not overwritten, when a resumed run logs again (one header)
  with loggers.make("csv", str(tmp_path)) as log:
    log.log_result("finetune", record)
  assert open(tmp_path / "metrics.csv").read().count("run,kind") == 1
  assert os.path.getsize(tmp_path / "metrics.csv") > 0


@pytest.mark.slow
def test_run_binary_logs_what_results_json_holds(tmp_path, capsys):
  """``experiments/run.py --config.log=tensorboard,csv`` on the tiny config (real digits,
  finetune and ER, anytime evaluation every 150 examples): the event files (read back by
  ``read_events``) and metrics.csv hold, per learner, exactly the step metrics and evaluation
  points of results.json (float32 in the event file)."""
  from experiments import run as run_binary  # pylint: disable=import-outside-toplevel
  tiny = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny.py")
  wd = tmp_path / "wd"
  status = run_binary.main(["run.py", f"--config={tiny}", f"--workdir={wd}",
                            "--config.log=tensorboard,csv", "--config.stream.num_steps=2",
                            "--config.stream.classes_per_step=5"])
  capsys.readouterr()
  assert status == 0
  with open(wd / "results.json") as f:
    runs = json.load(f)["runs"]
  with open(wd / "metrics.csv") as f:
    table = list(csv.DictReader(f))
  assert sorted(runs) == ["er", "finetune"]
  for name, res in runs.items():
    steps, points = res["steps"], res["eval_points"]
    assert len(steps) == 2 and len(points) > 2  # anytime points besides the step ends
    assert all(s["loss"] is not None and np.isfinite(s["loss"]) for s in steps)
    (path,) = glob.glob(str(wd / "tensorboard" / name / "events.out.tfevents.*"))
    events = loggers.read_events(path)
    rows = [r for r in table if r["run"] == name and r["kind"] == "step"]
    assert [int(r["step"]) for r in rows] == [s["step"] for s in steps]
    for metric in loggers.STEP_METRICS:  # val_* only with a validation split: then absent
      want = [(s["examples_seen"], s[metric]) for s in steps if s.get(metric) is not None]
      got = [(x, v) for x, tag, v in events if tag == f"step/{metric}"]
      assert [x for x, _ in got] == [x for x, _ in want], metric
      np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
      assert [float(r[metric]) for r in rows if r[metric] != ""] == [v for _, v in want], metric
    got = [(x, v) for x, tag, v in events if tag == "anytime/accuracy"]
    assert [x for x, _ in got] == [p["examples_seen"] for p in points]
    np.testing.assert_allclose([v for _, v in got], [p["accuracy"] for p in points], rtol=1e-6)
    rows = [r for r in table if r["run"] == name and r["kind"] == "eval"]
    assert [(int(r["examples_seen"]), float(r["accuracy"])) for r in rows] == [
        (p["examples_seen"], p["accuracy"]) for p in points]


def test_extra_figures_reach_tensorboard_but_not_the_csv_columns(tmp_path):
  """A step's ``extra`` ({name: mean of the learner's Info.extra figure}) is logged as
  ``extra/<name>``; the CSV keeps its fixed columns."""
  record = {"steps": [{"step": 0, "accuracy": 0.8, "accuracy_seen": 0.8, "examples_seen": 40,
                       "wall_s": 1.0, "examples_per_s": 40.0, "budget_used": 3.0,
                       "extra": {"buffer_items": 12.0, "none": None}}],
            "eval_points": []}
  assert loggers.step_metrics(record["steps"][0])["extra/buffer_items"] == 12.0
  with loggers.make("tensorboard,csv", str(tmp_path)) as log:
    log.log_result("er", record)
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "er" / "events.out.tfevents.*"))
  tags = {tag: v for _, tag, v in loggers.read_events(path)}
  assert tags["extra/buffer_items"] == 12.0 and "step/accuracy" in tags
  assert "extra/none" not in tags and "step/extra/buffer_items" not in tags
  with open(tmp_path / "metrics.csv") as f:
    assert next(csv.reader(f)) == ["run", "kind", "step", "examples_seen",
                                   *loggers.STEP_METRICS, "wall_time"]
