"""Writes PyTorch checkpoint files without torch, the way ``torch.save`` lays them out.

Tests use it to make state dicts (zip format, PyTorch >= 1.6) and hostile files. The pickle is
produced by Python's own ``pickle`` machinery (protocol 2, torch's default); only torch's globals
(``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``, ...) are written by name, since
torch is not installed.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np

STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
           np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
           np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
           np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


class Global:
  """A global written by name (GLOBAL opcode)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle's save_reduce wants a callable
    raise RuntimeError("never called")


class Storage:
  """A storage: a flat array saved as one record, referenced by a persistent id."""

  def __init__(self, key: str, flat: np.ndarray):
    self.key, self.flat = key, flat


class Tensor:
  """A tensor viewing ``storage`` (offset, size, stride in elements), like torch's."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce_ex__(self, protocol):
    return (Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
             collections.OrderedDict()))


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access  (pure Python: overridable)
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_torch_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[Global] = save_torch_global

  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      return ("storage", Global("torch", STORAGE[obj.flat.dtype]), obj.key, "cpu", obj.flat.size)
    return None


def dumps(obj) -> bytes:
  f = io.BytesIO()
  _Pickler(f, protocol=2).dump(obj)
  return f.getvalue()


def tensor(a: np.ndarray, key: str) -> Tensor:
  """A contiguous tensor with its own storage ``key``."""
  a = np.ascontiguousarray(a)
  stride = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
  return Tensor(Storage(key, a.reshape(-1)), 0, a.shape, stride)


def state_dict(arrays: dict) -> collections.OrderedDict:
  """An OrderedDict of tensors with torch's ``_metadata`` attribute (pickled through BUILD)."""
  sd = collections.OrderedDict((k, tensor(v, str(i))) for i, (k, v) in enumerate(arrays.items()))
  sd._metadata = collections.OrderedDict([("", {"version": 1})])  # pylint: disable=protected-access
  return sd


def storages_of(obj, out=None) -> dict:
  out = {} if out is None else out
  if isinstance(obj, Tensor):
    out[obj.storage.key] = obj.storage
  elif isinstance(obj, dict):
    for v in obj.values():
      storages_of(v, out)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      storages_of(v, out)
  return out


def write_zip(path, obj, name: str = "archive", data_pkl: bytes = None, skip_records=()) -> None:
  """``torch.save(obj, path)``'s zip layout: name/data.pkl, name/data/<key>, name/byteorder,
  name/version. ``data_pkl`` replaces the pickle (hostile files); ``skip_records`` leaves
  storage records out (malformed files)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{name}/data.pkl", dumps(obj) if data_pkl is None else data_pkl)
    z.writestr(f"{name}/byteorder", "little")
    for key, st in storages_of(obj).items():
      if key not in skip_records:
        z.writestr(f"{name}/data/{key}", st.flat.astype(st.flat.dtype.newbyteorder("<")).tobytes())
    z.writestr(f"{name}/version", "3\n")
