"""A safe reader of PyTorch checkpoint files: tensors and (ordered) dicts only, no torch.

    state = torch_pickle.load_state_dict("resnet18-f37072fd.pth")   # {name: np.ndarray}

PyTorch saves with ``pickle``, and unpickling runs whatever callables a file names, so a hostile
``.pth`` file can execute code under ``torch.load`` (without ``weights_only=True``) or plain
``pickle.load``. This module never unpickles: it decodes the pickle opcodes
(``pickletools.genops``) and runs a small stack machine that knows only the opcodes of plain
data (numbers, strings, tuples, lists, dicts, the memo) and a whitelist of globals:

* ``collections.OrderedDict`` (a state dict), built empty or from pairs;
* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` (a tensor: storage, offset, size,
  stride), ``_rebuild_parameter`` / ``_rebuild_parameter_with_state`` (a parameter: its data);
* ``torch.<Type>Storage`` (the dtype of a storage) for float64/32/16, bfloat16, int64/32/16/8,
  uint8 and bool.

Any other global, an object-building opcode (INST, OBJ, NEWOBJ, EXT*, sets, out-of-band
buffers), a persistent id that is not a storage, or a tensor reaching outside its storage raises
``TorchFileError`` naming what was refused and where (byte offset). BUILD is accepted only on an
OrderedDict with a dict state (torch stores ``state_dict()._metadata`` that way) and ignored.

Formats:

* zip (``torch.save`` since PyTorch 1.6): ``<name>/data.pkl`` plus one record per storage,
  ``<name>/data/<key>`` (raw little- or big-endian bytes, ``<name>/byteorder``);
* legacy (before 1.6): one stream of four pickles (magic number, protocol version, system info,
  the object), then a pickled list of storage keys, then each storage in that order as an int64
  element count followed by its raw bytes.

The legacy tar format (PyTorch < 0.4) and TorchScript archives are refused with a message.
Tensors come back as numpy arrays in torch's layout (NCHW convolution kernels, [out, in] linear
weights); ``requires_grad`` and backward hooks are dropped.
"""

from __future__ import annotations

import collections
import io
import os
import pickletools
import struct
import tarfile
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
  """A checkpoint that is malformed, hostile or not a PyTorch state dict."""


def _storage_dtypes() -> dict:
  import ml_dtypes  # pylint: disable=import-outside-toplevel  (ships with jax)
  return {"DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
          "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
          "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
          "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
          "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_)}


class _StorageType:
  """A ``torch.<Type>Storage`` global: only its dtype matters."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name, self.dtype = name, dtype


class _Storage:
  """A persistent id: one storage of ``numel`` elements, its bytes read after the pickle."""

  def __init__(self, key: str, dtype: np.dtype, numel: Optional[int], offset: int = 0):
    self.key, self.dtype, self.numel, self.offset = key, dtype, numel, offset


class _Tensor:
  """A tensor waiting for its storage's bytes (read after the whole pickle is decoded)."""

  def __init__(self, storage: _Storage, offset, size, stride):
    self.storage = storage
    self.offset, self.size, self.stride = offset, size, stride


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata: not part of the values
  if not isinstance(storage, _Storage):
    raise TorchFileError("a tensor's storage is not a storage reference")
  if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
          and len(size) == len(stride) and all(_is_int(v) for v in size + stride)):
    raise TorchFileError(f"bad tensor geometry: offset {storage_offset!r}, size {size!r}, "
                         f"stride {stride!r}")
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  if not isinstance(data, _Tensor):
    raise TorchFileError("a parameter whose data is not a tensor")
  return data


def _ordered_dict(*args):
  if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
    raise TorchFileError("OrderedDict built from something other than a list of pairs")
  try:
    return collections.OrderedDict(*args)
  except (TypeError, ValueError) as e:
    raise TorchFileError(f"OrderedDict built from bad pairs ({e})") from None


_CALLABLES = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}

# Opcodes whose argument is pushed as it is (plain data).
_PUSH_ARG = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
             "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
             "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class _Machine:
  """Runs the data-only subset of the pickle machine over ``pickletools.genops``."""

  def __init__(self, persistent_load):
    self.persistent_load = persistent_load
    self.dtypes = _storage_dtypes()

  def resolve(self, module: str, name: str, pos: int):
    if (module, name) in _CALLABLES:
      return _CALLABLES[(module, name)]
    if module == "torch" and name in self.dtypes:
      return _StorageType(name, self.dtypes[name])
    raise TorchFileError(f"refusing global {module}.{name} at byte {pos}: a safe state dict "
                         "holds only tensors, storages and OrderedDicts (re-save it with "
                         "torch.save(model.state_dict(), path))")

  def run(self, f) -> Any:
    stack: list = []
    marks: list = []
    memo: dict = {}

    def pop_mark():
      nonlocal stack
      items = stack
      stack = marks.pop()
      return items

    def top(kind, pos, what):
      if not stack or not isinstance(stack[-1], kind):
        raise TorchFileError(f"{what} at byte {pos} on a {type(stack[-1]).__name__ if stack else 'empty stack'}")
      return stack[-1]

    try:
      for op, arg, pos in pickletools.genops(f):
        name = op.name
        if name in ("PROTO", "FRAME"):
          continue
        if name == "STOP":
          if len(stack) != 1 or marks:
            raise TorchFileError(f"pickle ends at byte {pos} with {len(stack)} items on the stack")
          return stack[0]
        if name in _PUSH_ARG:
          stack.append(arg)
        elif name in _PUSH_CONST:
          stack.append(_PUSH_CONST[name])
        elif name == "MARK":
          marks.append(stack)
          stack = []
        elif name == "POP":
          stack.pop()
        elif name == "POP_MARK":
          pop_mark()
        elif name == "DUP":
          stack.append(stack[-1])
        elif name == "EMPTY_TUPLE":
          stack.append(())
        elif name == "TUPLE":
          items = tuple(pop_mark())  # before stack.append is looked up: pop_mark rebinds stack
          stack.append(items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
          n = int(name[-1])
          if len(stack) < n:
            raise TorchFileError(f"{name} at byte {pos} on a short stack")
          items = tuple(stack[-n:])
          del stack[-n:]
          stack.append(items)
        elif name == "EMPTY_LIST":
          stack.append([])
        elif name == "LIST":
          items = list(pop_mark())
          stack.append(items)
        elif name == "APPEND":
          v = stack.pop()
          top(list, pos, "APPEND").append(v)
        elif name == "APPENDS":
          items = pop_mark()
          top(list, pos, "APPENDS").extend(items)
        elif name == "EMPTY_DICT":
          stack.append({})
        elif name == "DICT":
          items = pop_mark()
          stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "SETITEM":
          v, k = stack.pop(), stack.pop()
          top(dict, pos, "SETITEM")[k] = v
        elif name == "SETITEMS":
          items = pop_mark()
          d = top(dict, pos, "SETITEMS")
          for k, v in zip(items[::2], items[1::2]):
            d[k] = v
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
          memo[arg] = stack[-1]
        elif name == "MEMOIZE":
          memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
          if arg not in memo:
            raise TorchFileError(f"{name} at byte {pos} reads memo entry {arg}, never written")
          stack.append(memo[arg])
        elif name == "GLOBAL":
          module, _, gname = str(arg).partition(" ")
          stack.append(self.resolve(module, gname, pos))
        elif name == "STACK_GLOBAL":
          gname, module = stack.pop(), stack.pop()
          if not (isinstance(module, str) and isinstance(gname, str)):
            raise TorchFileError(f"STACK_GLOBAL at byte {pos} with non-string names")
          stack.append(self.resolve(module, gname, pos))
        elif name == "REDUCE":
          args, fn = stack.pop(), stack.pop()
          if not isinstance(args, tuple) or not callable(fn) or fn not in _CALLABLES.values():
            raise TorchFileError(f"REDUCE at byte {pos} calls {type(fn).__name__}, not a "
                                 "whitelisted constructor")
          try:
            stack.append(fn(*args))
          except TypeError as e:
            raise TorchFileError(f"REDUCE at byte {pos}: bad arguments ({e})") from None
        elif name == "BUILD":
          state = stack.pop()
          if not (isinstance(top(dict, pos, "BUILD"), collections.OrderedDict)
                  and isinstance(state, dict)):
            raise TorchFileError(f"BUILD at byte {pos}: only an OrderedDict's metadata may be set")
        elif name in ("PERSID", "BINPERSID"):
          pid = arg if name == "PERSID" else stack.pop()
          stack.append(self.persistent_load(pid, pos))
        else:
          raise TorchFileError(f"refusing pickle opcode {name} at byte {pos}: it builds "
                               "arbitrary objects, which a state dict never needs")
    except TorchFileError:
      raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error, EOFError) as e:
      # genops raises ValueError on truncated or unknown opcodes; the stack errors are malformed
      # pickles (popping an empty stack, unhashable keys, ...).
      raise TorchFileError(f"malformed pickle ({type(e).__name__}: {e})") from None
    raise TorchFileError("pickle ended without a STOP opcode (truncated file)")


def _storage_pid(pid, pos, dtypes_ok=True) -> tuple:
  if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
          and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and dtypes_ok):
    raise TorchFileError(f"refusing persistent id {str(pid)[:80]!r} at byte {pos}: only tensor "
                         "storages are allowed")
  return pid


def _materialise(obj, data_of):
  """Replaces every _Tensor in the decoded object by a numpy array (its storage's bytes read
  through ``data_of(storage) -> 1-D array``)."""
  if isinstance(obj, _Tensor):
    buf = data_of(obj.storage)
    size, stride = obj.size, obj.stride
    off = obj.offset + obj.storage.offset
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or off < 0:
      raise TorchFileError(f"tensor with negative size/stride/offset {size}, {stride}, {off}")
    if 0 in size:
      return np.zeros(size, buf.dtype)
    last = off + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= buf.size:
      raise TorchFileError(f"tensor of size {size} (stride {stride}, offset {off}) reaches "
                           f"element {last} of a storage of {buf.size}")
    view = np.lib.stride_tricks.as_strided(buf[off:], shape=size,
                                           strides=[s * buf.itemsize for s in stride])
    return np.array(view, dtype=buf.dtype.newbyteorder("="))
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, data_of)
    return out
  if isinstance(obj, list):
    return [_materialise(v, data_of) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialise(v, data_of) for v in obj)
  if isinstance(obj, (_Storage, _StorageType)) or callable(obj):
    raise TorchFileError(f"the checkpoint holds a bare {type(obj).__name__.strip('_')}, not data")
  return obj


def _load_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise TorchFileError(f"{path}: not a readable zip archive ({e})") from None
  with zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      hint = " (a TorchScript archive: save model.state_dict() instead)" if any(
          n.endswith("/constants.pkl") for n in names) else ""
      raise TorchFileError(f"{path}: a zip without exactly one <name>/data.pkl record "
                           f"({len(pkls)} found){hint}")
    prefix = pkls[0][:-len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in names:
      bo = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if bo not in ("little", "big"):
        raise TorchFileError(f"{path}: unknown byteorder record {bo!r}")
      order = "<" if bo == "little" else ">"
    storages: dict = {}

    def persistent_load(pid, pos):
      _, stype, key, _, numel = _storage_pid(pid, pos)[:5]
      if not _is_int(numel) or numel < 0:
        raise TorchFileError(f"storage {key!r} with a bad element count {numel!r}")
      if key not in storages:
        storages[key] = _Storage(key, stype.dtype.newbyteorder(order), numel)
      return storages[key]

    obj = _Machine(persistent_load).run(io.BytesIO(zf.read(pkls[0])))
    arrays: dict = {}

    def data_of(st: _Storage) -> np.ndarray:
      if st.key not in arrays:
        rec = f"{prefix}data/{st.key}"
        if rec not in names:
          raise TorchFileError(f"{path}: storage record {rec} is missing")
        raw = zf.read(rec)
        want = st.numel * st.dtype.itemsize
        if len(raw) != want:
          raise TorchFileError(f"{path}: storage record {rec} has {len(raw)} bytes, the pickle "
                               f"says {st.numel} x {st.dtype.itemsize} = {want}")
        arrays[st.key] = np.frombuffer(raw, st.dtype)
      return arrays[st.key]

    return _materialise(obj, data_of)


def _load_legacy(path: str) -> Any:
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    machine = _Machine(lambda pid, pos: (_ for _ in ()).throw(
        TorchFileError(f"persistent id at byte {pos} before the object")))
    magic = machine.run(f)
    if magic != LEGACY_MAGIC:
      raise TorchFileError(f"{path}: a pickle, but not a PyTorch checkpoint (no magic number)")
    version = machine.run(f)
    if version != LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: legacy protocol version {version!r}, expected 1001")
    info = machine.run(f)
    little = isinstance(info, dict) and info.get("little_endian", True)
    order = "<" if little else ">"
    storages: dict = {}

    def persistent_load(pid, pos):
      _, stype, key, _, numel = _storage_pid(pid, pos)[:5]
      view = pid[5] if len(pid) > 5 else None
      if key not in storages:
        storages[key] = _Storage(key, stype.dtype.newbyteorder(order), numel)
      if view is None:
        return storages[key]
      # (view key, offset, size): a view into the root storage ``key``
      if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1])):
        raise TorchFileError(f"bad storage view {view!r} at byte {pos}")
      return _Storage(key, storages[key].dtype, None, view[1])

    obj = _Machine(persistent_load).run(f)
    keys = _Machine(persistent_load).run(f)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
      raise TorchFileError(f"{path}: the storage key list is malformed")
    arrays: dict = {}
    for key in keys:
      if key not in storages:
        raise TorchFileError(f"{path}: storage {key!r} is listed but no tensor uses it")
      head = f.read(8)
      if len(head) != 8:
        raise TorchFileError(f"{path}: truncated before storage {key!r}")
      (numel,) = struct.unpack(order + "q", head)
      st = storages[key]
      nbytes = numel * st.dtype.itemsize
      if numel < 0 or f.tell() + nbytes > size:
        raise TorchFileError(f"{path}: storage {key!r} claims {numel} elements, more than the "
                             "file holds (truncated?)")
      arrays[key] = np.frombuffer(f.read(nbytes), st.dtype)

  def data_of(st: _Storage) -> np.ndarray:
    if st.key not in arrays:
      raise TorchFileError(f"{path}: storage {st.key!r} has no data")
    return arrays[st.key]

  return _materialise(obj, data_of)


def load(path: str) -> Any:
  """The object saved in a PyTorch checkpoint file, with tensors as numpy arrays.

  Only plain data comes back: dicts (OrderedDicts kept), lists, tuples, numbers, strings and
  arrays. Raises ``FileNotFoundError`` for a missing file and ``TorchFileError`` for anything
  malformed, hostile (see the module docstring) or not a PyTorch checkpoint.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  with open(path, "rb") as f:
    head = f.read(4)
  if head[:4] == b"PK\x03\x04":
    return _load_zip(path)
  if head[:1] == b"\x80":
    return _load_legacy(path)
  if tarfile.is_tarfile(path):
    raise TorchFileError(f"{path}: the tar format of PyTorch < 0.4 is not supported; load it "
                         "with an old PyTorch and torch.save(state_dict, path) it again")
  raise TorchFileError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; "
                       f"starts with {head!r})")


def load_state_dict(path: str) -> dict:
  """A state dict {name: np.ndarray} from a checkpoint file.

  Accepts a bare state dict, or a dict holding one under ``state_dict`` or ``model`` (common
  training checkpoints); a ``module.`` prefix on every key (``nn.DataParallel``) is removed.
  Non-tensor entries are dropped. Raises ``TorchFileError`` when no tensors are found.
  """
  obj = load(path)
  if isinstance(obj, Mapping):
    for k in ("state_dict", "model"):
      if isinstance(obj.get(k), Mapping):
        obj = obj[k]
        break
  if not isinstance(obj, Mapping):
    raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
  if not sd:
    raise TorchFileError(f"{path}: no tensors found (keys: {list(obj)[:10]})")
  if all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd
