"""Checkpoint integrity: a step whose bytes changed on disk is detected, never loaded as if fine."""

import glob
import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.app import checkpoint
from cljax.app.checkpoint import Checkpointer, CheckpointError


def _state(i):
  rng = np.random.default_rng(i)
  return {"w": jnp.asarray(rng.normal(size=(64, 128)), jnp.float32),  # 32 KiB: a real data file
          "n": jnp.int32(i), "key": jax.random.key(i)}


def _same(a, b):
  np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
  assert int(a["n"]) == int(b["n"])
  np.testing.assert_array_equal(jax.random.key_data(a["key"]), jax.random.key_data(b["key"]))


def _save_steps(d, n=3):
  with Checkpointer(d, max_to_keep=5) as ck:
    for i in range(n):
      ck.save(i, _state(i), {"step": i, "acc": [0.5 + i / 10]})


def _largest_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def test_digest_is_sha256_of_paths_bytes_and_meta():
  # An independent reference: the same bytes hashed by hand in tree order.
  state = {"a": np.arange(3, dtype=np.int32), "b": {"c": np.ones((2, 2), np.float32)}}
  h = hashlib.sha256()
  h.update(b"['a']|<i4|(3,)\n")
  h.update(np.arange(3, dtype=np.int32).tobytes())
  h.update(b"['b']['c']|<f4|(2, 2)\n")
  h.update(np.ones((2, 2), np.float32).tobytes())
  h.update(b'{"x": 1}')
  assert checkpoint.digest(state, '{"x": 1}') == h.hexdigest()
  state["b"]["c"][1, 1] = 2.0
  assert checkpoint.digest(state, '{"x": 1}') != h.hexdigest()


def test_random_bytes_inside_the_newest_step_fall_back_to_the_one_before(tmp_path, caplog):
  d = str(tmp_path)
  _save_steps(d)
  victim = _largest_file(os.path.join(d, "2"))
  size = os.path.getsize(victim)
  rng = np.random.default_rng(0)
  with open(victim, "r+b") as f:  # 1 KiB of random bytes in the middle of the data file
    f.seek(size // 2 - 512)
    f.write(rng.integers(0, 256, 1024, dtype=np.uint8).tobytes())
  with Checkpointer(d) as ck:
    step, state, meta = ck.restore_latest(_state(0))
    assert step == 1 and meta == {"step": 1, "acc": [0.6]}
    _same(state, _state(1))
    assert "step 2" in caplog.text and "unreadable" in caplog.text
    # set aside, so that a new save of step 2 is written (orbax skips existing steps silently)
    assert os.path.isdir(os.path.join(d, "unreadable.2")) and ck.steps() == [0, 1]
    ck.save(2, _state(7), {"step": 2})
    ck.wait()
    step, state, _ = ck.restore_latest(_state(0))
  assert step == 2
  _same(state, _state(7))


def test_readable_but_changed_arrays_are_detected_by_the_checksum(tmp_path, caplog):
  # orbax detects some corrupt bytes (a compressed chunk that no longer decodes) but reads
  # others back as different numbers. Deterministic stand-in for the second kind: step 1's
  # state folder replaced by a valid one holding other values of the same shapes.
  d, other = str(tmp_path / "run"), str(tmp_path / "other")
  _save_steps(d, 2)
  with Checkpointer(other) as ck:
    ck.save(1, _state(5), {"step": 1, "acc": [0.6]})
  shutil.rmtree(os.path.join(d, "1", "state"))
  shutil.copytree(os.path.join(other, "1", "state"), os.path.join(d, "1", "state"))
  with Checkpointer(d) as ck:
    step, state, _ = ck.restore_latest(_state(0))
  assert step == 0 and "checksum mismatch" in caplog.text
  _same(state, _state(0))


def test_changed_metadata_is_detected(tmp_path):
  d = str(tmp_path)
  _save_steps(d, 2)
  path = os.path.join(d, "1", "meta", "metadata")
  with open(path) as f:
    item = json.load(f)
  item["meta"] = item["meta"].replace("0.6", "0.9")  # valid JSON, another accuracy
  with open(path, "w") as f:
    json.dump(item, f)
  with Checkpointer(d) as ck:
    step, _, meta = ck.restore_latest(_state(0))
  assert step == 0 and meta["acc"] == [0.5]


def test_all_steps_unreadable_is_an_error_not_a_fresh_start(tmp_path):
  d = str(tmp_path)
  _save_steps(d, 2)
  for s in ("0", "1"):
    with open(_largest_file(os.path.join(d, s)), "r+b") as f:
      f.seek(100)
      f.write(b"\xff" * 64)
  with Checkpointer(d) as ck, pytest.raises(CheckpointError, match="no readable checkpoint"):
    ck.restore_latest(_state(0))


def test_os_errors_are_found_in_tensorstore_messages():
  e = ValueError("OUT_OF_RANGE: Failed to write 741176 bytes: No space [os_error_code='28']")
  found = checkpoint._os_error(e)
  assert isinstance(found, OSError) and found.errno == 28
  try:
    try:
      raise OSError(13, "Permission denied")
    except OSError as inner:
      raise RuntimeError("orbax failed") from inner
  except RuntimeError as outer:
    assert checkpoint._os_error(outer).errno == 13
  assert checkpoint._os_error(ValueError("shape mismatch")) is None
