"""TensorBoard and CSV loggers: event files read back by TensorBoard itself and by our reader."""

import csv
import glob
import json
import os
import struct

import numpy as np
import pytest

from cljax.eval import loggers


def test_crc32c_known_values():
  assert loggers.crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4 check value
  assert loggers.crc32c(b"") == 0
  assert loggers.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def write_two_runs(workdir):
  with loggers.make("tensorboard,csv", str(workdir)) as log:
    for t, (acc, loss) in enumerate([(0.9, 0.31), (0.75, 0.52), (0.7, float("nan"))]):
      log.log_step("slda", t, 100 * (t + 1), {"accuracy": acc, "loss": loss,
                                                "budget_used": 0.0, "examples_per_s": 1e4})
      log.log_eval("slda", t, 100 * (t + 1) - 50, acc + 0.01)
    log.log_step("er", 0, 100, {"accuracy": 0.5, "loss": None, "budget_used": 150.0})


EXPECTED = {  # tag -> [(examples seen, value)] of run "slda" (NaN loss skipped)
    "step/accuracy": [(100, 0.9), (200, 0.75), (300, 0.7)],
    "step/loss": [(100, 0.31), (200, 0.52)],
    "step/budget_used": [(100, 0.0), (200, 0.0), (300, 0.0)],
    "step/examples_per_s": [(100, 1e4), (200, 1e4), (300, 1e4)],
    "anytime/accuracy": [(50, 0.91), (150, 0.76), (250, 0.71)],
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
  # a corrupted payload byte is caught by the CRC
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF
  bad = tmp_path / "bad.tfevents"
  bad.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="bad payload CRC"):
    loggers.read_events(str(bad))
  # a record cut mid-write (a killed run) loses only that record
  (tmp_path / "cut.tfevents").write_bytes(open(path, "rb").read()[:-7])
  assert loggers.read_events(str(tmp_path / "cut.tfevents")) == rows[:-1]


def test_event_record_framing_by_hand():
  payload = loggers.event_bytes(1.5, 7, scalars={"a": 2.0})
  rec = loggers.tfrecord(payload)
  (n,) = struct.unpack("<Q", rec[:8])
  assert n == len(payload) and rec[12:12 + n] == payload
  # Event: wall_time (field 1, fixed64) = 1.5, step (field 2, varint) = 7,
  # summary (field 5) { value (1) { tag (1) = "a", simple_value (2, fixed32) = 2.0 } }
  assert payload == (b"\x09" + struct.pack("<d", 1.5) + b"\x10\x07" + b"\x2a\x0a" +
                     b"\x0a\x08" + b"\x0a\x01a" + b"\x15" + struct.pack("<f", 2.0))


def test_make_and_replay(tmp_path):
  assert loggers.make("", str(tmp_path)).loggers == []
  with pytest.raises(ValueError, match="unknown logger.*'wandb'.*valid: \\['tensorboard', 'csv'\\]"):
    loggers.make("csv,wandb", str(tmp_path))
  record = {"steps": [{"step": 0, "accuracy": 0.8, "accuracy_seen": 0.8, "examples_seen": 40,
                       "wall_s": 1.0, "examples_per_s": 40.0, "budget_used": 3.0}],
            "eval_points": [{"step": 0, "examples_seen": 20, "accuracy": 0.6}]}
  with loggers.make("csv", str(tmp_path)) as log:
    log.log_result("finetune", record)
  with open(tmp_path / "metrics.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["kind"], r["examples_seen"], r["accuracy"]) for r in table] == [
      ("step", "40", "0.8"), ("eval", "20", "0.6")]
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
    for metric in loggers.STEP_METRICS:
      got = [(x, v) for x, tag, v in events if tag == f"step/{metric}"]
      assert [x for x, _ in got] == [s["examples_seen"] for s in steps], metric
      np.testing.assert_allclose([v for _, v in got], [s[metric] for s in steps], rtol=1e-6)
      rows = [r for r in table if r["run"] == name and r["kind"] == "step"]
      assert [int(r["step"]) for r in rows] == [s["step"] for s in steps]
      assert [float(r[metric]) for r in rows] == [s[metric] for s in steps], metric
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
