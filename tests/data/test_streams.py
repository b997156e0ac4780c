"""Orderings keep their promises; streams are deterministic; grain iteration resumes exactly."""

import numpy as np
import pytest

from cljax import data
from cljax.data.sources import ArraySource, DataError, Dataset


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def _clip_dataset(seed=0):
  """Synthetic clips: 6 classes x 3 clips x 5 frames, stored shuffled, with timestamps."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(6), 15)
  inst = np.repeat(np.arange(18), 5)
  frame = np.tile(np.arange(5), 18)
  perm = rng.permutation(len(y))
  x = rng.normal(size=(len(y), 4)).astype(np.float32)
  time = rng.uniform(size=len(y))
  train = ArraySource("clips/train", x[perm], y[perm], inst[perm], frame[perm], time[perm])
  test = ArraySource("clips/test", x[:30], np.repeat(np.arange(6), 5))
  return Dataset("clips", train, test, 6)


def _every_example_once(stream):
  allidx = np.concatenate(stream.steps)
  assert len(allidx) == len(stream.dataset.train)
  assert len(np.unique(allidx)) == len(allidx)


@pytest.mark.parametrize("ordering", ["iid", "class_iid", "class_incremental"])
def test_every_example_exactly_once(digits, ordering):
  s = data.make_stream(digits, ordering, classes_per_step=3, num_steps=4, seed=1)
  _every_example_once(s)


def test_class_incremental_tasks_are_disjoint_class_groups(digits):
  s = data.make_stream(digits, "class_incremental", classes_per_step=2, seed=3)
  assert s.num_steps == 5 and len(s.tasks) == 5
  for t, idx in enumerate(s.steps):
    assert set(np.unique(digits.train.y[idx])) == set(s.tasks[t].tolist())
  assert sorted(np.concatenate(s.tasks).tolist()) == list(range(10))
  for j, ti in enumerate(s.test_index):
    assert set(np.unique(digits.test.y[ti])) == set(s.tasks[j].tolist())


def test_class_iid_is_class_contiguous(digits):
  s = data.make_stream(digits, "class_iid", classes_per_step=1, seed=0)
  labels = digits.train.y[np.concatenate(s.steps)]
  changes = np.flatnonzero(np.diff(labels)) + 1
  assert len(changes) == 9  # each class appears in exactly one contiguous run


def test_iid_is_one_task_and_mixes_classes(digits):
  s = data.make_stream(digits, "iid", num_steps=3, seed=0)
  assert len(s.tasks) == 1 and s.task_step == [0]
  assert all(len(np.unique(digits.train.y[idx])) == 10 for idx in s.steps)


def test_instance_orderings_keep_frames_in_order():
  ds = _clip_dataset()
  for ordering in ("instance", "class_instance"):
    s = data.make_stream(ds, ordering, classes_per_step=2, num_steps=3, seed=2)
    _every_example_once(s)
    order = np.concatenate(s.steps)
    inst, frame = ds.train.instance[order], ds.train.frame[order]
    runs = np.split(np.arange(len(order)), np.flatnonzero(np.diff(inst)) + 1)
    assert len(runs) == 18  # each clip contiguous
    for r in runs:
      assert (np.diff(frame[r]) > 0).all()
  s = data.make_stream(ds, "class_instance", classes_per_step=2, seed=2)
  labels = ds.train.y[np.concatenate(s.steps)]
  assert len(np.flatnonzero(np.diff(labels))) == 5


def test_time_ordering_is_sorted():
  ds = _clip_dataset()
  s = data.make_stream(ds, "time", num_steps=4)
  assert (np.diff(ds.train.time[np.concatenate(s.steps)]) >= 0).all()


def test_missing_ids_and_unknown_ordering(digits):
  with pytest.raises(DataError, match="instance"):
    data.make_stream(digits, "instance")
  with pytest.raises(DataError, match="timestamps"):
    data.make_stream(digits, "time")
  with pytest.raises(DataError, match="valid: .*class_iid"):
    data.make_stream(digits, "bogus")


def test_label_rate_and_determinism(digits):
  a = data.make_stream(digits, "class_incremental", label_rate=0.1, seed=5)
  b = data.make_stream(digits, "class_incremental", label_rate=0.1, seed=5)
  c = data.make_stream(digits, "class_incremental", label_rate=0.1, seed=6)
  for idx, lab in zip(a.steps, a.labeled):
    assert lab.sum() == round(0.1 * len(idx))
  assert all((x == y).all() for x, y in zip(a.steps, b.steps))
  assert all((x == y).all() for x, y in zip(a.labeled, b.labeled))
  assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a.steps, c.steps))


def test_chunks_are_fixed_size_and_resume_exactly(digits):
  s = data.make_stream(digits, "class_incremental", classes_per_step=5, seed=0)
  it = data.chunks(s, 64, max_batches=3)
  for _ in range(2):
    next(it)
  state = it.get_state()
  rest = [c["y"][c["valid"]] for c in it]
  it2 = data.chunks(s, 64, max_batches=3)
  it2.set_state(state)
  rest2 = [c["y"][c["valid"]] for c in it2]
  assert len(rest) == len(rest2) and all((a == b).all() for a, b in zip(rest, rest2))
  allc = list(data.chunks(s, 64, max_batches=3))
  assert {c["x"].shape[1:] for c in allc} == {(64, 8, 8, 1)}
  assert max(c["x"].shape[0] for c in allc) == 3  # at most max_batches batches a chunk
  assert sum(int(c["valid"].sum()) for c in allc) == len(digits.train)
  assert sum(bool(c["ends_step"]) for c in allc) == 2  # a chunk never spans two steps
  assert [int(c["first_batch"]) for c in allc] == list(
      np.cumsum([0] + [c["x"].shape[0] for c in allc[:-1]]))


def test_batches_one_at_a_time_match_the_chunks(digits):
  s = data.make_stream(digits, "class_incremental", classes_per_step=5, seed=0)
  allb = list(data.batches(s, 64))
  assert {b["x"].shape for b in allb} == {(64, 8, 8, 1)}
  assert sum(int(b["valid"].sum()) for b in allb) == len(digits.train)
  assert sum(bool(b["last_in_step"]) for b in allb) == 2
  flat = np.concatenate([c["y"].reshape(-1) for c in data.chunks(s, 64)])
  np.testing.assert_array_equal(np.concatenate([b["y"] for b in allb]), flat)


def test_array_batches_pad_the_last_one():
  x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
  bs = list(data.array_batches(x, y, 4, labeled=np.arange(10) % 2 == 0))
  assert [b["x"].shape for b in bs] == [(4, 1)] * 3
  assert bs[-1]["valid"].tolist() == [True, True, False, False]
  assert bs[-1]["labeled"].tolist() == [True, False, False, False]


def test_first_step_classes_and_label_noise(digits):
  s = data.make_stream(digits, "class_incremental", classes_per_step=2, first_step_classes=4,
                       label_noise=0.2, seed=0)
  assert [len(t) for t in s.tasks] == [4, 2, 2, 2]
  for idx, ys in zip(s.steps, s.labels):
    true = digits.train.y[idx]
    wrong = true != ys
    # exactly the requested fraction carries another class's input under the kept label
    assert wrong.sum() == round(0.2 * len(idx))
  clean = data.make_stream(digits, "class_incremental", classes_per_step=2, first_step_classes=4,
                           seed=0)
  for idx, ys in zip(clean.steps, clean.labels):
    np.testing.assert_array_equal(digits.train.y[idx], ys)
  # the labels, not the inputs, follow the step's classes
  assert set(np.unique(s.labels[1])) == set(s.tasks[1].tolist())
  b = next(iter(data.batches(s, 16)))
  np.testing.assert_array_equal(b["y"], s.labels[0][:16])
