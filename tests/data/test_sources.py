"""Data sources: real data sets, npz, image folders, TFDS (mock), and bad input at the boundary."""

import gzip
import os

import numpy as np
import pytest

from cljax import data
from cljax.data import sources
from cljax.data.sources import DataError


def test_digits_real_and_split():
  ds = data.load("digits")
  assert len(ds.train) + len(ds.test) == 1797
  assert ds.train.x.shape[1:] == (8, 8, 1) and ds.num_classes == 10
  ex = ds.train[0]
  assert ex["x"].dtype == np.float32 and 0.0 <= ex["x"].min() and ex["x"].max() <= 1.0
  assert set(np.unique(ds.test.y)) == set(range(10))


def test_digits_are_sklearns():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  ds = data.load("digits")
  ref = load_digits()
  x = np.round(ref.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  got = np.concatenate([ds.train.x, ds.test.x])
  assert len(got) == len(x)
  # the same examples (the split reorders them): compare sorted rows with their labels
  key = lambda a, y: np.lexsort(np.c_[a.reshape(len(a), -1), y].T)  # noqa: E731
  gy = np.concatenate([ds.train.y, ds.test.y])
  np.testing.assert_array_equal(got[key(got, gy)], x[key(x, ref.target)])
  np.testing.assert_array_equal(gy[key(got, gy)], ref.target[key(x, ref.target)])


def test_mnist5k_real():
  ds = data.load("mnist5k")
  assert (len(ds.train), len(ds.test)) == (4000, 1000)
  assert ds.train.x.shape[1:] == (28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train.y), [400] * 10)
  # real digits: mean ink around 0.13 of full intensity, as in MNIST
  assert 0.08 < ds.train.batch(np.arange(500)).mean() < 0.2


def test_mnist5k_missing_file_says_where(tmp_path):
  with pytest.raises(DataError, match="no file at"):
    sources.mnist5k(path=str(tmp_path / "nope.csv.gz"))


def _write_idx(path, arr):
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader_and_missing_dir(tmp_path):
  rng = np.random.default_rng(0)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
  ds = sources.fashion_mnist(data_dir=str(tmp_path))
  assert ds.train.x.shape == (20, 28, 28, 1) and ds.class_names[9] == "Ankle boot"
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    sources.fashion_mnist(data_dir=str(tmp_path / "empty"))
  (tmp_path / "bad").mkdir()
  for f in os.listdir(tmp_path):
    if f.endswith(".gz"):
      with gzip.open(tmp_path / "bad" / f, "wb") as fh:
        fh.write(b"\0\0\x08\x01\0\0\0\x09abc")  # header says 9 bytes, holds 3
  with pytest.raises(DataError, match="truncated"):
    sources.fashion_mnist(data_dir=str(tmp_path / "bad"))


@pytest.mark.skipif(not os.path.exists(sources.FASHION_MNIST_DIR), reason="package not installed")
def test_fashion_mnist_real_subset():
  ds = sources.fashion_mnist(max_train=1000, max_test=500)
  assert ds.train.x.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train.y), [100] * 10)


def test_npz_features_and_bad_input(tmp_path):
  rng = np.random.default_rng(0)
  p = tmp_path / "feats.npz"
  np.savez(p, x=rng.normal(size=(50, 16)).astype(np.float32), y=np.arange(50) % 5)
  ds = sources.npz(str(p))
  assert ds.train.x.shape[1:] == (16,) and ds.num_classes == 5
  x = rng.normal(size=(50, 16)).astype(np.float32)
  x[7, 3] = np.nan
  np.savez(tmp_path / "nan.npz", x=x, y=np.arange(50) % 5)
  with pytest.raises(DataError, match="NaN or Inf"):
    sources.npz(str(tmp_path / "nan.npz"))
  np.savez(tmp_path / "lab.npz", x=np.nan_to_num(x), y=np.arange(50) % 5)
  with pytest.raises(DataError, match=r"label [34], outside \[0, 3\)"):
    sources.npz(str(tmp_path / "lab.npz"), num_classes=3)
  np.savez(tmp_path / "short.npz", x=np.nan_to_num(x[:10]), y=np.arange(50))
  with pytest.raises(DataError, match="10 inputs but 50 labels"):
    sources.npz(str(tmp_path / "short.npz"))
  np.savez(tmp_path / "nolab.npz", x=x)
  with pytest.raises(DataError, match="missing array 'y'"):
    sources.npz(str(tmp_path / "nolab.npz"))
  np.savez(tmp_path / "strdt.npz", x=np.zeros((4, 2), np.int64), y=np.arange(4))
  with pytest.raises(DataError, match="dtype"):
    sources.npz(str(tmp_path / "strdt.npz"))


def test_image_folder(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in ("cat", "dog"):
      d = tmp_path / split / c
      d.mkdir(parents=True)
      for i in range(3):
        Image.fromarray(rng.integers(0, 255, (6, 5, 3)).astype(np.uint8)).save(d / f"{i}.png")
  ds = sources.image_folder(str(tmp_path))
  assert ds.train.x.shape == (6, 6, 5, 3) and ds.class_names == ["cat", "dog"]
  np.testing.assert_array_equal(ds.train.y, [0, 0, 0, 1, 1, 1])
  with pytest.raises(DataError, match="not a directory"):
    sources.image_folder(str(tmp_path / "nope"))


def test_tfds_data_source_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load("tfds:mnist")
  assert ds.train.x.shape == (12, 28, 28, 1) and ds.num_classes == 10


def test_unknown_dataset_lists_valid():
  with pytest.raises(DataError, match="valid: .*mnist5k"):
    data.load("imagenet")


def test_features_arguments_are_checked_against_the_real_loader():
  """The ``features`` loader is a lazy wrapper (``**kwargs``); its arguments are checked against
  ``cljax.data.features.dataset``, so the pretrained configs' dataset_kwargs pass and a typo
  names the valid ones."""
  with pytest.raises(DataError, match=r"unknown argument\(s\) \['layers'\].*'layer'"):
    data.load("features", source="digits", layers="pooled")


@pytest.mark.parametrize("name, sizes, d, classes", [
    ("iris", (120, 30), 4, ["setosa", "versicolor", "virginica"]),
    ("wine", (142, 36), 13, ["class_0", "class_1", "class_2"]),
    ("breast_cancer", (456, 113), 30, ["malignant", "benign"]),
])
def test_sklearn_tables_are_sklearns_real_measurements(name, sizes, d, classes):
  """iris, wine, breast_cancer: the rows of scikit-learn's ``load_<name>`` (compared sorted:
  the split reorders them), a fixed stratified split, z-scored with training statistics only."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  ref = getattr(datasets, f"load_{name}")()
  raw = data.load(name, standardize=False)
  assert (len(raw.train), len(raw.test)) == sizes and raw.class_names == classes
  assert raw.train.x.shape[1:] == (d,) and raw.num_classes == len(classes)
  got = np.concatenate([raw.train.x, raw.test.x]).astype(np.float64)
  gy = np.concatenate([raw.train.y, raw.test.y])
  key = lambda a, y: np.lexsort(np.c_[a, y].T)  # noqa: E731
  np.testing.assert_allclose(got[key(got, gy)], ref.data[key(ref.data, ref.target)], rtol=1e-6)
  np.testing.assert_array_equal(gy[key(got, gy)], ref.target[key(ref.data, ref.target)])
  # stratified: each class's test share is round(0.2 · its count)
  counts = np.bincount(ref.target)
  np.testing.assert_array_equal(np.bincount(raw.test.y), np.round(0.2 * counts).astype(int))
  # standardised with the training split's statistics (the test split's are near, not equal)
  ds = data.load(name)
  assert ds.train.x.dtype == np.float32
  np.testing.assert_allclose(ds.train.x.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(ds.train.x.std(0), 1, atol=1e-4)
  mu, sd = raw.train.x.mean(0), raw.train.x.std(0)
  np.testing.assert_allclose(ds.test.x, (raw.test.x - mu) / sd, rtol=1e-4, atol=1e-4)
  assert ds.train[0]["x"].shape == (d,) and ds.train[0]["x"].dtype == np.float32
  # the split is part of the data set: the same on every load
  assert ds.sha256() == data.load(name).sha256()
  assert "iris" in data.names() and "breast_cancer" in data.names()
