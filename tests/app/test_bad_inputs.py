"""Every bad input a user can give ``experiments/run.py`` ends in one line ``error: ...`` naming
the item and the fix, exit status 2, no traceback, before any training.

The binary's ``main(argv)`` is called in-process (the code path of the executable after Python
starts; ``test_faults.py`` runs the real executable). Cases that need a workdir holding a
finished run share one tiny run and are slow-marked.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from cljax import data
from experiments import run as run_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def run(capsys, workdir, *args, config=TINY):
  """(exit status, stderr lines, stdout) of ``run.py --config=... --workdir=... *args``."""
  argv = ["run.py", f"--config={config}"] + ([f"--workdir={workdir}"] if workdir else [])
  status = run_binary.main(argv + list(args))
  out = capsys.readouterr()
  return status, [l for l in out.err.splitlines() if l.strip()], out.out


def assert_one_line_error(status, err, *fragments):
  assert status == 2, (status, err)
  assert len(err) == 1 and err[0].startswith("error: "), err
  assert "Traceback" not in err[0]
  for f in fragments:
    assert f in err[0], (f, err[0])


def _digits():
  ds = data.load("digits")  # real 8x8 digits as uint8 [N, 8, 8], labels [N]
  return (np.concatenate([ds.train.x, ds.test.x])[..., 0],
          np.concatenate([ds.train.y, ds.test.y]).astype(np.int64))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Bad data files built from the real digits."""
  root = tmp_path_factory.mktemp("data")
  x, y = _digits()
  paths = {}
  paths["not_zip"] = root / "not_zip.npz"
  paths["not_zip"].write_bytes(b"these are not arrays\n")
  stray = y.copy()
  stray[17] = 12  # one stray label among 0..9
  np.savez(root / "stray.npz", x=x, y=stray)
  np.savez(root / "stray_test.npz", x=x[:1500], y=y[:1500], x_test=x[1500:],
           y_test=np.where(np.arange(len(y) - 1500) == 3, 15, y[1500:]))
  np.savez(root / "pickled.npz", x=x, y=np.asarray([str(v) for v in y], object))
  np.savez(root / "good.npz", x=x, y=y)
  folder = root / "images"
  for c in range(3):
    (folder / str(c)).mkdir(parents=True)
    for i in np.flatnonzero(y == c)[:10]:
      Image.fromarray(x[i]).save(folder / str(c) / f"{i}.png")
  (folder / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
  (root / "a_file").write_text("not a folder")
  return {k: str(v) for k, v in paths.items()} | {
      "stray": str(root / "stray.npz"), "stray_test": str(root / "stray_test.npz"),
      "pickled": str(root / "pickled.npz"), "good": str(root / "good.npz"),
      "images": str(folder), "a_file": str(root / "a_file")}


# (flags, fragments the one line must hold). "{name}" is filled from the `files` fixture.
CASES = [
    # config: keys, names, values
    (["--config.bogus=1"], ["unknown config key 'bogus'", "valid keys:", "'seed'"]),
    (["--config.stream.bogus=1"], ["unknown config key 'stream.bogus'", "'stream.ordering'"]),
    (["--config.budget.batch_size=0"], ["budget.batch_size must be an integer >= 1, got 0"]),
    (["--config.budget.passes_per_step=0"], ["budget.passes_per_step must be an integer >= 1",
                                             "passes_per_step=None"]),
    (["--config.budget.passes_per_step=-1"], ["budget.passes_per_step", "got -1"]),
    (["--config.hparams.er.lrr=0.1"], ["hparams.er: unknown hyper-parameter(s) ['lrr']",
                                       "valid: [", "'lr'"]),
    (["--config.hparams.er.lr=fast"], ["--config.hparams.er.lr=fast: expected a float"]),
    (["--config.hparams.er.memory_size=-5"], ["run 'er'", "memory_size must be >= 1"]),
    (["--config.hparams.joint_er.learner=err", "--config.learners=joint_er"],
     ["unknown learner 'err' (run 'joint_er')", "valid learners"]),
    (["--config.learners=finetune,nope"], ["unknown learner 'nope'", "'er'"]),
    (["--config.learners=,"], ["config.learners is empty"]),
    (["--config.stream.ordering=sideways"], ["unknown stream.ordering 'sideways'",
                                             "class_incremental"]),
    (["--config.stream.classes_per_step=0"], ["stream.classes_per_step must be an integer >= 1"]),
    (["--config.stream.label_rate=0.0"], ["stream.label_rate must be a number in (0, 1]"]),
    (["--config.model=resnet99"], ["unknown model 'resnet99'", "valid models"]),
    (["--config.seed=1.5"], ["--config.seed=1.5"]),
    (["--config.seed=-2"], ["seed must be an integer >= 0, got -2"]),
    (["--config.eval.every_examples=-5"], ["eval.every_examples must be an integer >= 0"]),
    (["--config.eval.omega_topk=3"], ["eval.omega_topk must be one of (1, 5), got 3"]),
    (["--config.eval.omega_points=some"], ["eval.omega_points must be one of"]),
    (["--config.checkpoint.max_to_keep=0"], ["checkpoint.max_to_keep must be an integer >= 1"]),
    (["--config.eval.early_stop_every=5"], ["eval.early_stop_every needs a validation split",
                                            "eval.val_fraction"]),
    (["--config.eval.early_stop_every=5", "--config.eval.val_fraction=0.1",
      "--config.eval.early_stop_metric=auc"], ["unknown eval.early_stop_metric 'auc'",
                                               "valid: ['loss', 'error']"]),
    (["--config.eval.early_stop_patience=0"], ["eval.early_stop_patience must be an integer >= 1"]),
    (["--config.rollback_factor=1.0"], ["rollback_factor must be a number in (0, 1), got 1.0"]),
    (["--config.num_devices=64"], ["num_devices: asked for 64 devices"]),
    (["--config.base_init.kind=magic"], ["unknown base_init.kind 'magic'", "supervised"]),
    (["--config.base_init.classes=-1"], ["base_init.classes must be an integer >= 0"]),
    (["--config.log=tensorboard,wandb"], ["unknown logger(s) ['wandb']",
                                          "valid: ['tensorboard', 'csv']"]),
    # flags
    (["--nope=1"], ["Unknown command line flag 'nope'"]),
    (["stray_positional"], ["unexpected arguments ['stray_positional']"]),
    (["--config.newgroup.key=1"], ["config key", "newgroup", "does not exist"]),
    # data
    (["--config.dataset=imagenet"], ["unknown data set 'imagenet'", "mnist5k"]),
    (["--config.dataset=npz"], ["data set 'npz' needs ['path']",
                                "--config.dataset_kwargs.path="]),
    (["--config.dataset_kwargs.pth=1"], ["unknown argument(s) ['pth'] of data set 'digits'",
                                         "test_fraction"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path={not_zip}"],
     ["not an .npz file", "numpy.savez"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path={pickled}"],
     ["not a readable .npz archive of plain arrays"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path=/no/such.npz"],
     ["npz: no file at /no/such.npz"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path={stray}"],
     ["no examples of classes [10, 11]", "set num_classes"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path={stray}",
      "--config.dataset_kwargs.num_classes=10"], ["example", "has label 12, outside [0, 10)"]),
    (["--config.dataset=npz", "--config.dataset_kwargs.path={stray_test}"],
     ["y_test holds labels [15]"]),
    (["--config.dataset=image_folder", "--config.dataset_kwargs.path={images}"],
     ["cannot read image", "broken.png", "remove or replace it"]),
    (["--config.dataset=image_folder", "--config.dataset_kwargs.path={a_file}"],
     ["is not a directory"]),
]


@pytest.mark.parametrize("args,fragments", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, files, args, fragments):
  args = [a.format(**files) for a in args]
  status, err, _ = run(capsys, str(tmp_path / "wd"), *args)
  assert_one_line_error(status, err, *fragments)
  # nothing trained: no checkpoints, no results
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")
  assert not os.path.exists(tmp_path / "wd" / "results.json")


def test_missing_workdir_flag_and_unusable_workdir(capsys, files):
  assert_one_line_error(*run(capsys, None)[:2], "--workdir is required")
  assert_one_line_error(*run(capsys, os.path.join(files["a_file"], "sub"))[:2],
                        "cannot write to --workdir", "choose a writable folder")


@pytest.fixture
def read_only_dir(tmp_path):
  """A folder nobody may write to: chmod for a normal user; for root (whom chmod does not stop)
  a read-only tmpfs mount, skipped where mounting is not allowed."""
  d = tmp_path / "ro"
  d.mkdir()
  if os.geteuid() != 0:
    d.chmod(0o555)
    yield str(d)
    d.chmod(0o755)
    return
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a read-only file system here")
  try:
    yield str(d)
  finally:
    subprocess.run(["umount", str(d)], check=True)


def test_read_only_workdir(capsys, read_only_dir):
  assert_one_line_error(*run(capsys, os.path.join(read_only_dir, "wd"))[:2],
                        "cannot write to --workdir", "choose a writable folder")


def test_config_overrides_reach_the_config(capsys, tmp_path, files, monkeypatch):
  """dataset_kwargs, hparams of a run the config does not have, and KEY=None all come from
  flags; the npz's inferred class count is printed."""
  seen = {}

  def fake_run(settings, workdir, resume=False, log=None):
    seen.update(settings=settings, workdir=workdir, resume=resume)

  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(experiment, "run", fake_run)
  status, err, _ = run(capsys, str(tmp_path), "--config.dataset=npz",
                       f"--config.dataset_kwargs.path={files['good']}",
                       "--config.hparams.er_cb.learner=er",
                       "--config.hparams.er_cb.buffer=class_balanced",
                       "--config.hparams.er.memory_size=77",
                       "--config.budget.passes_per_step=None", "--resume")
  assert status == 0, err
  s = seen["settings"]  # the binary hands down typed settings, not the config
  assert dict(s.stream.dataset_kwargs) == {"path": files["good"]}
  assert s.config["hparams"]["er_cb"] == {"learner": "er", "buffer": "class_balanced"}
  er = s.learner("er")
  assert er.hparams["memory_size"] == 77 and er.hparams["lr"] == 3e-3
  assert s.run.budget is None and seen["resume"] is True


def test_inferred_class_count_is_printed(tmp_path, files):
  from cljax.app import experiment, settings  # pylint: disable=import-outside-toplevel
  c = experiment.base_config()
  c.dataset, c.dataset_kwargs.path = "npz", files["good"]
  logs = []
  experiment.prepare(settings.from_config(c), str(tmp_path), False, logs.append)
  assert any("10 classes inferred" in m and "dataset_kwargs.num_classes" in m for m in logs), logs


# --- cases that need a workdir holding a finished run ---------------------------------------

def _results(wd):
  with open(os.path.join(wd, "results.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("finished"))
  status = run_binary.main(["run.py", f"--config={TINY}", f"--workdir={wd}",
                            "--config.learners=finetune", "--config.stream.num_steps=2",
                            "--config.stream.classes_per_step=5"])
  assert status == 0
  return wd


def _copy(finished, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(finished, wd)
  return wd


RUN_ARGS = ["--config.learners=finetune", "--config.stream.num_steps=2",
            "--config.stream.classes_per_step=5"]


@pytest.mark.slow
def test_finished_workdir_without_resume(capsys, finished):
  before = _results(finished)
  status, err, _ = run(capsys, finished, *RUN_ARGS)
  assert_one_line_error(status, err, "run 'finetune' is already in", "finished",
                        "pass --resume")
  assert _results(finished) == before


@pytest.mark.slow
def test_resume_with_another_seed_and_lr_names_them(capsys, finished):
  before = _results(finished)
  status, err, _ = run(capsys, finished, *RUN_ARGS, "--resume", "--config.seed=1",
                       "--config.hparams.finetune.lr=0.01")
  assert_one_line_error(status, err, "another config", "seed (0 -> 1)",
                        "finetune: hparams.lr (0.003 -> 0.01)")
  status, err, _ = run(capsys, finished, *RUN_ARGS, "--resume",
                       "--config.stream.max_examples_per_step=100")
  assert_one_line_error(status, err, "stream.max_examples_per_step (200 -> 100)")
  assert _results(finished) == before


@pytest.mark.slow
def test_changed_data_file_is_refused_on_resume(capsys, tmp_path):
  x, y = _digits()
  path = str(tmp_path / "d.npz")
  np.savez(path, x=x, y=y)
  args = ["--config.dataset=npz", f"--config.dataset_kwargs.path={path}", *RUN_ARGS]
  wd = str(tmp_path / "wd")
  assert run(capsys, wd, *args)[0] == 0
  x[0, 0, 0] = 255 - x[0, 0, 0]  # one pixel changed under the same name
  np.savez(path, x=x, y=y)
  assert_one_line_error(*run(capsys, wd, *args, "--resume")[:2], "data_sha256")


@pytest.mark.slow
def test_unreadable_records_and_checkpoints(capsys, finished, tmp_path):
  wd = _copy(finished, tmp_path)
  with open(os.path.join(wd, "experiment.json"), "w") as f:
    f.write("{half a record")
  assert_one_line_error(*run(capsys, wd, *RUN_ARGS, "--resume")[:2],
                        "experiment.json is unreadable")
  wd2 = _copy(finished, tmp_path / "b")
  ck = os.path.join(wd2, "checkpoints", "finetune")
  from cljax.app import checkpoint, workdir  # pylint: disable=import-outside-toplevel
  for step in os.listdir(ck):  # this version's format and layout, a checksum that does not match
    with open(os.path.join(ck, step, "meta", "metadata"), "w") as f:
      json.dump({"format": checkpoint.FORMAT, "meta": "{}", "sha256": "0",
                 "state_layout": workdir.STATE_LAYOUT}, f)
  assert_one_line_error(*run(capsys, wd2, *RUN_ARGS, "--resume")[:2],
                        "no readable checkpoint", "Delete that folder")


@pytest.mark.slow
def test_other_learners_are_added_to_results_json(capsys, finished, tmp_path):
  wd = _copy(finished, tmp_path)
  before = _results(wd)["runs"]["finetune"]
  args = [a if a != "--config.learners=finetune" else "--config.learners=er,offline"
          for a in RUN_ARGS] + ["--config.hparams.offline.epochs_per_step=1.0"]
  status, err, out = run(capsys, wd, *args)
  assert status == 0, err
  res = _results(wd)
  assert list(res["runs"]) == ["finetune", "er", "offline"]
  assert res["runs"]["finetune"]["accuracy_matrix"] == before["accuracy_matrix"]
  # Ω of every run, the earlier one included, against the offline run just added
  assert res["runs"]["offline"]["omega"] == pytest.approx(1.0)
  assert res["runs"]["finetune"]["omega"] is not None
  assert res["runs"]["finetune"]["omega_points"] == "step_ends"
  with open(os.path.join(wd, "experiment.json")) as f:
    assert sorted(json.load(f)["runs"]) == ["er", "finetune", "offline"]
